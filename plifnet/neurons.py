"""Spiking neurons: PLIF (learnable tau), LIF (fixed tau) and IF (no leak), and the hooks to write your own.

One step of every neuron here (Fang et al., ICCV 2021, eqs. 3-6; docs/paper.md section 1), one hook each::

    charge  H[t] = V[t-1] + k * (X[t] - (V[t-1] - V_reset))      decay_input=True  (default)
            H[t] = V[t-1] - k * (V[t-1] - V_reset) + X[t]        decay_input=False
    fire    S[t] = heaviside(H[t] - v_threshold)                 heaviside(0) = 1
    reset   V[t] = H[t] * (1 - S[t]) + V_reset * S[t]            hard reset (v_reset is a number)
            V[t] = H[t] - v_threshold * S[t]                     soft reset (v_reset=None)

with ``k = 1 / tau``. PLIF learns ``k = sigmoid(w)`` through one scalar ``w`` per layer (or one per
channel), so ``tau = 1 + exp(-w) > 1`` always; LIF keeps ``k`` fixed; IF has ``k = 0`` and charges
``H = V + X``. With soft reset the leak pulls towards 0. ``detach_reset`` stops the gradient through
``S`` in the reset, as in every published run, so that ``dV[t]/dH[t] = 1 - S[t]``. The options
travel as one :class:`~plifnet.options.NeuronOptions`.

Shapes: multi-step input ``[T, N, ...]`` gives spikes ``[T, N, ...]`` and starts every call from
the initial state; single-step input ``[N, ...]`` keeps the state between calls until :meth:`reset`.

A neuron of your own subclasses :class:`BaseNode` and overrides the hooks that differ
(:meth:`~BaseNode.initial_state`, :meth:`~BaseNode.charge`, :meth:`~BaseNode.threshold`,
:meth:`~BaseNode.fire`, :meth:`~BaseNode.reset_membrane`; or :meth:`~BaseNode.step`, all three at once).

Backends (multi-step, :data:`plifnet.options.BACKENDS`): ``reference`` runs :meth:`BaseNode.step` once
per time step in PyTorch; ``cpu`` and ``triton`` are fused kernels of the built-in step
(:mod:`plifnet.kernels`); ``compile`` runs the neuron's own hooks as one compiled multi-step graph
(:mod:`plifnet.kernels.compiled`). ``auto`` (default) takes the fused kernel of the input's device
for the built-in step, and the compiled graph for a neuron with hooks of its own.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from plifnet import kernels, time_constants
from plifnet.contract import Dynamics, is_neuron, reset_state  # noqa: F401  (reset_state: plifnet's public name)
from plifnet.equations import leaky_charge, reset_potential  # noqa: F401  (adaptive.py and readers take them here)
from plifnet.errors import UserError
from plifnet.kernels import compiled
from plifnet.kernels.compiled import run_steps
from plifnet.kernels.recurrent import recurrent_multi_step
from plifnet.options import NeuronOptions
from plifnet.surrogates import Surrogate

STEP_MODES = ("multi", "single")


def neuron_step(v, x, k, *, options: NeuronOptions):
    """One time step of the built-in equations above: ``(S[t], V[t])`` from ``V[t-1]`` and ``X[t]``.
    What the fused kernels compute, operation by operation."""
    h = leaky_charge(v, x, k, options=options)
    spike = options.surrogate(h - options.v_threshold)
    return spike, reset_potential(h, spike.detach() if options.detach_reset else spike, options=options)


def multi_step(x_seq, k, *, options: NeuronOptions):
    """Run :func:`neuron_step` over ``x_seq [T, N, ...]`` from ``V[-1] = V_reset``; returns spikes ``[T, N, ...]``.

    This is the plain reference: one autograd node per operation per step.
    """
    v = torch.full_like(x_seq[0], options.rest)
    return run_steps(x_seq, v, lambda v, x: neuron_step(v, x, k, options=options))


class BaseNode(nn.Module):
    """A spiking neuron layer built from hooks; PLIF, LIF and IF are its subclasses.

    Options come as one :class:`~plifnet.options.NeuronOptions` (``options=``, what
    :func:`neuron_factory` passes) or as its fields by keyword (``PLIF(tau=3.0, v_threshold=0.5)``);
    they are ``self.options`` (and ``self.v_threshold``, ...).
    ``channels``: the layer's width (dim 1 of a step's input), for a per-channel tau or state.
    ``step_mode``: ``multi`` (``[T, N, ...]`` per call) or ``single`` (``[N, ...]``, state kept).

    The state is a dict of tensors shaped like one step's input ``[N, ...]``; ``"v"`` is the membrane
    potential (``V`` before the charge, ``H`` after it). One step is
    ``charge`` -> ``fire`` -> ``reset_membrane``; a new neuron overrides only the hooks that differ.
    By default its leak is ``k = 1/tau`` (:meth:`decay`), as LIF's.

    Neurons whose hooks are all BaseNode's run on the fused kernels; a neuron with hooks of its own
    runs them compiled (``backend="compile"``, chosen by ``auto``), and where they cannot be compiled,
    on the reference path with one warning that says why.
    """

    per_channel_tau = False  # whether options.per_channel applies (PLIF)

    def __init__(
        self,
        *,
        tau: float = 2.0,
        v_threshold: float = 1.0,
        v_reset: float | None = 0.0,
        detach_reset: bool = True,
        decay_input: bool = True,
        surrogate: Surrogate | str = "atan",
        per_channel: bool = False,
        backend: str = "auto",
        tau_init: str = "constant",
        tau_spread: float = 0.5,
        tau_min: float = 1.0,
        tau_max: float | None = None,
        tau_adapt: float = 200.0,
        adaptation: float = 1.8,
        options: NeuronOptions | None = None,
        channels: int | None = None,
        step_mode: str = "multi",
    ):
        # The fields are spelled out (not **changes) so that a config's init_args, and a reader, see them.
        super().__init__()
        if step_mode not in STEP_MODES:
            raise UserError(f"step_mode must be one of {STEP_MODES}, got {step_mode!r}")
        given = NeuronOptions(
            tau=tau,
            v_threshold=v_threshold,
            v_reset=v_reset,
            detach_reset=detach_reset,
            decay_input=decay_input,
            surrogate=surrogate,
            per_channel=per_channel,
            backend=backend,
            tau_init=tau_init,
            tau_spread=tau_spread,
            tau_min=tau_min,
            tau_max=tau_max,
            tau_adapt=tau_adapt,
            adaptation=adaptation,
        )
        if options is not None and given != NeuronOptions():
            raise UserError(
                f"{type(self).__name__}: give the options as options=NeuronOptions(...) or field by field "
                f"(tau=..., v_threshold=...), not both"
            )
        self.options = given if options is None else options
        if self.options.per_channel and not self.per_channel_tau:
            raise UserError(
                f"per_channel applies to neurons with a per-channel tau (plif, alif, adlif), not to {type(self).__name__}"
            )
        self.channels = channels
        self.step_mode = step_mode
        self.state: dict | None = None  # single-step state after the last step; None: initial_state

    # The options as attributes: what the neuron contract (v_threshold) and a reader look for.
    v_threshold = property(lambda self: self.options.v_threshold)
    v_reset = property(lambda self: self.options.v_reset)
    detach_reset = property(lambda self: self.options.detach_reset)
    decay_input = property(lambda self: self.options.decay_input)
    surrogate = property(lambda self: self.options.surrogate)
    backend = property(lambda self: self.options.backend)

    @property
    def v(self) -> torch.Tensor | None:
        """Single-step mode: the membrane potential ``V[t-1]`` kept for the next call (None after a reset)."""
        return None if self.state is None else self.state["v"]

    # --- the hooks: one step is charge -> fire -> reset_membrane --------------------------------------

    def decay(self, x: torch.Tensor) -> torch.Tensor | float:
        """The leak ``k = 1/tau``, shaped to broadcast over a step's input ``x [N, ...]`` (a number, a
        scalar tensor, or ``[C, 1, ...]`` per channel). Computed once per multi-step call."""
        return 1 / self.options.tau

    def initial_state(self, x: torch.Tensor) -> dict:
        """The state before the first step, each entry shaped like one step's input ``x [N, ...]``:
        ``{"v": V_reset}`` (0 for the soft reset). Add entries for more state variables."""
        return {"v": torch.full_like(x, self.options.rest)}

    def charge(self, state: dict, x: torch.Tensor, k) -> dict:
        """``H[t] = V[t-1] + k (X[t] - (V[t-1] - V_reset))`` (or the ``decay_input=False`` form) into
        ``state["v"]``; ``x [N, ...]`` is the step's input, ``k`` the leak of :meth:`decay`."""
        return dict(state, v=leaky_charge(state["v"], x, k, options=self.options))

    def threshold(self, state: dict) -> torch.Tensor | float:
        """The threshold that ``H[t]`` is compared with: ``v_threshold`` (a number or a tensor ``[N, ...]``)."""
        return self.options.v_threshold

    def fire(self, state: dict) -> torch.Tensor:
        """``S[t] = heaviside(H[t] - threshold)``, with the surrogate's gradient; returns ``[N, ...]``."""
        return self.options.surrogate(state["v"] - self.threshold(state))

    def reset_membrane(self, state: dict, spike: torch.Tensor) -> dict:
        """``V[t] = H[t] (1 - S[t]) + V_reset S[t]`` (hard) or ``H[t] - v_threshold S[t]`` (soft) into
        ``state["v"]``; ``spike`` is ``S[t]`` as the reset sees it (detached with ``detach_reset``).
        (Not ``reset()``: that forgets the state between batches.)"""
        return dict(state, v=reset_potential(state["v"], spike, options=self.options))

    def step(self, state: dict, x: torch.Tensor, k) -> tuple[torch.Tensor, dict]:
        """One time step, ``(S[t], state[t])`` from ``state[t-1]`` and ``X[t] [N, ...]``: the three hooks."""
        state = self.charge(state, x, k)
        spike = self.fire(state)
        return spike, self.reset_membrane(state, spike.detach() if self.options.detach_reset else spike)

    @property
    def own_hooks(self) -> list[str]:
        """The step hooks this neuron's class overrides (none: the built-in step, which the fused kernels compute)."""
        return [name for name in HOOKS if getattr(type(self), name) is not getattr(BaseNode, name)]

    # --- running ------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, time_steps: int | None = None, feedback: Callable | None = None) -> torch.Tensor:
        """Multi-step: ``x [T, N, ...]``, or with ``time_steps`` one input ``x [N, ...]`` applied at each
        of ``time_steps`` steps; returns spikes ``[T, N, ...]``. Single-step: ``x [N, ...]``.
        ``feedback``: a recurrent connection (:class:`plifnet.sequences.Recurrent`), a function of the
        previous step's spikes ``S[t-1] [N, F]`` (``S[-1] = 0``) added to each step's input ``X[t]``."""
        if time_steps is not None and (self.step_mode != "multi" or time_steps < 1):
            raise UserError(f"time_steps (got {time_steps}) needs step_mode='multi' and must be >= 1")
        if feedback is not None and (self.step_mode != "multi" or time_steps is not None):
            raise UserError("feedback needs step_mode='multi' and an input per step x [T, N, F]")
        if self.step_mode == "single":
            if self.state is None:
                self.state = self.initial_state(x)
            spike, self.state = self.step(self.state, x, self.decay(x))
            return spike
        if x.dim() < (1 if time_steps else 2):
            raise UserError(
                f"{type(self).__name__}: multi-step input must be [T, N, ...] (or [N, ...] with "
                f"time_steps), got shape {tuple(x.shape)}"
            )
        k = self.decay(x if time_steps else x[0])
        if feedback is not None:  # each step's input depends on the last step's spikes
            fused = (
                not self.own_hooks
                and self.options.backend == "auto"
                and x.dtype != torch.float64  # float64: the reference, exact per step
                and isinstance(feedback, nn.Linear)
                and feedback.bias is None
            )
            if fused:
                return recurrent_multi_step(x, feedback, k, options=self.options)
            return self._recurrent(x, k, feedback)
        backend = self._backend(x)
        if backend in ("cpu", "triton"):
            return kernels.fused_multi_step(x, k, options=self.options, backend=backend, time_steps=time_steps)
        if backend == "compile":
            spikes = compiled.multi_step(self, x, k, time_steps=time_steps)
            if spikes is not None:
                return spikes
        # half precision is computed in float32 here too, as the kernels and the compiled step do
        x_seq = x.expand(time_steps, *x.shape) if time_steps else x
        x_seq = x_seq.float() if x.dtype in (torch.float16, torch.bfloat16) else x_seq
        spikes = run_steps(x_seq, self.initial_state(x_seq[0]), lambda state, x_t: self.step(state, x_t, k))
        return spikes.to(x.dtype)

    def _recurrent(self, x: torch.Tensor, k, feedback: Callable) -> torch.Tensor:
        """Spikes ``[T, N, F]`` of the step loop with ``feedback(S[t-1])`` added to ``X[t]`` (in float32 for half
        precision, the feedback given the spikes in the input's dtype)."""

        def step(carried, x_t):
            state, spike = carried
            spike, state = self.step(state, x_t + feedback(spike.to(x.dtype)), k)
            return spike, (state, spike)

        x_seq = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return run_steps(x_seq, (self.initial_state(x_seq[0]), torch.zeros_like(x_seq[0])), step).to(x.dtype)

    def _backend(self, x: torch.Tensor) -> str:
        """What runs a multi-step call on ``x``: a fused kernel, ``compile`` or ``reference``."""
        requested, own = self.options.backend, self.own_hooks
        if not own:
            fused = kernels.resolve(x, options=self.options)
            if fused != "reference" or requested == "reference":
                return fused  # the built-in step has no fused form here (a plug-in surrogate, float64, ...): compile it
        elif requested in ("cpu", "triton"):
            raise UserError(
                f"backend {requested!r} fuses the built-in step only, and {type(self).__name__} overrides "
                f"{', '.join(own)}: use backend 'auto' (compiled) or 'reference'"
            )
        if x.dtype == torch.float64 and requested == "compile":
            raise UserError("backend 'compile' computes in float32; use 'reference' (or 'auto') for float64 input")
        if requested == "reference" or x.dtype == torch.float64:  # float64: a check, exact per step
            return "reference"
        return "compile"

    def reset(self) -> None:
        """Forget the single-step state (and the graph hanging on it)."""
        self.state = None

    @contextlib.contextmanager
    def recording(self):
        """Within it, every step keeps what the surrogate is given, ``H[t] - threshold[t]`` (the membrane against
        its threshold, before the reset, an adaptive threshold included), for :meth:`recorded`; the steps run on
        the reference loop, whose spikes the fused kernels equal. Figures (:mod:`plifnet.probe`) read it."""
        options, self._recorder = self.options, _Recorder(surrogate=self.options.surrogate)
        self.options = options.replace(surrogate=self._recorder, backend="reference")
        try:
            yield
        finally:
            self.options, self._recorder = options, None

    def recorded(self) -> torch.Tensor | None:
        """``H[t] - threshold[t]`` of the calls since the last read, detached: ``[T, N, ...]`` for a multi-step
        call, ``[N, ...]`` for a single step; None outside :meth:`recording`."""
        recorder = getattr(self, "_recorder", None)
        if recorder is None or not recorder.steps:
            return None
        steps, recorder.steps = recorder.steps, []
        return steps[0] if self.step_mode == "single" else torch.stack(steps)

    def leak(self) -> torch.Tensor | float:
        """``k = 1/tau`` as a number or a detached tensor (per channel: ``[C]``), for export."""
        return 1 / self.options.tau

    def dynamics(self) -> Dynamics:
        """This neuron's step as :class:`plifnet.contract.Dynamics`, for NIR export: the built-in step
        with the hard reset only (hooks of its own are equations of its own)."""
        if self.own_hooks:
            raise UserError(
                f"neuron {type(self).__name__} overrides the step ({', '.join(self.own_hooks)}): its own "
                f"equations have no NIR form here (NIR has nodes for PLIF, LIF and IF)"
            )
        if self.v_reset is None:
            raise UserError(
                "the soft reset (v_reset=None, V = H - v_threshold) has no NIR form (NIR's neurons reset "
                "to v_reset); train with a hard reset (v_reset = 0) to export"
            )
        return Dynamics(
            self.leak(), self.decay_input, self.v_threshold, self.v_reset, per_channel=self.options.per_channel
        )

    def extra_repr(self) -> str:
        options = ", ".join(f"{name}={value!r}" for name, value in self.options.as_dict().items())
        return f"{options}, step_mode={self.step_mode!r}"


