"""What a spiking neuron is to plifnet: the one contract that every part of plifnet asks.

ResetState, TauMonitor, FiringRateMonitor, SynapticOps, the leak check, predict and NIR export
never look at a neuron's class themselves. For any module of any network they ask this module,
which asks the first :class:`Adapter` that claims the module:

- ``is_neuron``: is it a spiking neuron (its output spikes and tau are followed)?
- ``keeps_state`` / ``reset``: does it keep state between calls, and how it forgets it;
- ``spikes``: where the spikes are in what its ``forward`` returned (snnTorch returns ``(spk, mem)``);
- ``tau``: its membrane time constant **in time steps**, if it has one, and ``learns_tau``;
- ``dynamics``: for NIR export, the neuron as plifnet's LIF step (:class:`Dynamics`), where it is one;
- ``recording`` / ``membrane``: the membrane of each call, for figures (:class:`Membrane`), where the family exposes it.

Adapters are found the way plug-ins are: the built-in ones (:mod:`plifnet.adapters`: SpikingJelly,
snnTorch, Norse) and any installed package's entry points in the group ``plifnet.adapters``, then
the documented protocol (:class:`Protocol`), which plifnet's own neurons follow too. An adapter
claims a module by its class; a peer library is imported only when a network holds its modules.

The protocol, in full: a ``torch.nn.Module`` whose class defines a ``reset()`` method (it forgets
the state) and that has a ``v_threshold`` or a ``tau`` attribute. Its output is the spikes (or a
tuple whose first element is); ``tau`` in time steps, a tensor when it is learned (then it is
logged as ``tau/<module path>``); optionally ``time_constants()`` (every time constant by name, each a
:class:`TimeConstant`: logged as ``tau/<module path>/<name>``), ``dynamics()`` (a :class:`Dynamics`) for NIR export, and ``recording()``
(a context) with ``recorded()`` (``H[t] - threshold[t]`` of the calls made within it) for membrane figures.

Importing this module imports neither Lightning nor any peer library.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import warnings
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from plifnet import compat
from plifnet.errors import UserError
from plifnet.registry import Registry


@dataclass(frozen=True)
class Dynamics:
    """A neuron whose step is plifnet's (``plifnet/neurons.py``), what NIR's LIF and IF are at dt = 1::

        H[t] = V[t-1] + k (X[t] - (V[t-1] - v_reset))      decay_input
        H[t] = V[t-1] - k (V[t-1] - v_reset) + X[t]        not decay_input  (k = 0: IF)
        S[t] = H[t] >= v_threshold;  V[t] = v_reset where S[t], else H[t]

    ``k = 1/tau``: a number, or a tensor that broadcasts against one sample's ``[C, H, W]`` or ``[F]``
    as numpy does, or with ``per_channel`` one value per channel (dim 0 of a sample)."""

    k: torch.Tensor | float
    decay_input: bool
    v_threshold: float
    v_reset: float
    per_channel: bool = False


@dataclass(frozen=True)
class Membrane:
    """A neuron's membrane over one call, for figures: ``values`` shaped as the call's spikes (``[T, N, ...]``, or
    ``[N, ...]`` for one step), the ``threshold`` it is drawn against, and what the values are (``meaning``): the
    families record different moments of the step (before or after the reset)."""

    values: torch.Tensor
    threshold: float
    meaning: str


@dataclass(frozen=True)
class TimeConstant:
    """One time constant of a neuron in time steps (a tensor: per neuron or per layer, detached), whether it is
    learnt and through which parameters, and how it is read from the library's own parameter (shown beside
    the figure: snnTorch's beta is read as 1/(1 - beta), where snnTorch's documentation writes -1/ln(beta))."""

    steps: torch.Tensor | float
    learned: bool
    parameters: tuple = ()
    convention: str = ""


class Adapter:
    """How plifnet reads one family of neurons. Subclasses define :meth:`claims` and override what differs."""

    convention = ""  # how tau in steps is read from the family's own parameter, e.g. "1/(1-beta)"

    def claims(self, module: nn.Module) -> bool:
        """Whether this adapter speaks for ``module`` (decided by its class)."""
        raise NotImplementedError(f"{type(self).__name__} must define claims(module) -> bool")

    def is_neuron(self, module: nn.Module) -> bool:
        """A spiking neuron, whose output spikes (and tau) are followed; a stateful non-neuron says False."""
        return True

    def keeps_state(self, module: nn.Module) -> bool:
        return True

    def reset(self, module: nn.Module) -> None:
        """Forget the state, as a fresh module has it."""
        module.reset()

    def spikes(self, module: nn.Module, output) -> torch.Tensor:
        """The spikes in what ``module.forward`` returned: the output, or the first element of a tuple."""
        return output[0] if isinstance(output, (tuple, list)) else output

    def tau(self, module: nn.Module) -> torch.Tensor | float | None:
        """The membrane time constant in time steps (a tensor: per neuron or per layer), or None."""
        return None

    def learns_tau(self, module: nn.Module) -> bool:
        """Whether tau is learned (then TauMonitor logs it)."""
        return False

    def tau_parameters(self, module: nn.Module) -> list[nn.Parameter]:
        """The parameters that tau is learnt through (the optimizer gives them a group of their own, without
        weight decay): by default the neuron's own parameters where it learns tau (PLIF's ``w``)."""
        return list(module.parameters(recurse=False)) if self.learns_tau(module) else []

    def leak_advice(self, module: nn.Module) -> str:
        """How to stop a network of this family's neurons from carrying state between batches (the leak check's fix)."""
        return (
            "give the class a reset() that forgets its state (and a v_threshold or tau attribute, so that plifnet "
            "finds it), install or write an adapter (entry-point group 'plifnet.adapters', docs/EXTENDING.md), or "
            "reset the state at the start of forward"
        )

    def time_constants(self, module: nn.Module) -> dict[str, TimeConstant]:
        """Every time constant of the neuron by name: ``tau``, the membrane's (:meth:`tau`), and any other the
        family has (``tau_syn``, a synaptic current's; ``tau_adapt``, an adaptation's)."""
        tau = self.tau(module)
        if tau is None:
            return {}
        return {"tau": TimeConstant(tau, self.learns_tau(module), tuple(self.tau_parameters(module)), self.convention)}

    def recording(self, module: nn.Module):
        """A context within which :meth:`membrane` can read the membrane (a family that stores it on request)."""
        return contextlib.nullcontext()

    def membrane(self, module: nn.Module, output) -> Membrane | None:
        """The membrane of the call that returned ``output``, read under :meth:`recording`; None where the family
        does not expose it (its figures then say so)."""
        return None

    def dynamics(self, module: nn.Module) -> Dynamics:
        """The neuron as plifnet's step, for NIR export; ``ValueError`` saying why where it is not one."""
        raise UserError(
            f"neuron {type(module).__name__} has no mapping onto plifnet's LIF/IF equations here, so no NIR form"
        )


