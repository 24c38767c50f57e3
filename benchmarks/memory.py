"""Training memory against the number of time steps T: plifnet beside SpikingJelly 2.0, in one run.

The paper's MNIST, CIFAR10-DVS and DVS128 Gesture networks at T = 4, 8, 16, 20, 32, one training step
(forward, rate-MSE loss, backward, Adam) on random input in float32, each figure from a child
process that imports one library and builds one network:

* ``kept``: what the forward leaves for backward, per sample and time step (resident memory after the
  forward, freed blocks handed back to the OS, minus before it; the output is a few bytes);
* ``peak``: the step's peak resident memory above the memory before it (Linux VmHWM, restarted
  through /proc/self/clear_refs after a warm-up step), MiB;
  both the median of ``--measures`` steps (resident memory varies with the allocator's free lists);
* ``ms``: the median time of ``--steps`` training steps after those.

Implementations: plifnet as a script gets it (``SpikingNet(arch)``, memory ``store``), plifnet with
``memory="first_block"`` and with ``memory="checkpoint"``, SpikingJelly 2.0's torch backend on the same network
(``neuron_kernels.spikingjelly_network``: multi-step ``ParametricLIFNode``), and SpikingJelly's
``memopt`` at level 1 (each block checkpointed, its binary input compressed to bits; levels 2-4 search
by measuring CUDA memory and refuse the CPU).

    python benchmarks/memory.py [--steps 2] [--measures 3] [--time-steps 4 8 16 20 32] [--networks mnist cifar10dvs dvs_gesture]
    python benchmarks/memory.py --parts   # the first block's stages timed apart (what first_block recomputes)
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from neuron_kernels import _release_freed_memory, _status_kb, alternating_rounds, has_spikingjelly, spikingjelly_network

BATCH = {"mnist": 16, "cifar10dvs": 2, "dvs_gesture": 2}  # the event networks: 2, for minutes on 2 CPU cores at T = 32
IMPLEMENTATIONS = ("plifnet", "plifnet first_block", "plifnet checkpoint", "SpikingJelly", "SJ memopt L1")


def build(implementation, arch, time_steps, x):
    """The network as each library's user builds it; returns a function of x giving the rates [N, classes]."""
    if implementation.startswith("plifnet"):
        from plifnet import SpikingNet

        net = SpikingNet.paper(arch, time_steps=time_steps, memory=(implementation.split()[1:] or ["store"])[0])
        return net, lambda inputs: net(inputs).mean(0)
    net = spikingjelly_network(arch, time_steps=time_steps)
    if "memopt" in implementation:
        from neuron_kernels import SpikingJellyBlock
        from spikingjelly.activation_based.memopt import optimize_memory

        optimize_memory(net, SpikingJellyBlock, lambda model: model(x), level=1)
    return net, net


def measure(implementation, arch, time_steps, batch, steps, measures):
    from plifnet.models import ARCHS

    torch.manual_seed(0)
    spec = ARCHS[arch]
    if spec.static:
        x = torch.rand(batch, spec.in_channels, spec.size, spec.size)
    else:  # event frames, 0/1 as plifnet's event data gives them
        x = (torch.rand(time_steps, batch, spec.in_channels, spec.size, spec.size) < 0.2).float()
    target = torch.nn.functional.one_hot(torch.randint(0, spec.classes, (batch,)), spec.classes).float()
    net, rates_of = build(implementation, arch, time_steps, x)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

    def step(between=lambda: None):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(rates_of(x), target)
        between()
        loss.backward()
        optimizer.step()

    step()  # kernels compiled, Adam's state allocated, outside the measurement
    kept, peaks = [], []
    for _ in range(measures):  # resident memory moves with the allocator's free lists: the median of a few
        optimizer.zero_grad(set_to_none=True)  # as every step starts
        _release_freed_memory()
        baseline = _status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from here

        def after_forward():
            _release_freed_memory()
            kept.append(_status_kb("VmRSS") - baseline)

        step(after_forward)
        peaks.append(_status_kb("VmHWM") - baseline)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    per_sample_step = batch * time_steps
    return {
        "kept_mib": statistics.median(kept) / 1024 / per_sample_step,
        "peak_mib": statistics.median(peaks) / 1024,
        "ms": statistics.median(times) * 1e3,
    }