class _Recorder(Surrogate):
    """A neuron's surrogate that also keeps what it is given, ``H[t] - threshold[t]`` at each step (detached)."""

    def __init__(self, *, surrogate: Surrogate):
        self.inner, self.alpha, self.steps = surrogate, getattr(surrogate, "alpha", 1.0), []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.steps.append(x.detach())
        return self.inner(x)

    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner.derivative(x)


HOOKS = ("initial_state", "charge", "threshold", "fire", "reset_membrane", "step")


class PLIF(BaseNode):
    """Parametric LIF: the leak ``k = sigmoid(w) = 1/tau`` is learned (Fang et al., ICCV 2021).

    ``w`` starts at ``w0 = -ln(tau - 1)`` (tau = 2 gives w0 = 0) and is one scalar shared by every
    neuron and time step of the layer, or one per channel (dim 1 of the per-step input) with
    ``per_channel=True``. Pass ``channels`` with ``per_channel``; without it ``w`` takes its size
    from the first input (run one batch before building the optimizer, as with ``nn.LazyLinear``).
    ``PLIF(tau=...)`` or ``PLIF(options=NeuronOptions(tau=...))``.
    """

    per_channel_tau = True

    def __init__(self, **options):
        super().__init__(**options)
        if self.options.per_channel and self.channels is None:
            self.w = nn.parameter.UninitializedParameter()
        else:
            self.w = nn.Parameter(self.initial_w((self.channels,) if self.options.per_channel else ()))

    def initial_w(self, shape: tuple[int, ...], *, tau: float | None = None, bounds: tuple = ()) -> torch.Tensor:
        """``w`` of taus drawn from ``options.tau_init`` around ``tau`` (default ``options.tau``) within ``bounds``
        (default the options' ``tau_min``, ``tau_max``): float32, ``[*shape]``."""
        o = self.options
        bounds = bounds or (o.tau_min, o.tau_max)
        taus = time_constants.draw(
            shape, o.tau if tau is None else tau, distribution=o.tau_init, spread=o.tau_spread, tau_min=bounds[0],
            tau_max=bounds[1],
        )  # fmt: skip
        return time_constants.parameter(taus, *bounds).float()

    @property
    def tau0(self) -> float:
        """The initial tau (the centre of its distribution, with ``tau_init``)."""
        return self.options.tau

    @property
    def tau(self) -> torch.Tensor:
        """Current tau, detached: a scalar, or ``[C]`` with ``per_channel``."""
        return 1 / self.leak().to(self.w.dtype)

    def leak(self):
        """``k = 1/tau`` in float64: an exported tau exact to w's last bit."""
        return time_constants.leak(self.w.detach().double(), self.options.tau_min, self.options.tau_max)

    def decay(self, x):
        if self.options.per_channel and isinstance(self.w, nn.parameter.UninitializedParameter):
            with torch.no_grad():
                self.w.materialize((x.shape[1],), dtype=x.dtype, device=x.device)
                self.w.copy_(self.initial_w((x.shape[1],)))
        o = self.options
        return channel_leak(self.w, x, tau_min=o.tau_min, tau_max=o.tau_max, per_channel=o.per_channel)


def channel_leak(w: nn.Parameter, x: torch.Tensor, *, tau_min: float, tau_max: float | None, per_channel: bool):
    """``k = 1/tau`` of the parameter ``w``, shaped to broadcast over a step's input ``x [N, C, ...]``."""
    k = time_constants.leak(w, tau_min, tau_max)
    if not per_channel:
        return k
    if x.shape[1] != w.numel():
        raise UserError(f"the layer has {w.numel()} channel taus but the input has {x.shape[1]} channels (dim 1)")
    return k.view(-1, *([1] * (x.dim() - 2)))


class LIF(BaseNode):
    """Leaky integrate-and-fire with a fixed time constant: the paper's baseline (``k = 1/tau``)."""

    @property
    def tau(self) -> float:
        return self.options.tau


class IF(BaseNode):
    """Integrate-and-fire without leak: ``H[t] = V[t-1] + X[t]`` (``k = 0``; ``tau`` and
    ``decay_input`` do not apply: with ``k = 0`` a decayed input would be 0)."""

    def __init__(self, **options):
        super().__init__(**options)
        self.options = self.options.replace(decay_input=False)

    def leak(self):
        return 0.0

    def decay(self, x):
        return 0.0
