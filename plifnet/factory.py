"""Neurons by name, and the factory that builds one fresh neuron per spiking layer.

:data:`NEURONS` holds the built-in neurons (``plif``, ``lif``, ``if``; ``alif`` and ``adlif`` come in as entry
points, through the plug-ins' door) and any plug-in's; :func:`neuron_factory` turns a name, a class or a
factory, with a :class:`~plifnet.options.NeuronOptions`, into ``make(channels) -> neuron``.
"""

from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from plifnet.contract import is_neuron
from plifnet.errors import UserError
from plifnet.neurons import IF, LIF, PLIF, BaseNode
from plifnet.options import NeuronOptions
from plifnet.registry import Registry

NEURONS = Registry("neuron", "plifnet.neurons")
for _name, _cls in (("plif", PLIF), ("lif", LIF), ("if", IF)):
    NEURONS.register(_name, _cls)
register_neuron = NEURONS.register


def neuron_factory(
    kind: str | type | Callable[[], nn.Module] = "plif", *, options: NeuronOptions | None = None, **changes
):
    """A function ``make(channels) -> neuron`` that builds one fresh neuron per spiking layer.

    ``options`` (default :class:`~plifnet.options.NeuronOptions`), with ``changes`` to its fields by
    keyword (``neuron_factory("lif", tau=16.0)``), are the layer's options. ``kind`` is a name of
    :data:`NEURONS` (``plif``, ``lif``, ``if``, a plug-in's entry-point name or a class path) or a class:

    * a :class:`BaseNode` subclass gets ``options=`` (the whole object) and ``channels=`` (the layer's
      width), whatever its ``__init__`` declares (with ``**kwargs``, pass them on to ``super().__init__``);
    * any other ``nn.Module`` class gets those fields of the options (and ``channels``) that its
      ``__init__`` names, or all of them where it takes ``**kwargs``.

    ``kind`` may also be a ready factory: of no arguments (what a ``class_path`` with ``init_args`` in a
    config gives), called as it is, or of one, ``make(channels)``, called with the layer's width. Bad values and bad plug-ins fail here, before any layer is built.

    The protocol a neuron follows (:mod:`plifnet.contract`): a ``torch.nn.Module`` mapping
    ``[T, N, ...]`` to spikes ``[T, N, ...]``, optionally ``forward(x [N, ...], time_steps=T)`` for a
    constant input, a ``reset()`` that forgets its state, and a ``v_threshold`` or ``tau`` attribute
    (a learnable ``tau`` tensor, in time steps, is logged).
    """
    options = (options or NeuronOptions()).replace(**changes)
    if isinstance(kind, str):
        name, kind = kind, NEURONS.get(kind)
        if not (isinstance(kind, type) and issubclass(kind, nn.Module)):
            raise UserError(
                f"neuron {name!r} is {kind!r}, not a torch.nn.Module class (a name or class path must "
                f"name a neuron class; see docs/EXTENDING.md)"
            )
    if isinstance(kind, type) and issubclass(kind, BaseNode):
        cls = kind

        def build(channels: int) -> nn.Module:
            return cls(options=options, channels=channels)
    elif isinstance(kind, type):
        cls, accepted = kind, _parameters(kind)
        if options.per_channel and accepted is not None and "per_channel" not in accepted:
            raise UserError(
                f"per_channel applies to neurons with a per-channel tau (plif, alif, adlif), not to {kind.__name__}"
            )

        def build(channels: int) -> nn.Module:
            given = dict(options.as_dict(), channels=channels)
            return cls(**(given if accepted is None else {k: v for k, v in given.items() if k in accepted}))
    elif callable(kind):
        factory, takes_channels = kind, _required_positional(kind) == 1

        def build(channels: int) -> nn.Module:
            return factory(channels) if takes_channels else factory()
    else:
        raise UserError(f"neuron must be a name, a class or a factory, got {kind!r}")

    def make(channels: int) -> nn.Module:
        neuron = build(channels)
        if not isinstance(neuron, nn.Module):
            raise UserError(f"the neuron factory built a {type(neuron).__name__}, not a torch.nn.Module")
        if not callable(getattr(neuron, "reset", None)):
            raise UserError(
                f"neuron {type(neuron).__name__} has no reset() method: a neuron must forget its "
                f"state between batches (see docs/EXTENDING.md)"
            )
        if not is_neuron(neuron):
            raise UserError(
                f"neuron {type(neuron).__name__} has a reset() but neither v_threshold nor tau: give it "
                f"one, so that plifnet finds it as a neuron (see docs/EXTENDING.md)"
            )
        return neuron

    make(1)  # validate the options once (e.g. v_reset >= v_threshold) before any network is built
    make.options = options  # what SpikingNet(neuron=...) reads: these layers' options (and backend)
    return make


def _required_positional(function) -> int:
    """The positional arguments ``function`` needs: 1 for ``make(channels)``, 0 for a config's class_path factory."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: called as it is
        return 0
    return sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def _parameters(cls: type) -> set[str] | None:
    """The keyword parameters of ``cls.__init__`` (None: it takes ``**kwargs``, so everything)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def neuron_layers(neuron, options: NeuronOptions) -> Callable[[int], nn.Module]:
    """``make(channels) -> neuron`` from a network's ``neuron`` and ``options``: the result of
    :func:`plifnet.factory.neuron_factory` as it is (it holds its options), anything else through it."""
    if callable(neuron) and isinstance(getattr(neuron, "options", None), NeuronOptions):
        if options != NeuronOptions():
            raise UserError("give the neurons' options once: in neuron_factory(...) or as options=, not both")
        return neuron
    return neuron_factory(neuron, options=options)
