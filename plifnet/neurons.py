"""Spiking neurons: PLIF (learnable tau), LIF (fixed tau) and IF (no leak).

One step of every neuron here (Fang et al., ICCV 2021, eqs. 3-6; SPEC section 1)::

    charge  H[t] = V[t-1] + k * (X[t] - (V[t-1] - V_reset))      decay_input=True  (default)
            H[t] = V[t-1] - k * (V[t-1] - V_reset) + X[t]        decay_input=False
    fire    S[t] = heaviside(H[t] - v_threshold)                 heaviside(0) = 1
    reset   V[t] = H[t] * (1 - S[t]) + V_reset * S[t]            hard reset (v_reset is a number)
            V[t] = H[t] - v_threshold * S[t]                     soft reset (v_reset=None)

with ``k = 1 / tau``. PLIF learns ``k = sigmoid(w)`` through one scalar ``w`` per layer (or one per
channel), so ``tau = 1 + exp(-w) > 1`` always; LIF keeps ``k`` fixed; IF has ``k = 0`` and charges
``H = V + X``. With soft reset the leak pulls towards 0. ``detach_reset`` stops the gradient through
``S`` in the reset, as in every published run, so that ``dV[t]/dH[t] = 1 - S[t]``.

Shapes: multi-step input ``[T, N, ...]`` gives spikes ``[T, N, ...]`` and starts every call from
``V[-1] = V_reset``; single-step input ``[N, ...]`` keeps ``V`` between calls until :func:`reset_state`.

Backends (multi-step): ``reference`` is :func:`multi_step` below, one autograd node per operation per
step; ``cpu`` and ``triton`` are fused kernels computing the same function (:mod:`plifnet.kernels`);
``auto`` (default) takes the fused kernel of the input's device when it is installed.
"""

from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import nn

from plifnet import kernels
from plifnet.contract import Dynamics, is_neuron, reset_state  # noqa: F401  (reset_state: plifnet's public name)
from plifnet.registry import Registry
from plifnet.surrogates import ATan, Surrogate, surrogate as make_surrogate

STEP_MODES = ("multi", "single")


def neuron_step(v, x, k, v_threshold, v_reset, detach_reset, decay_input, surrogate):
    """One time step of the equations above: returns ``(S[t], V[t])`` from ``V[t-1]`` and ``X[t]``."""
    rest = 0.0 if v_reset is None else v_reset
    if decay_input:
        h = v + k * (x - (v - rest))
    else:
        h = v - k * (v - rest) + x
    spike = surrogate(h - v_threshold)
    s = spike.detach() if detach_reset else spike
    if v_reset is None:
        v = h - v_threshold * s
    else:
        v = h * (1 - s) + v_reset * s
    return spike, v


def multi_step(x_seq, k, v_threshold, v_reset, detach_reset, decay_input, surrogate):
    """Run ``neuron_step`` over ``x_seq [T, N, ...]`` from ``V[-1] = V_reset``; returns spikes ``[T, N, ...]``.

    This is the plain reference: one autograd node per operation per step.
    """
    v = torch.full_like(x_seq[0], 0.0 if v_reset is None else v_reset)
    return run_steps(x_seq, v, lambda v, x: neuron_step(v, x, k, v_threshold, v_reset, detach_reset, decay_input, surrogate))


def run_steps(x_seq, state, step):
    """``step(state, X[t]) -> (S[t], state)`` over ``x_seq [T, N, ...]``; returns the spikes ``[T, N, ...]``."""
    spikes = []
    for x in x_seq:
        spike, state = step(state, x)
        spikes.append(spike)
    return torch.stack(spikes)


