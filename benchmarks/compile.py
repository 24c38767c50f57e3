"""``torch.compile`` of whole networks as a script does it: graph breaks, and the training step compiled
against eager, for the paper's six networks and the example plug-in's peer networks, in one run.

For each network, one process builds it, counts dynamo's graph breaks (``torch._dynamo.explain``),
then times one training step (forward, rate-MSE loss, backward, Adam) on random input, eager and
``torch.compile(net)`` alternating for ``--rounds`` rounds of ``--steps`` steps; ms/step are medians
over rounds, the ratio is taken within each round. The first compiled step (TorchInductor compiling
the forward and the backward; seconds from its cache on disk in a later run) is reported apart.
Batch ``--batch`` and T ``--time-steps`` (the paper's T is 8 to 20: this keeps the run in minutes).

    pip install -e examples/plugin   # the peer networks
    python benchmarks/compile.py [--rounds 3] [--steps 3] [--batch 8] [--time-steps 4] [--device cpu|cuda] [--only mnist ...]
"""

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import time

import torch

PAPER = ("mnist", "fashion_mnist", "cifar10", "nmnist", "cifar10dvs", "dvs_gesture")
PEERS = ("spikingjelly", "snntorch", "norse", "handwritten")  # plifnet_example.<peer>_net.Net


def network(name, batch, time_steps):
    """(network, input, classes) as a user builds them."""
    if name in PAPER:
        from plifnet import SpikingNet
        from plifnet.models import ARCHS

        spec = ARCHS[name]
        net = SpikingNet.paper(name, time_steps=time_steps)
        if spec.static:
            return net, torch.rand(batch, spec.in_channels, spec.size, spec.size), spec.classes
        return net, (torch.rand(time_steps, batch, spec.in_channels, spec.size, spec.size) < 0.2).float(), spec.classes
    net = importlib.import_module(f"plifnet_example.{name}_net").Net(time_steps=time_steps)
    return net, torch.rand(batch, 1, 28, 28), net.classes


def measure(name, batch, time_steps, rounds, steps, device):
    from plifnet import contract

    torch.manual_seed(0)
    net, x, classes = network(name, batch, time_steps)
    net, x = net.to(device), x.to(device)
    target = torch.nn.functional.one_hot(torch.randint(0, classes, (batch,)), classes).float().to(device)
    breaks = torch._dynamo.explain(net)(x).graph_break_count
    contract.reset_state(net)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    compiled = torch.compile(net)

    def trainer(run):
        def step():
            contract.reset_state(net)  # a peer's neurons keep their state between calls
            optimizer.zero_grad(set_to_none=True)
            scores = run(x)
            loss = torch.nn.functional.mse_loss(scores.mean(0) if scores.dim() == 3 else scores, target)
            loss.backward()
            optimizer.step()

        return step

    eager, fast = trainer(net), trainer(compiled)
    start = time.perf_counter()
    fast()
    first = time.perf_counter() - start
    eager()  # warm-up

    def seconds(step):
        torch.cuda.synchronize() if device == "cuda" else None
        start = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize() if device == "cuda" else None
        return (time.perf_counter() - start) / steps

    timings = [(seconds(eager), seconds(fast)) for _ in range(rounds)]
    return {
        "breaks": breaks,
        "eager_ms": statistics.median(e for e, _ in timings) * 1e3,
        "compiled_ms": statistics.median(c for _, c in timings) * 1e3,
        "ratio": statistics.median(c / e for e, c in timings),
        "first_s": first,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--only", nargs="+", default=[*PAPER, *PEERS], choices=[*PAPER, *PEERS])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.batch, args.time_steps, args.rounds, args.steps, args.device)))
        return
    print(
        f"{args.device}, {torch.get_num_threads()} threads, float32, batch {args.batch}, T {args.time_steps}: one training step; "
        f"medians of {args.rounds} rounds of {args.steps} steps, eager and compiled alternating"
    )
    print(
        f"{'network':16}{'graph breaks':>13}{'eager ms':>10}{'compiled ms':>13}{'compiled/eager':>16}{'first step s':>14}"
    )
    for name in args.only:
        command = [
            sys.executable,
            __file__,
            "--child",
            name,
            "--batch",
            str(args.batch),
            "--time-steps",
            str(args.time_steps),
            "--rounds",
            str(args.rounds),
            "--steps",
            str(args.steps),
            "--device",
            args.device,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{name:16}failed: {(result.stderr.strip().splitlines() or ['?'])[-1][:100]}", flush=True)
            continue
        r = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            f"{name:16}{r['breaks']:13d}{r['eager_ms']:10.0f}{r['compiled_ms']:13.0f}{r['ratio']:15.2f}x"
            f"{r['first_s']:14.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