class Protocol(Adapter):
    """Any module with a ``reset()`` method and a ``v_threshold`` or ``tau``: plifnet's own neurons
    (:mod:`plifnet.neurons`) and a hand-written neuron that follows docs/EXTENDING.md."""

    def claims(self, module):
        return callable(getattr(type(module), "reset", None)) and (_has(module, "v_threshold") or _has(module, "tau"))

    def tau(self, module):
        tau = getattr(module, "tau", None)
        return tau.detach() if torch.is_tensor(tau) else tau

    def learns_tau(self, module):
        return torch.is_tensor(getattr(module, "tau", None))

    def time_constants(self, module):
        """A neuron's own ``time_constants()`` where it has one (ALIF's membrane and adaptation), else its ``tau``."""
        own = getattr(module, "time_constants", None)
        return own() if callable(own) else super().time_constants(module)

    def recording(self, module):
        """A neuron's own ``recording()`` context, where it has one (plifnet's neurons: :meth:`BaseNode.recording`)."""
        own = getattr(module, "recording", None)
        return own() if callable(own) else super().recording(module)

    def membrane(self, module, output):
        """What a neuron's ``recorded()`` gives, ``H[t] - threshold[t]`` before the reset, drawn against 0."""
        own = getattr(module, "recorded", None)
        values = own() if callable(own) else None
        return None if values is None else Membrane(values, 0.0, "H[t] - threshold[t], before the reset")

    def dynamics(self, module):
        """A neuron that defines ``dynamics()`` returning a :class:`Dynamics` (plifnet's PLIF, LIF, IF do)."""
        if not callable(getattr(module, "dynamics", None)):
            return super().dynamics(module)
        return module.dynamics()


def _has(module: nn.Module, name: str) -> bool:
    try:
        getattr(module, name)
    except AttributeError:
        return False
    return True


ADAPTERS = Registry("adapter", "plifnet.adapters")
_adapters: list[Adapter] | None = None
_by_class: dict[type, Adapter | None] = {}


