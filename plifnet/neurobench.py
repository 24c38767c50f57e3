"""NeuroBench on a trained plifnet network: the community's harness for neuromorphic metrics.

    python -m plifnet.neurobench --ckpt_path CKPT --config mnist --data.root ../shared/datasets [--images 1000]

NeuroBench 2.3 (``pip install plifnet[neurobench]``) measures the footprint (bytes of parameters and
buffers), the connection sparsity (the fraction of zero weights), the activation sparsity (the fraction
of zeros in the neurons' outputs), the synaptic operations per image (effective MACs of layers fed by
real values, effective ACs of layers fed by spikes, and the dense count) and the accuracy. Its counts
are an implementation independent of plifnet's :class:`plifnet.energy.SynapticCounter`, and the command
prints both side by side. They count the same thing in one respect and differ, by definition, in two:

- ACs: every input spike times the weights it reaches: NeuroBench runs each layer on binarised inputs
  and weights, plifnet multiplies spike counts by the fan-out; equal wherever no weight is exactly 0
  (NeuroBench skips zero weights).
- MACs of the layer fed by values (the image, event counts): NeuroBench counts non-zero inputs times
  non-zero weights, so a convolution's zero padding and an empty event pixel cost nothing; plifnet counts
  the dense MACs an ANN accelerator performs, padding included (``3 x 3`` padding 1 over ``28 x 28``:
  332 of 7,056 window taps per channel pair fall in the padding).
- The dense count: NeuroBench's, with all-ones inputs, over every step; plifnet's ``macs`` is one pass.

NeuroBench calls the model once per batch; plifnet's wrapper resets the neurons' state first (else
membranes would carry over from batch to batch) and hands NeuroBench event frames batch first
(``[N, T, ...]``: it counts samples on dim 0), turning them back to ``[T, N, ...]`` for the network.
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from plifnet.contract import is_neuron, reset_state


def _model(net: nn.Module, events: bool):
    from neurobench.models import TorchModel

    class PlifnetModel(TorchModel):
        def __init__(self):
            super().__init__(net)
            for kind in {type(module) for module in net.modules() if is_neuron(module)}:
                self.add_activation_module(kind)  # NeuroBench knows snnTorch's neurons and ReLUs only

        def __call__(self, batch):
            reset_state(net)
            return net(batch.transpose(0, 1) if events else batch)

    return PlifnetModel()


def benchmark(net: nn.Module, loader: DataLoader, events: bool = False) -> dict[str, float]:
    """NeuroBench's static and workload metrics of ``net`` (class scores ``[T, N, classes]``, predicted
    class: the highest mean over T) on ``loader``'s batches, which hold event frames batch first
    (``[N, T, ...]``) when ``events``."""
    from neurobench.benchmarks import Benchmark
    from neurobench.metrics.static import ConnectionSparsity, Footprint
    from neurobench.metrics.workload import ActivationSparsity, ClassificationAccuracy, SynapticOperations

    metrics = [[Footprint, ConnectionSparsity], [ClassificationAccuracy, ActivationSparsity, SynapticOperations]]
    predict = lambda scores: scores.mean(0).argmax(-1)  # noqa: E731
    with torch.no_grad():
        results = Benchmark(_model(net, events), loader, [], [predict], metrics).run(quiet=True)
    reset_state(net)
    operations = results.pop("SynapticOperations")
    return {**results, **{f"SynapticOperations/{key}": value for key, value in operations.items()}}


def batch_first(batch):
    frames, labels = batch
    return frames.transpose(0, 1), labels


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="python -m plifnet.neurobench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by plifnet fit")
    parser.add_argument(
        "--config",
        action="append",
        required=True,
        help="plifnet fit's config(s) with the data module (repeatable), e.g. mnist",
    )
    parser.add_argument("--images", type=int, default=1000, help="the first N test images (default: %(default)s)")
    parser.add_argument("--allow_class_path", action="append", default=[])
    args, options = parser.parse_known_args(argv)  # the rest: the data module's options, e.g. --data.root DIR
    if args.images < 1:
        raise SystemExit(f"error: --images {args.images}: give the number of test images to measure, at least 1")
    from plifnet.cli import load_model
    from plifnet.energy import estimate
    from plifnet.errors import UserError

    try:
        model, data = load_model(args.ckpt_path, args.config, args.allow_class_path, options)
        data.setup("test")
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    net = model.net
    test = data.test_dataloader()
    events = getattr(data, "collate_fn", None) is not None  # event frames are stacked time first
    images = Subset(test.dataset, range(min(args.images, len(test.dataset))))
    collate = test.collate_fn
    loader = DataLoader(
        images, batch_size=test.batch_size, collate_fn=(lambda b: batch_first(collate(b))) if events else collate
    )
    results = benchmark(net, loader, events)
    ours = {"acs": 0.0, "value_macs": 0.0}
    for frames, _ in DataLoader(images, batch_size=test.batch_size, collate_fn=collate):
        report = estimate(net, frames)
        for layer in report.layers:
            ours["acs" if layer.input == "spikes" else "value_macs"] += layer.sops * report.images / len(images)
    print(f"NeuroBench 2.3 on {len(images)} test images of {args.ckpt_path}:", file=sys.stderr)
    for key, value in results.items():
        print(f"  {key}: {value:.10g}" if isinstance(value, float) else f"  {key}: {value}", file=sys.stderr)
    print(
        f"plifnet SynapticOps per image: ACs {ours['acs']:.10g}, MACs {ours['value_macs']:.10g} "
        f"(NeuroBench: {results['SynapticOperations/Effective_ACs']:.10g}, "
        f"{results['SynapticOperations/Effective_MACs']:.10g})",
        file=sys.stderr,
    )
    return {**results, "plifnet/ACs": ours["acs"], "plifnet/MACs": ours["value_macs"]}


if __name__ == "__main__":
    main()
