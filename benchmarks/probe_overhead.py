"""Cost of the probe (plifnet.callbacks.Probe) against an epoch, for the paper's MNIST network and ECG's ALIF network.

For each network, in one process: the median time of a training step (forward, backward, Adam) at the config's
batch size, times the steps of one epoch of the real dataset, against the median time of one whole probe (the
16-sample forward and backward with hooks, and drawing the page). Prints both and their ratio: the share of an
epoch that a probe after every epoch costs (``every_n_epochs=1``). The default cadence keeps the probes within
5% of the fit's time whatever this ratio, by probing every few epochs where it is larger.

    python benchmarks/probe_overhead.py [--repeats 3] [--steps 5]
"""

import argparse
import tempfile
from pathlib import Path

import torch
from timing import median_seconds

from plifnet import plots
from plifnet.callbacks import spiking_layers
from plifnet.models import SpikingNet
from plifnet.module import SpikingClassifier
from plifnet.options import NeuronOptions
from plifnet.probe import probe
from plifnet.sequences import SequenceNet

CASES = {  # network, one batch (x, y) of the config's size, steps per epoch of the real dataset
    "MNIST paper network, batch 16, T = 8": (
        lambda: SpikingClassifier(SpikingNet.paper("mnist")),
        lambda n: (torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))),
        16,
        3750,  # 60,000 training images
    ),
    "ECG ALIF 36, batch 16, T = 1301": (
        lambda: SpikingClassifier(
            SequenceNet(4, 6, hidden=(36,), neuron="alif", readout="step", options=NeuronOptions(tau=20.0)),
            loss="cross_entropy",
        ),
        lambda n: (torch.randn(1301, n, 4), torch.randint(0, 6, (1301, n))),
        16,
        8,  # 128 training sequences
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed per case")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'case':40} {'step (s)':>9} {'epoch (s)':>10} {'probe (s)':>10} {'probe/epoch':>12}")
    for name, (make, batch, size, steps_per_epoch) in CASES.items():
        model = make()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x, y = batch(size)

        def step():
            optimizer.zero_grad()
            model.training_loss(model.train()(x), y).backward()
            optimizer.step()

        seconds = median_seconds(step, args.steps)  # after a first step that builds and warms up
        probe_x, probe_y = batch(16)
        layers = spiking_layers(model)

        def one_probe():
            found = probe(model, probe_x, layers, loss=lambda s: model.training_loss(s, probe_y), samples=16)
            with tempfile.TemporaryDirectory() as folder:
                plots.probe_page(found, {}, name, Path(folder) / "page.png")

        probed = median_seconds(one_probe, args.repeats)
        epoch = seconds * steps_per_epoch
        print(f"{name:40} {seconds:9.3f} {epoch:10.1f} {probed:10.2f} {probed / epoch:12.2%}")


if __name__ == "__main__":
    main()
