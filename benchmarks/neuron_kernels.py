"""plifnet's speed as a plain script gets it, against SpikingJelly and this machine's peak, in one run.

Every figure comes from a child process that imports plifnet (or SpikingJelly) and does nothing else
first: no ``cli.py``, no allocator setting of ours (plifnet's CPU kernels make theirs on first use,
as in any user's script). Children of the compared implementations alternate for ``--rounds``
rounds; figures are medians over rounds, ratios are taken within a round.

1. One PLIF layer, forward + backward, on [T, N, C, H, W] = [8, 16, 128, 28, 28]: ms, and the
   bandwidth floor (the bytes a fused kernel must move / the machine's ``copy_`` bandwidth measured
   by the same child).
2. A training step (forward, backward, Adam) of the paper's MNIST network (batch 16, T 8) and CIFAR-10
   network (batch 4, and the paper's batch 16), in float32 and under bfloat16 autocast (what
   ``configs/trainer/bf16.yaml`` gives): images/s, achieved GFLOP/s (convolutions and matrix products
   of the step, counted by ``torch.utils.flop_counter``) against the dense matmul peak of the same
   precision measured in this run, the step's time and the part of it spent in those products
   (``GEMM ms``, torch.profiler, CPU), and the step's peak memory (CPU: peak resident size above the
   size after one warm-up sample). SpikingJelly's torch backend builds the same network where it is
   installed (not a dependency).
3. The MNIST network's own neuron and pooling layers alone (CPU), in float32 and bfloat16, forward
   and forward + backward, against the reference (per-step neuron, ``F.max_pool2d``): where the part
   of the step outside the GEMMs goes.

    python benchmarks/neuron_kernels.py [--repeats 7] [--rounds 3] [--device cpu|cuda] [--only layer|training|kernels]
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from plifnet.models import SpikingNet
from plifnet.options import NeuronOptions

LAYER_SHAPE = (8, 16, 128, 28, 28)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timings(fn, repeats, device, warmup=1):
    for _ in range(warmup):  # the kernels' JIT on their first call, the allocator's first requests
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def median_time(fn, repeats, device, warmup=1):
    return statistics.median(timings(fn, repeats, device, warmup))


def alternating_rounds(steps, repeats, device):
    """Time every function of ``steps`` (name -> callable) once per round, in turn, for ``repeats``
    rounds: a slow phase of this noisy machine then hits all of them alike, and ratios are taken
    within a round. Returns one {name: seconds} per round."""
    for step in steps.values():
        step()  # warm-up
    return [{name: timings(step, 1, device, warmup=0)[0] for name, step in steps.items()} for _ in range(repeats)]


def has_spikingjelly() -> bool:
    try:
        import spikingjelly.activation_based  # noqa: F401
    except Exception:  # absent, or present without its own dependencies
        return False
    return True


# --- what a child process measures ---------------------------------------------------------------


def spikingjelly_plif():
    from spikingjelly.activation_based import neuron, surrogate

    return neuron.ParametricLIFNode(
        init_tau=2.0, surrogate_function=surrogate.ATan(alpha=2.0), detach_reset=True, step_mode="m"
    )


def layer_child(implementation, repeats, device):
    from plifnet.neurons import PLIF

    torch.manual_seed(0)
    x = (torch.randn(LAYER_SHAPE, device=device) * 1.5 + 0.5).requires_grad_()
    grad = torch.randn(LAYER_SHAPE, device=device)
    if implementation == "spikingjelly":
        layer = spikingjelly_plif().to(device)
    else:
        layer = PLIF(tau=2.0, backend=implementation if implementation == "reference" else "auto").to(device)

    def step():
        x.grad = None
        if hasattr(layer, "reset") and implementation == "spikingjelly":
            layer.reset()
        layer(x).backward(grad)

    seconds = median_time(step, repeats, device)
    src = torch.empty(64 * 2**20, device=device)
    dst = torch.empty_like(src)
    copy = median_time(lambda: dst.copy_(src), repeats, device)
    bandwidth = 2 * src.numel() * 4 / copy  # read + write
    # the floor: read X and write S forward; read dS and X (to replay the forward) and write dX backward
    return {"ms": seconds * 1e3, "floor_ms": 5 * 4 * x.numel() / bandwidth * 1e3, "copy_gbs": bandwidth / 1e9}


# The MNIST network's spiking and pooling layers at batch 16, T 8: (name, what it runs on, input shape)
MNIST_KERNELS = (
    ("neuron 1", "neuron", (16, 128, 28, 28)),
    ("pool 1", "pool", (8, 16, 128, 28, 28)),
    ("neuron 2", "neuron", (8, 16, 128, 14, 14)),
    ("pool 2", "pool", (8, 16, 128, 14, 14)),
)


def kernels_child(implementation, precision, repeats):
    """ms of each of MNIST_KERNELS, forward and forward + backward; neuron 1 takes the encoder's
    current once for its 8 steps (``time_steps``), as in the network."""
    from plifnet.kernels import max_pool2x2
    from plifnet.neurons import PLIF

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    backend = "reference" if implementation == "reference" else "auto"
    torch.manual_seed(0)
    result = {}
    for name, kind, shape in MNIST_KERNELS:
        x = (torch.randn(shape) * 1.5 + 0.5).to(dtype).requires_grad_()
        if kind == "neuron":
            neuron = PLIF(tau=2.0, backend=backend)
            run = (lambda x, neuron=neuron: neuron(x, time_steps=8)) if len(shape) == 4 else neuron
        else:
            x = (x.detach() > 1).to(dtype).requires_grad_()  # spikes
            run = (
                max_pool2x2
                if backend == "auto"
                else (lambda x: torch.nn.functional.max_pool2d(x.flatten(0, 1), 2, 2).unflatten(0, x.shape[:2]))
            )
        grad = torch.randn(run(x).shape).to(dtype)

        def both(run=run, x=x, grad=grad):
            x.grad = None
            run(x).backward(grad)

        # glibc settles on reusing the freed outputs only after a few calls
        both_seconds = median_time(both, repeats, "cpu", warmup=5)
        with torch.no_grad():
            forward = median_time(lambda run=run, x=x: run(x), repeats, "cpu")
        result[name] = {"fwd": forward * 1e3, "both": both_seconds * 1e3}
    return result


class SpikingJellyBlock(torch.nn.Sequential):
    """The layers from one convolution or linear layer to the next: the unit that SpikingJelly's
    ``memopt`` checkpoints (its ``targets``)."""


def spikingjelly_network(arch, dropout=0.5, time_steps=None):
    """One of the paper's networks (docs/paper.md section 2) in SpikingJelly's layers, multi-step, as plifnet
    builds it: for images the first Conv+BN once per image, its output repeated at every one of
    ``time_steps`` steps (default: the paper's T); for event frames ``[T, N, 2, H, W]`` frame t at step t.
    The layers after the first Conv+BN are grouped into :class:`SpikingJellyBlock`. Returns the rates
    ``[N, classes]``."""
    from spikingjelly.activation_based import functional, layer

    from plifnet.models import ARCHS

    spec = ARCHS[arch]
    steps = time_steps or spec.time_steps
    channels, size, blocks = spec.in_channels, spec.size, [[]]
    for token in spec.layers.split():
        if token.startswith("c"):
            blocks.append(
                [
                    layer.Conv2d(channels, int(token[1:]), 3, padding=1, bias=False),
                    layer.BatchNorm2d(int(token[1:])),
                    spikingjelly_plif(),
                ]
            )
            channels = int(token[1:])
        elif token == "p":
            blocks[-1].append(layer.MaxPool2d(2, 2))
            size //= 2
        elif token == "d":
            blocks[-1].append(layer.Dropout(dropout))
        elif token.startswith("f"):
            flatten = [] if any(isinstance(m, layer.Flatten) for block in blocks for m in block) else [layer.Flatten()]
            channels *= size * size if flatten else 1
            blocks[-1] += flatten
            blocks.append([layer.Linear(channels, int(token[1:]), bias=False), spikingjelly_plif()])
            channels = int(token[1:])
    encoder = torch.nn.Sequential(*blocks[1][:2])  # the first Conv+BN; the first block keeps its neuron
    blocks[1] = blocks[1][2:]
    body = torch.nn.Sequential(*(SpikingJellyBlock(*block) for block in blocks if block))
    functional.set_step_mode(encoder, "m")
    functional.set_step_mode(body, "m")

    class Network(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.body = encoder, body

        def forward(self, x):
            functional.reset_net(self)
            if spec.static:
                current = self.encoder(x.unsqueeze(0)).repeat(steps, 1, 1, 1, 1)
            else:
                current = self.encoder(x)
            votes = self.body(current)  # [T, N, classes * 10]
            return votes.unflatten(-1, (-1, 10)).mean(-1).mean(0)

    return Network()


def train_child(implementation, arch, batch, precision, repeats, device):
    from torch.utils.flop_counter import FlopCounterMode

    from plifnet.module import SpikingClassifier

    torch.manual_seed(0)
    model = SpikingClassifier(
        SpikingNet.paper(
            arch, options=NeuronOptions(backend=implementation if implementation == "reference" else "auto")
        )
    )
    net = (spikingjelly_network(arch) if implementation == "spikingjelly" else model.net).to(device)
    params = net.parameters() if implementation == "spikingjelly" else model.parameters()
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
    c, size = model.net.arch.in_channels, model.net.arch.size
    x, y = torch.randn(batch, c, size, size, device=device), torch.randint(0, 10, (batch,), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    def loss_of(x, y):
        with autocast:
            scores = net(x)
        rates = scores.mean(0) if scores.dim() == 3 else scores
        return model._loss(rates.float(), y)

    loss_of(x[:1], y[:1]).backward()  # libraries and kernels loaded outside the measured memory
    optimizer.zero_grad(set_to_none=True)
    _release_freed_memory()
    baseline = _status_kb("VmRSS") if device == "cpu" else 0
    if device == "cpu":
        Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from here

    def step():
        optimizer.zero_grad()
        loss_of(x, y).backward()
        optimizer.step()

    # the steps of a long run: glibc reuses the freed activations only after a few steps (the first
    # ones take up to 1.2x as long), so every implementation gets 5 warm-up steps
    seconds = median_time(step, repeats, device, warmup=5)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else (_status_kb("VmHWM") - baseline) * 1024
    with FlopCounterMode(display=False) as counter:
        loss_of(x, y).backward()
    return {
        "images_per_s": batch / seconds,
        "gflops": counter.get_total_flops() / seconds / 1e9,
        "peak_mb": peak / 2**20,
        "gemm_ms": gemm_ms(step) if device == "cpu" else float("nan"),
    }


GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::mkldnn_convolution", "aten::convolution_backward"}


def gemm_ms(step, steps=3):
    """Milliseconds per step spent in the convolutions and matrix products (torch.profiler, CPU): the
    part of the step that runs near the matmul peak; the rest of the step is what keeps it from it."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(steps):
            step()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in GEMM_OPS) / 1e3 / steps


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


