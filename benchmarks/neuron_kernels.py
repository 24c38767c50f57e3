"""Fused neuron kernels against the per-step reference, side by side in one run.

1. One PLIF layer, forward + backward, on [T, N, C, H, W] = [8, 16, 128, 28, 28] and a long sequence
   [64, 2, 128, 28, 28]: median time, bytes saved for backward, and the bandwidth floor (the bytes a
   fused kernel must move / this machine's measured ``copy_`` bandwidth).
2. A training step (forward, backward, the module's Adam) of the paper's MNIST network, batch 16, T = 8, and of
   the CIFAR-10 network at batch 4: images/s, the peak memory of the training steps (CUDA: peak
   allocated; CPU: peak resident size above the size after building the model and one warm-up
   sample, in a process that runs only that configuration) and the bytes the network saves for
   backward. On the CPU also the time per step inside plifnet's kernels, and ``bound``: the speed-up
   over the reference if those kernels took no time at all (the rest is convolutions, matrix
   products, BatchNorm and Adam, the same on both backends).

    python benchmarks/neuron_kernels.py [--repeats 7] [--rounds 3] [--device cpu|cuda]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from plifnet.kernels import keep_freed_cpu_memory
from plifnet.module import SpikingClassifier
from plifnet.neurons import PLIF

KEPT = keep_freed_cpu_memory()  # as cli.py does, for every backend alike


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def elapsed(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median_time(fn, repeats, device):
    fn()  # warm-up (and the kernel's JIT on its first call)
    return statistics.median(elapsed(fn, device) for _ in range(repeats))


def alternating_rounds(fns, repeats, device):
    """Time every function of ``fns`` (name -> callable) once per round, in turn, for ``repeats``
    rounds: a slow phase of this noisy machine then hits all of them alike, and ratios are taken
    within a round. Returns one {name: seconds} per round."""
    for fn in fns.values():
        fn()  # warm-up
    return [{name: elapsed(fn, device) for name, fn in fns.items()} for _ in range(repeats)]


def median_of(rounds, key):
    return statistics.median(key(one) for one in rounds)


def saved_bytes(fn):
    """Bytes of the distinct tensors autograd keeps for backward during ``fn()``."""
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def neuron_table(repeats, device):
    fused_name = "cpu" if device == "cpu" else "triton"
    src = torch.empty(64 * 2**20, device=device)  # 256 MiB
    dst = torch.empty_like(src)
    copy_bytes = 2 * src.numel() * 4  # read + write
    print(f"{'shape [T, N, C, H, W]':24}{'backend':>10}{'fwd+bwd ms':>12}{'saved MB':>10}{'copy GB/s':>11}"
          f"{'floor ms':>10}{'x floor':>9}{'speed-up':>10}")
    for shape in [(8, 16, 128, 28, 28), (64, 2, 128, 28, 28)]:
        x = torch.randn(shape, device=device) * 1.5 + 0.5
        grad = torch.randn(shape, device=device)
        fns, saved = {"copy": lambda: dst.copy_(src)}, {}
        for backend in ("reference", fused_name):
            neuron = PLIF(2.0, backend=backend).to(device)
            xr = x.clone().requires_grad_()

            def step(neuron=neuron, xr=xr):
                xr.grad = None
                neuron(xr).backward(grad)

            fns[backend] = step
            saved[backend] = saved_bytes(lambda: neuron(xr))
        rounds = alternating_rounds(fns, repeats, device)
        bandwidth = median_of(rounds, lambda r: copy_bytes / r["copy"])
        floor = 6 * 4 * x.numel() / bandwidth  # read x, write S and H; read dS and H, write dX
        for backend in ("reference", fused_name):
            ms = median_of(rounds, lambda r: r[backend]) * 1e3
            speedup = median_of(rounds, lambda r: r["reference"] / r[backend])
            print(f"{str(list(shape)):24}{backend:>10}{ms:12.1f}{saved[backend] / 2**20:10.0f}{bandwidth / 1e9:11.1f}"
                  f"{floor * 1e3:10.1f}{ms / 1e3 / floor:9.1f}{speedup:10.2f}")


def train_step_child(arch, batch, backend, repeats, device):
    """Runs in its own process so that its peak memory is its own."""
    torch.manual_seed(0)
    model = SpikingClassifier(arch, backend=backend).to(device)
    optimizer = model.configure_optimizers()["optimizer"]  # what training uses
    c, size = model.net.arch.in_channels, model.net.arch.size
    x, y = torch.randn(batch, c, size, size, device=device), torch.randint(0, 10, (batch,), device=device)
    # Load the libraries and compile (or load) the kernels on one sample first: numba and its compiled
    # kernels take ~110 MB once per process, which is not the training step's memory.
    model._loss(model(x[:1]), y[:1]).backward()
    model.zero_grad(set_to_none=True)
    _release_freed_memory()
    baseline = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from here

    def step():
        optimizer.zero_grad()
        model._loss(model(x), y).backward()
        optimizer.step()

    seconds = median_time(step, repeats, device)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else (_status_kb("VmHWM") - baseline) * 1024)
    activations = saved_bytes(lambda: model(x))
    kernel_seconds = kernel_time_per_step(step, repeats) if backend == "cpu" else None
    print(json.dumps({"images_per_s": batch / seconds, "peak_mb": peak / 2**20, "saved_mb": activations / 2**20,
                      "step_ms": seconds * 1e3, "kernel_ms": kernel_seconds and kernel_seconds * 1e3}))


def kernel_time_per_step(step, repeats):
    """Median time per training step spent inside plifnet's CPU kernels (neurons and pooling)."""
    from plifnet.kernels import cpu_ops

    spent = []

    def timed(fn):
        def call(*args):
            start = time.perf_counter()
            result = fn(*args)
            spent[-1] += time.perf_counter() - start
            return result

        return call

    names = ("forward", "backward", "max_pool2x2_forward", "max_pool2x2_backward")
    originals = {name: getattr(cpu_ops, name) for name in names}
    for name, fn in originals.items():
        setattr(cpu_ops, name, timed(fn))
    try:
        for _ in range(repeats):
            spent.append(0.0)
            step()
    finally:
        for name, fn in originals.items():
            setattr(cpu_ops, name, fn)
    return statistics.median(spent)