class BaseNode(nn.Module):
    """State handling and step modes shared by PLIF, LIF and IF; subclasses define :meth:`decay`.

    A new neuron model subclasses this and overrides :meth:`step` (and :meth:`initial_state` when
    its state is more than ``V``): it then runs its own equations on the reference path, since the
    fused kernels compute the built-in step only.
    """

    decay_input = True

    def __init__(
        self,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        detach_reset: bool = True,
        surrogate: Surrogate | str = "atan",
        step_mode: str = "multi",
        backend: str = "auto",
    ):
        super().__init__()
        if backend not in kernels.BACKENDS:
            raise ValueError(f"backend must be one of {kernels.BACKENDS}, got {backend!r}")
        if step_mode not in STEP_MODES:
            raise ValueError(f"step_mode must be one of {STEP_MODES}, got {step_mode!r}")
        if v_reset is not None and not v_reset < v_threshold:
            raise ValueError(f"v_reset ({v_reset}) must be below v_threshold ({v_threshold})")
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.detach_reset = bool(detach_reset)
        self.surrogate = make_surrogate(surrogate) if isinstance(surrogate, str) else surrogate
        self.step_mode = step_mode
        self.backend = backend
        self.v: torch.Tensor | None = None  # single-step state V[t-1]; None means V_reset

    def decay(self, x: torch.Tensor) -> torch.Tensor | float:
        """The leak ``k = 1/tau`` shaped to broadcast over a per-step input ``x [N, ...]``."""
        raise NotImplementedError

    def initial_state(self, x: torch.Tensor):
        """The state before the first step, shaped like one step's input ``x [N, ...]``: ``V = V_reset``."""
        return torch.full_like(x, 0.0 if self.v_reset is None else self.v_reset)

    def step(self, state, x: torch.Tensor, k):
        """One time step: ``(S[t], state[t])`` from ``state[t-1]`` (here ``V``), ``X[t]`` and the leak ``k``."""
        return neuron_step(state, x, k, *self._options())

    @property
    def fusable(self) -> bool:
        """Whether the fused kernels compute this neuron: only the built-in :meth:`step` is fused."""
        return type(self).step is BaseNode.step and type(self).initial_state is BaseNode.initial_state

    def forward(self, x: torch.Tensor, time_steps: int | None = None) -> torch.Tensor:
        """Multi-step: ``x [T, N, ...]``, or with ``time_steps`` one input ``x [N, ...]`` applied at each
        of ``time_steps`` steps; returns spikes ``[T, N, ...]``. Single-step: ``x [N, ...]``."""
        if time_steps is not None and (self.step_mode != "multi" or time_steps < 1):
            raise ValueError(f"time_steps (got {time_steps}) needs step_mode='multi' and must be >= 1")
        if self.step_mode == "multi":
            if x.dim() < (1 if time_steps else 2):
                raise ValueError(f"{type(self).__name__}: multi-step input must be [T, N, ...] (or [N, ...] with "
                                 f"time_steps), got shape {tuple(x.shape)}")
            backend = kernels.resolve(self.backend, x, self.surrogate) if self.fusable else "reference"
            k = self.decay(x if time_steps else x[0])
            if backend == "reference":
                x_seq = x.expand(time_steps, *x.shape) if time_steps else x
                return run_steps(x_seq, self.initial_state(x_seq[0]), lambda state, x_t: self.step(state, x_t, k))
            return kernels.fused_multi_step(x, k, *self._options(), backend=backend, time_steps=time_steps)
        if self.v is None:
            self.v = self.initial_state(x)
        spike, self.v = self.step(self.v, x, self.decay(x))
        return spike

    def _options(self):
        return self.v_threshold, self.v_reset, self.detach_reset, self.decay_input, self.surrogate

    def reset(self) -> None:
        """Forget the single-step state (and the graph hanging on it)."""
        self.v = None

    def leak(self) -> torch.Tensor | float:
        """``k = 1/tau`` as a number or a detached tensor (per channel: ``[C]``), for export."""
        raise NotImplementedError(f"{type(self).__name__} must define leak() (k = 1/tau) to be exported")

    def dynamics(self) -> Dynamics:
        """This neuron's step as :class:`plifnet.contract.Dynamics`, for NIR export: the built-in step
        with the hard reset only (an overridden step has equations of its own)."""
        if not self.fusable:
            raise ValueError(f"neuron {type(self).__name__} overrides the step: its own equations have no NIR form "
                             f"here (NIR has nodes for PLIF, LIF and IF)")
        if self.v_reset is None:
            raise ValueError("the soft reset (v_reset=None, V = H - v_threshold) has no NIR form (NIR's neurons reset "
                             "to v_reset); train with a hard reset (v_reset = 0) to export")
        return Dynamics(self.leak(), self.decay_input, self.v_threshold, self.v_reset,
                        per_channel=getattr(self, "per_channel", False))

    def extra_repr(self) -> str:
        return (
            f"v_threshold={self.v_threshold}, v_reset={self.v_reset}, detach_reset={self.detach_reset}, "
            f"surrogate={self.surrogate}, step_mode={self.step_mode!r}, backend={self.backend!r}"
        )