def register_adapter(name: str, cls: type | None = None):
    """``register_adapter("mylib", MyAdapter)``, or ``@register_adapter("mylib")`` above the class: asked
    before the protocol from the next lookup on (an installed package declares an entry point instead)."""
    global _adapters
    if cls is None:
        return lambda cls: register_adapter(name, cls)
    ADAPTERS.register(name, cls)
    _adapters = None
    _by_class.clear()
    return cls


def adapters() -> list[Adapter]:
    """The adapters in the order they are asked: registered and installed ones, then the protocol."""
    global _adapters
    if _adapters is None:  # plifnet's own adapters are entry points too (pyproject.toml)
        _adapters = [cls() for cls in ADAPTERS.load_all()] + [Protocol()]
    return _adapters


def from_package(module, package: str) -> bool:
    """Whether ``module``'s class, or a class it derives from, belongs to ``package``: the cheap test
    that keeps a peer library unimported until a network holds its modules."""
    return any(cls.__module__.split(".")[0] == package for cls in type(module).__mro__)


def adapter_of(module: nn.Module) -> Adapter | None:
    """The adapter that speaks for ``module``, or None: to plifnet it is then no neuron and keeps no state.
    Remembered per class (a claim is decided by the class), so that resetting a network before and after
    every batch costs little: 54 us instead of 290 for the MNIST network's 29 modules."""
    cls = type(module)
    if cls not in _by_class:
        _by_class[cls] = next((adapter for adapter in adapters() if adapter.claims(module)), None)
    return _by_class[cls]


def is_neuron(module: nn.Module) -> bool:
    adapter = adapter_of(module)
    return adapter is not None and adapter.is_neuron(module)


def neurons(net: nn.Module) -> dict[str, nn.Module]:
    """The spiking neurons of ``net`` by module path."""
    return {name: m for name, m in net.named_modules() if is_neuron(m)}


def reset_state(net: nn.Module) -> None:
    """Forget the state of every module inside ``net`` that keeps state (any module tree)."""
    for m in net.modules():
        adapter = adapter_of(m)
        if adapter is not None and adapter.keeps_state(m):
            adapter.reset(m)


def spikes(module: nn.Module, output) -> torch.Tensor:
    """The spikes of a neuron in what its ``forward`` returned."""
    return adapter_of(module).spikes(module, output)


def tau(module: nn.Module) -> torch.Tensor | float | None:
    """A neuron's membrane time constant in time steps (detached), or None."""
    adapter = adapter_of(module)
    return None if adapter is None else adapter.tau(module)


def learns_tau(module: nn.Module) -> bool:
    adapter = adapter_of(module)
    return adapter is not None and adapter.learns_tau(module)


def time_constants(module: nn.Module) -> dict[str, TimeConstant]:
    """Every time constant of a neuron in time steps, by name (``tau`` first); none for a module that is no neuron."""
    adapter = adapter_of(module)
    return {} if adapter is None or not adapter.is_neuron(module) else adapter.time_constants(module)


def tau_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters through which a neuron learns its time constants, every one (none where it learns none):
    the optimizer gives them a group of their own, without weight decay."""
    found = {id(p): p for constant in time_constants(module).values() if constant.learned for p in constant.parameters}
    return list(found.values())


def recording(module: nn.Module):
    """A context within which :func:`membrane` reads a neuron's membrane (a no-op for a module that is no neuron)."""
    adapter = adapter_of(module)
    return contextlib.nullcontext() if adapter is None else adapter.recording(module)


def membrane(module: nn.Module, output) -> Membrane | None:
    """A neuron's membrane in the call that returned ``output`` (under :func:`recording`), or None."""
    adapter = adapter_of(module)
    return None if adapter is None else adapter.membrane(module, output)


def dynamics(module: nn.Module) -> Dynamics:
    """A neuron as plifnet's LIF step (for NIR export); ``ValueError`` naming why where it is not one."""
    adapter = adapter_of(module)
    if adapter is None or not adapter.is_neuron(module):
        raise UserError(f"{type(module).__name__} is not a spiking neuron")
    return adapter.dynamics(module)


class StateLeak(UserError, RuntimeError):
    """The network does not forget: the same input gives another output after :func:`reset_state`."""