def _release_freed_memory():
    """Hand the warm-up's freed blocks back to the OS (glibc ``malloc_trim``), so that they are not
    counted in the baseline and then silently reused by the measured steps."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(field):
    """A memory figure of this process from /proc/self/status, in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def training_table(repeats, rounds, device):
    """Each configuration in its own process; the reference and the fused process alternate for
    ``rounds`` rounds, and every figure is the median over rounds (ratios taken within a round)."""
    fused_name = "cpu" if device == "cpu" else "triton"
    print(f"{'network':24}{'backend':>10}{'images/s':>10}{'peak MB':>10}{'saved MB':>10}{'images/s x':>12}"
          f"{'peak x':>8}{'kernels ms':>12}{'bound x':>9}")
    for arch, batch in (("mnist", 16), ("cifar10", 4)):
        runs = []
        for _ in range(rounds):
            run = {}
            for backend in ("reference", fused_name):
                command = [sys.executable, __file__, "--child", arch, str(batch), backend, str(repeats), device]
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                run[backend] = json.loads(out.strip().splitlines()[-1])
            runs.append(run)
        for backend in ("reference", fused_name):
            def median(key):
                return median_of(runs, lambda run: key(run[backend], run["reference"]))

            line = (f"{f'{arch}, batch {batch}, T 8':24}{backend:>10}{median(lambda r, ref: r['images_per_s']):10.1f}"
                    f"{median(lambda r, ref: r['peak_mb']):10.0f}{median(lambda r, ref: r['saved_mb']):10.0f}"
                    f"{median(lambda r, ref: r['images_per_s'] / ref['images_per_s']):12.2f}"
                    f"{median(lambda r, ref: r['peak_mb'] / ref['peak_mb']):8.2f}")
            if runs[0][backend]["kernel_ms"] is not None:  # the speed-up if the kernels took no time at all
                line += (f"{median(lambda r, ref: r['kernel_ms']):12.1f}"
                         f"{median(lambda r, ref: ref['step_ms'] / (r['step_ms'] - r['kernel_ms'])):9.2f}")
            print(line)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        arch, batch, backend, repeats, device = sys.argv[2:7]
        return train_step_child(arch, int(batch), backend, int(repeats), device)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="alternating processes per training configuration")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"medians of {args.repeats} alternating rounds ({args.rounds} processes each for training), "
          f"freed CPU memory kept by malloc: {KEPT}")
    neuron_table(args.repeats, args.device)
    training_table(args.repeats, args.rounds, args.device)


if __name__ == "__main__":
    main()