def _check_tau(tau: float) -> float:
    if not tau > 1:
        raise ValueError(f"tau must be > 1 (the leak k = 1/tau must lie in (0, 1)), got tau={tau}")
    return float(tau)


class PLIF(BaseNode):
    """Parametric LIF: the leak ``k = sigmoid(w) = 1/tau`` is learned (Fang et al., ICCV 2021).

    ``w`` starts at ``w0 = -ln(tau - 1)`` (tau = 2 gives w0 = 0) and is one scalar shared by every
    neuron and time step of the layer, or one per channel (dim 1 of the per-step input) with
    ``per_channel=True``. Pass ``channels`` with ``per_channel``; without it ``w`` takes its size
    from the first input (run one batch before building the optimizer, as with ``nn.LazyLinear``).
    """

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        detach_reset: bool = True,
        decay_input: bool = True,
        surrogate: Surrogate | str = ATan(alpha=2.0),
        per_channel: bool = False,
        channels: int | None = None,
        step_mode: str = "multi",
        backend: str = "auto",
    ):
        super().__init__(v_threshold, v_reset, detach_reset, surrogate, step_mode, backend)
        self.tau0 = _check_tau(tau)
        self.decay_input = bool(decay_input)
        self.per_channel = bool(per_channel)
        w0 = -math.log(self.tau0 - 1)
        if per_channel and channels is None:
            self.w = nn.parameter.UninitializedParameter()
        else:
            self.w = nn.Parameter(torch.full((channels,) if per_channel else (), w0))

    @property
    def tau(self) -> torch.Tensor:
        """Current tau = 1 + exp(-w), detached: a scalar, or ``[C]`` with ``per_channel``."""
        return 1 / torch.sigmoid(self.w.detach())

    def leak(self):
        return torch.sigmoid(self.w.detach().double())  # in float64: an exported tau exact to w's last bit

    def decay(self, x):
        if not self.per_channel:
            return torch.sigmoid(self.w)
        if isinstance(self.w, nn.parameter.UninitializedParameter):
            with torch.no_grad():
                self.w.materialize((x.shape[1],), dtype=x.dtype, device=x.device)
                self.w.fill_(-math.log(self.tau0 - 1))
        if x.shape[1] != self.w.numel():
            raise ValueError(f"PLIF has {self.w.numel()} channel taus but the input has {x.shape[1]} channels (dim 1)")
        return torch.sigmoid(self.w).view(-1, *([1] * (x.dim() - 2)))

    def extra_repr(self) -> str:
        return f"tau0={self.tau0}, per_channel={self.per_channel}, decay_input={self.decay_input}, " + super().extra_repr()


class LIF(BaseNode):
    """Leaky integrate-and-fire with a fixed time constant: the paper's baseline (``k = 1/tau``)."""

    def __init__(
        self,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        detach_reset: bool = True,
        decay_input: bool = True,
        surrogate: Surrogate | str = ATan(alpha=2.0),
        step_mode: str = "multi",
        backend: str = "auto",
    ):
        super().__init__(v_threshold, v_reset, detach_reset, surrogate, step_mode, backend)
        self.tau = _check_tau(tau)
        self.decay_input = bool(decay_input)

    def leak(self):
        return 1 / self.tau

    def decay(self, x):
        return self.leak()

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class IF(BaseNode):
    """Integrate-and-fire without leak: ``H[t] = V[t-1] + X[t]`` (``k = 0``)."""

    decay_input = False

    def leak(self):
        return 0.0

    def decay(self, x):
        return 0.0


