"""A neuron of your own at fused speed? The MNIST network's training step with ALIF (the example
plug-in: PLIF's hooks with its own threshold) compiled, ALIF on the reference path, and the
built-in PLIF on its fused kernel, in one run; and both with the whole network under torch.compile
(graph breaks printed).

A plain script's view: ``SpikingNet("mnist")`` (batch 16, T 8) with each neuron, one training step
(forward, rate-MSE loss, backward, Adam) on random images. The implementations alternate within each
of ``--rounds`` rounds; ms/step are medians over rounds, ratios to PLIF are taken within a round.
The first step of each (compiling the graphs of the compiled path: once per process, then from
TorchInductor's cache on disk) is reported apart.

    pip install -e examples/plugin
    python benchmarks/neuron_api.py [--rounds 3] [--steps 5] [--precision fp32|bf16]
"""

import argparse
import statistics
import time
from contextlib import nullcontext

import torch

from plifnet import SpikingNet, neuron_factory
from plifnet_example import ALIF

IMPLEMENTATIONS = {
    "PLIF, fused kernel": dict(kind="plif"),
    "ALIF, compiled": dict(kind=ALIF),
    "ALIF, reference": dict(kind=ALIF, backend="reference"),
    "PLIF, compile(net)": dict(kind="plif", compile_net=True),
    "ALIF, compile(net)": dict(kind=ALIF, compile_net=True),
}


def trainer(kind, backend="auto", precision="fp32", compile_net=False):
    """One training step of the MNIST network; ``compile_net``: the whole network under torch.compile
    (the fused kernels as custom operators, a neuron's own hooks traced into its graph)."""
    torch.manual_seed(0)
    net = SpikingNet.paper("mnist", neuron=neuron_factory(kind, backend=backend))
    run = torch.compile(net) if compile_net else net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    images, labels = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    target = torch.nn.functional.one_hot(labels, 10).float()
    if compile_net:
        breaks = torch._dynamo.explain(net)(images).graph_break_count
        print(f"torch.compile of the MNIST network with {getattr(kind, '__name__', kind)}: {breaks} graph breaks")

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext():
            rates = run(images).mean(0)
        loss = torch.nn.functional.mse_loss(rates.float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def seconds(fn, repeats=1):
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed per round and implementation")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    steps = {name: trainer(**options, precision=args.precision) for name, options in IMPLEMENTATIONS.items()}
    first = {name: seconds(step) for name, step in steps.items()}
    rounds = [{name: seconds(step, args.steps) for name, step in steps.items()} for _ in range(args.rounds)]
    print(
        f"MNIST network, batch 16, T 8, {args.precision}, {torch.get_num_threads()} threads: one training step; "
        f"medians of {args.rounds} rounds of {args.steps} steps"
    )
    print(f"{'neuron':22}{'ms/step':>9}{'vs PLIF fused':>15}{'first step s':>14}")
    for name in steps:
        ms = statistics.median(r[name] for r in rounds) * 1e3
        ratio = statistics.median(r[name] / r["PLIF, fused kernel"] for r in rounds)
        print(f"{name:22}{ms:9.1f}{ratio:14.2f}x{first[name]:14.1f}")


if __name__ == "__main__":
    main()
