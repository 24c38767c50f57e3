#!/usr/bin/env bash
# The GPU check: everything that needs a CUDA GPU, in one call of under 8 minutes, ending in one summary.
#
#   bash scripts/gpu_check.sh                       # on a machine with one or more NVIDIA GPUs
#   PLIFNET_CHECK_DEVICE=cpu bash scripts/gpu_check.sh   # a dry run of the same steps on the CPU (the tests run it)
#
# Steps: the Triton kernels against the reference (every option, tests/triton_check.py); the kernel
# tests; the layer and training-step benchmarks in fp32 and bf16-mixed (benchmarks/neuron_kernels.py);
# a short bf16-mixed fit through cli.py; a 2-process DDP fit when 2 GPUs are present (on the CPU dry
# run: 2 processes with gloo). Logs go to $PLIFNET_CHECK_LOGS (default: gpu_check_logs/); the summary
# is the last lines of the output. Exit status: the number of failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE="${PLIFNET_CHECK_DEVICE:-cuda}"
LOGS="${PLIFNET_CHECK_LOGS:-gpu_check_logs}"
PYTHON="${PYTHON:-python}"
mkdir -p "$LOGS"
SUMMARY=()
FAILED=0

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, its output in $LOGS/NAME.log
    local name=$1 limit=$2 start status
    shift 2
    start=$(date +%s)
    if timeout "$limit" "$@" > "$LOGS/$name.log" 2>&1; then
        status="ok"
    else
        status="FAILED (exit $?)"
        FAILED=$((FAILED + 1))
    fi
    SUMMARY+=("$(printf '%-22s %-16s %4d s   %s' "$name" "$status" $(($(date +%s) - start)) "$LOGS/$name.log")")
    echo "== $name: $status"
}

if [ "$DEVICE" = cuda ]; then
    GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$LOGS/gpus.txt" 2>&1 || true
    export TRITON_INTERPRET=0
    REPEATS=5
else
    GPUS=0
    export TRITON_INTERPRET=1  # the Triton kernels run on the CPU, interpreted
    REPEATS=1
fi
"$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
    > "$LOGS/versions.txt" 2>&1 || true

# a small image folder in MNIST's shape, for the fits (no download needed on the GPU machine)
DATA="$LOGS/digits"
"$PYTHON" - "$DATA" <<'EOF'
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from conftest import make_image_folder

if not Path(sys.argv[1], "test").is_dir():
    make_image_folder(Path(sys.argv[1]), per_class=20, test_per_class=4)
EOF
FIT=(cli.py fit --config configs/mnist.yaml --data.root "$DATA" --data.num_workers 0 --data.batch_size 8
     --model.net.time_steps 4 --trainer.max_epochs 1 --trainer.limit_train_batches 6 --trainer.limit_val_batches 2
     --trainer.default_root_dir "$LOGS/runs"
     --trainer.accelerator "$([ "$DEVICE" = cuda ] && echo gpu || echo cpu)")

step triton_vs_reference 300 "$PYTHON" tests/triton_check.py
[ "$DEVICE" = cuda ] && step kernel_tests 300 "$PYTHON" -m pytest -q tests/test_kernels.py
if [ "$DEVICE" = cuda ]; then
    step benchmarks 420 "$PYTHON" benchmarks/neuron_kernels.py --device cuda --repeats "$REPEATS" --rounds 1
else
    step benchmarks 300 "$PYTHON" benchmarks/neuron_kernels.py --device cpu --repeats 1 --rounds 1 --only layer
fi
step fit_bf16_mixed 300 "$PYTHON" "${FIT[@]}" --config configs/trainer/bf16.yaml
if [ "$DEVICE" = cuda ]; then  # torch.compile on CUDA (Inductor's Triton code around plifnet's Triton kernels)
    step compile_benchmark 300 "$PYTHON" benchmarks/compile.py --device cuda --only mnist cifar10dvs --rounds 2
    step fit_compiled 300 "$PYTHON" "${FIT[@]}" --model.compile true
fi
if [ "$GPUS" -ge 2 ] || [ "$DEVICE" = cpu ]; then
    step fit_ddp_2_processes 300 "$PYTHON" "${FIT[@]}" --config configs/trainer/ddp.yaml --trainer.devices 2
else
    SUMMARY+=("$(printf '%-22s %-16s' fit_ddp_2_processes "skipped ($GPUS GPU)")")
fi

echo
echo "== gpu_check summary ($DEVICE; $(cat "$LOGS/versions.txt" 2>/dev/null | tail -1))"
cat "$LOGS/gpus.txt" 2>/dev/null
printf '%s\n' "${SUMMARY[@]}"
grep -h "triton kernels match" "$LOGS/triton_vs_reference.log" 2>/dev/null
grep -h -A 20 "dense matmul peak" "$LOGS/benchmarks.log" 2>/dev/null
cat "$LOGS/compile_benchmark.log" 2>/dev/null
echo "failed steps: $FAILED"
exit "$FAILED"