NEURONS = Registry("neuron", "plifnet.neurons")
for _name, _cls in (("plif", PLIF), ("lif", LIF), ("if", IF)):
    NEURONS.register(_name, _cls)
register_neuron = NEURONS.register

def neuron_factory(
    kind: str | type | Callable[[], nn.Module] = "plif",
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    detach_reset: bool = True,
    decay_input: bool = True,
    surrogate: str | Surrogate = "atan",
    surrogate_alpha: float | None = None,
    per_channel: bool = False,
    backend: str = "auto",
):
    """A function ``make(channels) -> neuron`` that builds one fresh neuron per spiking layer.

    ``kind`` is a name of :data:`NEURONS` (``plif``, ``lif``, ``if``, a plug-in's entry-point name or
    a class path) or a class: it gets those of the other arguments that its ``__init__`` takes (IF
    takes no ``tau``), plus ``channels`` (the layer's width) where it takes one. ``kind`` may also be
    a ready factory taking no arguments (what a ``class_path`` with ``init_args`` in a config gives),
    which is called as it is. The surrogate is named as in :data:`plifnet.surrogates.SURROGATES`, or
    given as an instance. Bad values and bad plug-ins fail here, before any layer is built.

    The protocol a neuron follows (:mod:`plifnet.contract`): a ``torch.nn.Module`` mapping
    ``[T, N, ...]`` to spikes ``[T, N, ...]``, optionally ``forward(x [N, ...], time_steps=T)`` for a
    constant input, a ``reset()`` that forgets its state, and a ``v_threshold`` or ``tau`` attribute
    (a learnable ``tau`` tensor, in time steps, is logged).
    """
    if isinstance(kind, str):
        name, kind = kind, NEURONS.get(kind)
        if not (isinstance(kind, type) and issubclass(kind, nn.Module)):
            raise TypeError(f"neuron {name!r} is {kind!r}, not a torch.nn.Module class (a name or class path must "
                            f"name a neuron class; see docs/EXTENDING.md)")
    if isinstance(kind, type):
        options = dict(tau=tau, v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset,
                       decay_input=decay_input, surrogate=make_surrogate(surrogate, surrogate_alpha),
                       per_channel=per_channel, backend=backend)
        accepted = _parameters(kind)
        if per_channel and "per_channel" not in accepted:
            raise ValueError(f"per_channel applies to neurons with a per-channel tau (plif), not to {kind.__name__}")
        cls = kind

        def build(channels: int) -> nn.Module:
            given = dict(options, channels=channels)
            return cls(**(given if accepted is None else {k: v for k, v in given.items() if k in accepted}))
    elif callable(kind):
        factory = kind

        def build(channels: int) -> nn.Module:
            return factory()
    else:
        raise TypeError(f"neuron must be a name, a class or a factory, got {kind!r}")

    def make(channels: int) -> nn.Module:
        neuron = build(channels)
        if not isinstance(neuron, nn.Module):
            raise TypeError(f"the neuron factory built a {type(neuron).__name__}, not a torch.nn.Module")
        if not callable(getattr(neuron, "reset", None)):
            raise TypeError(f"neuron {type(neuron).__name__} has no reset() method: a neuron must forget its "
                            f"state between batches (see docs/EXTENDING.md)")
        if not is_neuron(neuron):
            raise TypeError(f"neuron {type(neuron).__name__} has a reset() but neither v_threshold nor tau: give it "
                            f"one, so that plifnet finds it as a neuron (see docs/EXTENDING.md)")
        return neuron

    make(1)  # validate the options once (e.g. v_reset >= v_threshold) before any network is built
    return make


def _parameters(cls: type) -> set[str] | None:
    """The keyword parameters of ``cls.__init__`` (None: it takes ``**kwargs``, so everything)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