# --- the parent: rounds of children, tables -------------------------------------------------------


def child(*args):
    command = [sys.executable, __file__, "--child", *map(str, args)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def rounds_of(configurations, rounds):
    """{name: args} -> one {name: result} per round, the children of a round run one after another."""
    return [{name: child(*args) for name, args in configurations.items()} for _ in range(rounds)]


def median(runs, key):
    return statistics.median(key(run) for run in runs)


def matmul_peak(dtype, repeats, device, n=2048):
    """The limit of a precision: the fastest of 3 x ``repeats`` products of two n x n matrices. A limit
    is a best case; a median moved with the slow phases of this shared machine (826 to 931 GFLOP/s in
    bf16 between runs), and with it every step's share of the peak."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / min(timings(lambda: a @ b, 3 * repeats, device)) / 1e9


def layer_table(implementations, repeats, rounds, device):
    runs = rounds_of({name: ("layer", name, repeats, device) for name in implementations}, rounds)
    print(f"\nPLIF layer {list(LAYER_SHAPE)}, forward + backward, plain script")
    print(f"{'implementation':16}{'ms':>9}{'floor ms':>10}{'x floor':>9}{'vs reference':>14}{'vs SpikingJelly':>17}")
    for name in implementations:
        ratio = lambda other: (
            f"{median(runs, lambda r: r[other]['ms'] / r[name]['ms']):.2f}x" if other in implementations else "-"
        )
        ms = median(runs, lambda r: r[name]["ms"])
        floor = median(runs, lambda r: r[name]["floor_ms"])
        print(f"{name:16}{ms:9.1f}{floor:10.1f}{ms / floor:9.1f}{ratio('reference'):>14}{ratio('spikingjelly'):>17}")


def training_table(implementations, repeats, rounds, device, peaks):
    print("\nTraining step (forward, backward, Adam), plain script; GFLOP/s against the matmul peak of the precision")
    print(
        f"{'network':24}{'implementation':16}{'precision':>10}{'images/s':>10}{'GFLOP/s':>9}{'of peak':>9}"
        f"{'step ms':>9}{'GEMM ms':>9}{'peak MB':>9}{'vs fp32':>9}{'vs SJ fp32':>12}"
    )
    # CIFAR-10 at batch 4 for every implementation (the first measurement), and at the paper's
    # batch 16 (what configs/cifar10.yaml trains with) for plifnet's two precisions only, to keep the run short
    for arch, batch, names in (
        ("mnist", 16, implementations),
        ("cifar10", 4, implementations),
        ("cifar10", 16, ["fused"]),
    ):
        configurations = {
            (name, precision): ("train", name, arch, batch, precision, repeats, device)
            for name in names
            for precision in ("fp32", "bf16")
            if name == "fused" or precision == "fp32"
        }
        runs = rounds_of(configurations, rounds)
        for name, precision in configurations:
            key = (name, precision)
            speed = lambda other: (
                f"{median(runs, lambda r: r[key]['images_per_s'] / r[other]['images_per_s']):.2f}x"
                if other in configurations
                else "-"
            )
            gflops = median(runs, lambda r: r[key]["gflops"])
            images_per_s = median(runs, lambda r: r[key]["images_per_s"])
            print(
                f"{f'{arch}, batch {batch}, T 8':24}{name:16}{precision:>10}{images_per_s:10.1f}{gflops:9.0f}"
                f"{gflops / peaks[precision]:9.0%}{batch / images_per_s * 1e3:9.1f}"
                f"{median(runs, lambda r: r[key]['gemm_ms']):9.1f}{median(runs, lambda r: r[key]['peak_mb']):9.0f}"
                f"{speed((name, 'fp32')):>9}{speed(('spikingjelly', 'fp32')):>12}"
            )


def kernels_table(repeats, rounds):
    configurations = {
        (name, precision): ("kernels", name, precision, repeats)
        for precision in ("fp32", "bf16")
        for name in ("reference", "fused")
    }
    runs = rounds_of(configurations, rounds)
    print("\nThe MNIST network's neuron and pooling layers alone (batch 16, T 8), CPU; ms")
    print(
        f"{'layer':12}{'precision':>10}{'fused fwd':>11}{'fused both':>12}{'ref fwd':>9}{'ref both':>10}"
        f"{'both vs ref':>13}"
    )
    for precision in ("fp32", "bf16"):
        fused, ref = ("fused", precision), ("reference", precision)
        for name, _, _ in MNIST_KERNELS:
            figure = lambda key, part: median(runs, lambda r: r[key][name][part])
            ratio = median(runs, lambda r: r[ref][name]["both"] / r[fused][name]["both"])
            print(
                f"{name:12}{precision:>10}{figure(fused, 'fwd'):11.2f}{figure(fused, 'both'):12.2f}"
                f"{figure(ref, 'fwd'):9.2f}{figure(ref, 'both'):10.2f}{ratio:12.1f}x"
            )


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        if kind == "layer":
            result = layer_child(args[0], int(args[1]), args[2])
        elif kind == "kernels":
            result = kernels_child(args[0], args[1], int(args[2]))
        else:
            result = train_child(args[0], args[1], int(args[2]), args[3], int(args[4]), args[5])
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="alternating child processes per configuration")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=("layer", "training", "kernels"), help="one table")
    args = parser.parse_args()
    implementations = ["reference", "fused"] + (["spikingjelly"] if has_spikingjelly() else [])
    # the bf16 peak only where the training table divides by it: on a CPU without fast bf16 it takes minutes
    precisions = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if args.only in (None, "training") else {})}
    peaks = {name: matmul_peak(dtype, args.repeats, args.device) for name, dtype in precisions.items()}
    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads; medians of "
        f"{args.rounds} rounds of child processes, {args.repeats} repeats each; SpikingJelly: "
        f"{'installed' if 'spikingjelly' in implementations else 'not installed'}"
    )
    print(
        f"dense matmul peak (2048^3, fastest of {3 * args.repeats}): "
        + ", ".join(f"{name} {peak:.0f} GFLOP/s" for name, peak in peaks.items())
    )
    if args.only in (None, "layer"):
        layer_table(implementations, args.repeats, args.rounds, args.device)
    if args.only in (None, "training"):
        training_table(implementations, args.repeats, args.rounds, args.device, peaks)
    if args.only in (None, "kernels") and args.device == "cpu":
        kernels_table(args.repeats, args.rounds)


if __name__ == "__main__":
    main()
