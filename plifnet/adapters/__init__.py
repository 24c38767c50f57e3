"""The built-in adapters of the neuron contract (:mod:`plifnet.contract`) for the peer libraries.

Each maps its library's neuron classes onto the contract: what is a neuron, how to reset it, where
its spikes are and its tau in time steps. None imports its library before a network holds one of
its modules (a claim starts with the module's class's package name), so plifnet needs none of them
installed. A library of your own adds an adapter through the entry-point group ``plifnet.adapters``.
"""

from plifnet.adapters.norse import Norse
from plifnet.adapters.snntorch import SnnTorch
from plifnet.adapters.spikingjelly import SpikingJelly
from plifnet.contract import register_adapter

register_adapter("spikingjelly", SpikingJelly)
register_adapter("snntorch", SnnTorch)
register_adapter("norse", Norse)


def from_package(module, package: str) -> bool:
    """Whether ``module``'s class, or a class it derives from, belongs to ``package``: the cheap test
    that keeps a peer library unimported until a network holds its modules."""
    return any(cls.__module__.split(".")[0] == package for cls in type(module).__mro__)
