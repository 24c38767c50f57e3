"""How the CPU kernels are built: numba against torch.compile (Inductor), side by side in one run.

Both fuse the same PLIF layer (tau0 = 2, hard reset, ATan) over [T, N, C, H, W] = [8, 16, 128, 28, 28];
torch.compile gets PLIF's hooks as plifnet's compiled path runs a neuron of your own
(``backend="compile"``, :mod:`plifnet.kernels.compiled`) and generates C++ for its forward and backward. Printed per technique: the first call in a fresh process with an empty
cache (compilation), the first call of a second process that finds the cache, forward + backward
time (the three timed in alternating rounds; medians) and the bytes kept for backward.

    python benchmarks/cpu_technique.py [--repeats 9]

Inductor also needs a C++ compiler on the machine at run time; numba comes from ``pip install``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from neuron_kernels import alternating_rounds

from plifnet.kernels.memory import keep_freed_cpu_memory
from plifnet.neurons import PLIF

SHAPE = (8, 16, 128, 28, 28)


def median_of(rounds, key):
    return statistics.median(key(one) for one in rounds)


def saved_bytes(forward):
    """Bytes of the distinct tensors autograd keeps for backward during ``forward()``."""
    seen = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(seen.values())


def layer(technique):
    """``layer(x) -> spikes`` for one technique; the learnable ``w`` lives inside, as in PLIF."""
    if technique == "reference":
        return PLIF(tau=2.0, backend="reference")
    if technique == "numba":
        return PLIF(tau=2.0, backend="cpu")
    return PLIF(tau=2.0, backend="compile")  # the path of a neuron with its own hooks (plifnet.kernels.compiled)


def child(technique):
    """The first forward + backward of a fresh process: compilation, or loading the cache."""
    x = (torch.randn(SHAPE) * 1.5 + 0.5).requires_grad_()
    start = time.perf_counter()
    layer(technique)(x).backward(torch.randn(SHAPE))
    print(json.dumps({"first_s": time.perf_counter() - start}))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        return child(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    techniques = ("reference", "torch.compile", "numba")
    first = {}
    for technique in techniques:
        with tempfile.TemporaryDirectory() as cache:  # empty caches for the first process, kept for the second
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, TORCHINDUCTOR_CACHE_DIR=cache)
            command = [sys.executable, __file__, "--child", technique]
            first[technique] = [
                json.loads(
                    subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout.splitlines()[-1]
                )["first_s"]
                for _ in range(2)
            ]

    keep_freed_cpu_memory()
    x = (torch.randn(SHAPE) * 1.5 + 0.5).requires_grad_()
    grad = torch.randn(SHAPE)
    steps, saved = {}, {}
    for technique in techniques:
        run = layer(technique)

        def step(run=run):
            x.grad = None
            run(x).backward(grad)

        steps[technique] = step
        saved[technique] = saved_bytes(lambda: run(x))
    rounds = alternating_rounds(steps, args.repeats, "cpu")

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, PLIF layer {list(SHAPE)}, "
        f"medians of {args.repeats} alternating rounds"
    )
    print(
        f"{'technique':>16}{'cold first s':>14}{'cached first s':>16}{'fwd+bwd ms':>12}{'saved MB':>10}{'speed-up':>10}"
    )
    for technique in techniques:
        ms = median_of(rounds, lambda r: r[technique]) * 1e3
        speedup = median_of(rounds, lambda r: r["reference"] / r[technique])
        cold, cached = first[technique]
        print(f"{technique:>16}{cold:14.2f}{cached:16.2f}{ms:12.1f}{saved[technique] / 2**20:10.0f}{speedup:10.2f}")


if __name__ == "__main__":
    main()
