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

import math

import torch
from torch import nn

from plifnet import kernels
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
    spikes = []
    for x in x_seq:
        spike, v = neuron_step(v, x, k, v_threshold, v_reset, detach_reset, decay_input, surrogate)
        spikes.append(spike)
    return torch.stack(spikes)


class BaseNode(nn.Module):
    """State handling and step modes shared by PLIF, LIF and IF; subclasses define :meth:`decay`."""

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

    def forward(self, x: torch.Tensor, time_steps: int | None = None) -> torch.Tensor:
        """Multi-step: ``x [T, N, ...]``, or with ``time_steps`` one input ``x [N, ...]`` applied at each
        of ``time_steps`` steps; returns spikes ``[T, N, ...]``. Single-step: ``x [N, ...]``."""
        if time_steps is not None and (self.step_mode != "multi" or time_steps < 1):
            raise ValueError(f"time_steps (got {time_steps}) needs step_mode='multi' and must be >= 1")
        if self.step_mode == "multi":
            if x.dim() < (1 if time_steps else 2):
                raise ValueError(f"{type(self).__name__}: multi-step input must be [T, N, ...] (or [N, ...] with "
                                 f"time_steps), got shape {tuple(x.shape)}")
            backend = kernels.resolve(self.backend, x, self.surrogate)
            k = self.decay(x if time_steps else x[0])
            if backend == "reference":
                x_seq = x.expand(time_steps, *x.shape) if time_steps else x
                return multi_step(x_seq, k, *self._options())
            return kernels.fused_multi_step(x, k, *self._options(), backend=backend, time_steps=time_steps)
        if self.v is None:
            self.v = torch.full_like(x, 0.0 if self.v_reset is None else self.v_reset)
        spike, self.v = neuron_step(self.v, x, self.decay(x), *self._options())
        return spike

    def _options(self):
        return self.v_threshold, self.v_reset, self.detach_reset, self.decay_input, self.surrogate

    def reset(self) -> None:
        """Forget the single-step state (and the graph hanging on it)."""
        self.v = None

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

    def decay(self, x):
        return 1 / self.tau

    def extra_repr(self) -> str:
        return f"tau={self.tau}, decay_input={self.decay_input}, " + super().extra_repr()


class IF(BaseNode):
    """Integrate-and-fire without leak: ``H[t] = V[t-1] + X[t]`` (``k = 0``)."""

    decay_input = False

    def decay(self, x):
        return 0.0


NEURONS = {"plif": PLIF, "lif": LIF, "if": IF}


def reset_state(module: nn.Module) -> None:
    """Reset the single-step state of every neuron inside ``module`` (any module tree)."""
    for m in module.modules():
        if isinstance(m, BaseNode):
            m.reset()


def neuron_factory(
    kind: str = "plif",
    tau: float = 2.0,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    detach_reset: bool = True,
    decay_input: bool = True,
    surrogate: str = "atan",
    surrogate_alpha: float | None = None,
    per_channel: bool = False,
    backend: str = "auto",
):
    """A function ``make(channels) -> neuron`` that builds one fresh neuron per spiking layer.

    This is how networks take their neuron from plain config values: ``kind`` is ``plif``, ``lif``
    or ``if`` (IF ignores ``tau`` and ``decay_input``); the surrogate is named as in
    :data:`plifnet.surrogates.SURROGATES`; ``backend`` as in :class:`BaseNode`. Bad values fail here,
    before any layer is built.
    """
    if kind not in NEURONS:
        raise ValueError(f"unknown neuron {kind!r}; choose one of {sorted(NEURONS)}")
    if per_channel and kind != "plif":
        raise ValueError(f"per_channel applies to the learnable tau of 'plif' only, not to {kind!r}")
    if kind != "if":
        _check_tau(tau)
    spike_fn = make_surrogate(surrogate, surrogate_alpha)
    common = dict(v_threshold=v_threshold, v_reset=v_reset, detach_reset=detach_reset, surrogate=spike_fn,
                  backend=backend)

    def make(channels: int) -> BaseNode:
        if kind == "plif":
            return PLIF(tau, decay_input=decay_input, per_channel=per_channel, channels=channels, **common)
        if kind == "lif":
            return LIF(tau, decay_input=decay_input, **common)
        return IF(**common)

    make(1)  # validate the options once (e.g. v_reset >= v_threshold) before any network is built
    return make