@torch.no_grad()
def check_forgets(model: nn.Module, x, where: nn.Module | None = None) -> None:
    """Run ``x`` through ``model`` twice in eval mode, :func:`reset_state` before each, and raise
    :class:`StateLeak` unless the two runs are the same everywhere inside: the output of every module
    (every tensor it returns: spikes, and a state it hands back), and every tensor that a module keeps
    outside its parameters (attributes, buffers, and tuples, lists and dicts of them) once each run has
    been reset. Comparing only the network's output would pass a module that carries its state from
    batch to batch behind a layer that happens to be silent, as an untrained output layer usually is.
    Warn once when ``where`` (default: ``model``) holds no spiking neuron. The message names the
    modules whose state or output differed: the state that nothing resets."""
    where = model if where is None else where
    if not neurons(where) and not getattr(where, "_plifnet_warned_no_neuron", False):
        where._plifnet_warned_no_neuron = True
        warnings.warn(
            f"no spiking neuron found in {type(where).__name__}: plifnet cannot reset its state, follow tau or "
            f"firing rates, or count it. Make its neurons visible: follow the protocol (a reset() and a "
            f"v_threshold or tau attribute), or install or write an adapter (docs/EXTENDING.md)",
            RuntimeWarning,
        )
    was_training = model.training
    model.eval()
    paths = {m: name for name, m in model.named_modules()}
    runs = []
    # the check's runs are not the run's: monitors and counters must not see them
    with contextlib.ExitStack() as stack:
        stack.callback(model.train, was_training)
        stack.callback(reset_state, model)
        stack.enter_context(compat.forward_hooks_off(model))
        for _ in range(2):
            reset_state(model)
            outputs, digests = [], {}
            handles = [
                m.register_forward_hook(lambda m, args, output: outputs.append((paths[m], _digest(output, digests))))
                for m in paths
            ]
            try:
                with eager():  # a compiled network would compile the hooks in, once per module's output shape
                    model(x)
            finally:
                for handle in handles:
                    handle.remove()
            reset_state(model)
            runs.append((outputs, _kept(model)))
    (first, kept_first), (second, kept_second) = runs
    kept = sorted(
        name for name in kept_first.keys() | kept_second.keys() if kept_first.get(name) != kept_second.get(name)
    )
    differ = [(a or b)[0] for a, b in itertools.zip_longest(first, second) if a != b]  # module calls in order
    if not kept and not differ:
        return
    # name the modules that keep it, or else where it shows first (the earliest module whose output changed)
    names = kept or differ[:1]
    modules = dict(model.named_modules())
    classes = list(dict.fromkeys(type(modules[name]).__name__ for name in names if name in modules))
    shown = ", ".join(name or "the network itself" for name in names[:6])
    # the fix depends on the family of the neurons there: snnTorch's and Norse's take their state from the caller
    inside = [m for name in names if name in modules for m in modules[name].modules() if is_neuron(m)]
    advice = (adapter_of(inside[0]) if inside else Protocol()).leak_advice(inside[0] if inside else model)
    raise StateLeak(
        f"the network keeps state between batches in {', '.join(classes)} ({shown}): the same input gave another "
        f"{'state' if kept else 'output'} there after plifnet reset it, so every batch would depend on "
        f"the one before. Fix: {advice}"
    )


def eager():
    """A context in which compiled modules and functions run as plain Python (``torch.compiler.set_stance``, torch
    2.6 and later; before it, nothing changes)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def _digest(value, seen: dict):
    """A fingerprint of the tensors in a value (a tensor, or tuples, lists and dicts holding tensors), None where it
    holds none: shape, dtype and a hash of the bytes, so that two runs compare bit for bit without a copy of every
    activation. A tensor seen already in this run (a container's output is its last child's) is hashed once."""
    if torch.is_tensor(value):
        known = seen.get(id(value))  # an id is reused once its tensor is freed: the weak reference tells
        version = None if value.is_inference() else value._version  # inference tensors keep no counter
        if known is None or known[0]() is not value or known[1] != version:
            data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            digest = (tuple(value.shape), str(value.dtype), hashlib.blake2b(data.numpy().data).hexdigest())
            known = seen[id(value)] = (weakref.ref(value), version, digest)
        return known[2]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (tuple, list)) else ()
    digests = tuple((key, digest) for key, item in items if (digest := _digest(item, seen)) is not None)
    return digests or None


MODULE_INTERNALS = frozenset(vars(nn.Module()))  # _parameters, _buffers, _modules, the hook dicts, training


def _kept(model: nn.Module) -> dict:
    """``{module path: fingerprint}`` of the tensors each module holds outside its parameters: its buffers and
    its attributes, with tensors inside tuples, lists and dicts among them (Norse's state is a named tuple,
    SpikingJelly's a dict ``_memories``)."""
    kept, seen = {}, {}
    for name, m in model.named_modules():
        held = {key: value for key, value in vars(m).items() if key not in MODULE_INTERNALS}
        digest = _digest({**held, **dict(m.named_buffers(recurse=False))}, seen)
        if digest is not None:
            kept[name] = digest
    return kept
