"""plifnet: spiking neural networks with learnable membrane time constants (PLIF), on Lightning.

Where things live: neuron equations and tau in :mod:`plifnet.neurons` (adaptive ones in :mod:`plifnet.adaptive`,
how a time constant is bounded and first drawn in :mod:`plifnet.time_constants`), surrogate gradients in
:mod:`plifnet.surrogates`, the paper's networks in :mod:`plifnet.models`, networks for sequences in
:mod:`plifnet.sequences`, training in :mod:`plifnet.module`, data in :mod:`plifnet.data`.
"""

from pathlib import Path

from plifnet.factory import neuron_factory
from plifnet.models import ARCHS, SpikingNet
from plifnet.neurons import IF, LIF, PLIF, reset_state
from plifnet.sequences import SequenceNet

__version__ = "0.2.0"
CONFIGS = Path(__file__).resolve().parent / "configs"  # the configs shipped as package data (configs/ in a clone)
__all__ = [
    "ARCHS",
    "IF",
    "LIF",
    "PLIF",
    "SequenceNet",
    "SpikingClassifier",
    "SpikingNet",
    "neuron_factory",
    "reset_state",
]


def __getattr__(name: str):
    # The LightningModule on first use: the neurons and networks alone need torch, not Lightning
    # (its import takes seconds), so `import plifnet.neurons` stays quick.
    if name == "SpikingClassifier":
        from plifnet.module import SpikingClassifier

        return SpikingClassifier
    raise AttributeError(f"module 'plifnet' has no attribute {name!r}")