def first_block_parts(time_steps=20, batch=2, repeats=5):
    """Where ``memory="first_block"``'s extra time goes: the first block's stages of the CIFAR10-DVS network,
    timed apart (medians, alternating rounds), beside a copy of the same tensor (the machine's streaming limit)."""
    from plifnet import SpikingNet, kernels

    torch.manual_seed(0)
    net = SpikingNet.paper("cifar10dvs").train()
    frames = (torch.rand(time_steps, batch, 2, 128, 128) < 0.2).float()
    conv, norm, neuron, pool = net.encoder[0], net.encoder[1], net.layers[0], net.layers[1]
    with torch.no_grad():
        current = conv(frames.flatten(0, 1))
        normed = norm(current).unflatten(0, frames.shape[:2])
        spikes = neuron(normed)
        pooled = pool(spikes)
        parts = {
            "convolution (2 -> 128 channels)": lambda: conv(frames.flatten(0, 1)),
            "BatchNorm, training forward": lambda: norm(current),
            "neuron (fused kernel)": lambda: neuron(normed),
            "max-pooling (fused kernel)": lambda: pool(spikes),
            "copy of the BatchNorm input (limit)": lambda: current.clone(),
            "spikes to bytes, checked (kernel)": lambda: kernels.binary_as_bytes(pooled),
            "spikes to bytes, checked (torch)": lambda: (
                torch.all((pooled == 0) | (pooled == 1)) and pooled.to(torch.uint8)
            ),
        }
        rounds = alternating_rounds(parts, repeats, "cpu")
    print(
        f"first block of CIFAR10-DVS, T = {time_steps}, batch {batch}: {current.numel() * 4 / 2**20:.0f} MiB per "
        f"[T*N, 128, 128, 128] tensor; medians of {repeats} alternating rounds after a warm-up"
    )
    for name in parts:
        print(f"  {name:40s} {statistics.median(r[name] for r in rounds) * 1e3:7.1f} ms")


def child(*args):
    command = [sys.executable, __file__, "--child", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": (result.stderr.strip().splitlines() or ["exit " + str(result.returncode)])[-1][:80]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def slope(rows, key):
    """MiB per added time step between the first and the last T."""
    (t0, first), (t1, last) = rows[0], rows[-1]
    return (last[key] - first[key]) / (t1 - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--measures", type=int, default=3, help="steps whose memory is measured (median)")
    parser.add_argument("--time-steps", type=int, nargs="+", default=[4, 8, 16, 20, 32])  # 20: the paper's T for DVS
    parser.add_argument("--networks", nargs="+", default=list(BATCH), choices=list(BATCH))
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--parts", action="store_true", help="time the first block's stages apart, and stop")
    args = parser.parse_args()
    if args.parts:
        from plifnet.kernels import keep_freed_memory_unless_opted_out

        keep_freed_memory_unless_opted_out()  # as the kernels do at their first run: each part without page faults
        first_block_parts()
        return
    if args.child:
        implementation, arch, time_steps, batch, steps, measures = args.child
        print(json.dumps(measure(implementation, arch, int(time_steps), int(batch), int(steps), int(measures))))
        return
    implementations = [name for name in IMPLEMENTATIONS if name.startswith("plifnet") or has_spikingjelly()]
    print(
        f"{torch.get_num_threads()} threads, float32, one training step; kept: MiB per sample and time step; "
        f"peak: MiB above the memory before the step (kept and peak: medians of {args.measures} steps); "
        f"ms: median of {args.steps} steps"
    )
    for arch in args.networks:
        batch = BATCH[arch]
        results = {name: [] for name in implementations}
        print(f"\n{arch}, batch {batch}")
        print(f"{'T':>3} " + "".join(f"{name + ' kept/peak/ms':>34}" for name in implementations))
        for time_steps in args.time_steps:
            row = {name: child(name, arch, time_steps, batch, args.steps, args.measures) for name in implementations}
            cells = []
            for name in implementations:
                r = row[name]
                if "error" in r:
                    cells.append(f"{r['error'][:33]:>34}")
                    continue
                results[name].append((time_steps, r))
                cells.append(f"{r['kept_mib']:12.2f}{r['peak_mib']:11.0f}{r['ms']:11.0f}")
            print(f"{time_steps:>3} " + "".join(cells), flush=True)
        reference = results.get("SpikingJelly")
        for name in implementations:
            rows = results[name]
            if len(rows) < 2:
                continue
            text = f"  {name}: peak grows {slope(rows, 'peak_mib'):.0f} MiB per time step"
            if reference and len(reference) == len(rows):
                ratios = [r["peak_mib"] / ref["peak_mib"] for (_, r), (_, ref) in zip(rows, reference)]
                text += f"; peak vs SpikingJelly {min(ratios):.2f}-{max(ratios):.2f}x"
            print(text)


if __name__ == "__main__":
    main()
