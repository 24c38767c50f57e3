"""Adaptive spiking neurons: ALIF (an adapting threshold) and adLIF (an adaptation current), both learning
their membrane and adaptation time constants, per layer or per neuron (``per_channel``).

ALIF (Bellec et al. 2018; Yin, Corradi and Bohte 2021), with ``k = 1/tau``, ``k_a = 1/tau_adapt``::

    H[t]     = V[t-1] + k (X[t] - (V[t-1] - V_reset))           PLIF's charge (or the decay_input=False form)
    theta[t] = v_threshold + adaptation * A[t-1]                 each spike raises the threshold ...
    S[t]     = heaviside(H[t] - theta[t])
    V[t]     = H[t] (1 - S[t]) + V_reset S[t]  (hard)  or  H[t] - theta[t] S[t]  (soft, v_reset=None)
    A[t]     = A[t-1] + k_a (S[t] - A[t-1])                      ... and the raise decays with tau_adapt

adLIF (after Bittar and Garner 2022: an adaptation current ``W`` fed by the membrane and by spikes)::

    W[t] = W[t-1] + k_w (a (V[t-1] - V_reset) - W[t-1]) + b S[t-1]      k_w = 1/tau_adapt
    H[t] = V[t-1] + k (X[t] - W[t] - (V[t-1] - V_reset))
    S[t] = heaviside(H[t] - v_threshold);  V[t]: PLIF's reset

with ``a = tanh(p)`` in (-1, 1) (starts at 0) and ``b = 2 sigmoid(q)`` in (0, 2) (starts at 1), learnt,
bounded by construction as the time constants are (:mod:`plifnet.time_constants`). ``A[-1] = W[-1] = S[-1] = 0``.
The spike that adapts the neuron carries the surrogate gradient (only the reset's is detached, with
``detach_reset``). Both take the options' ``tau_adapt`` (the adaptation's initial tau, drawn from ``tau_init``
like the membrane's; its lower bound is 1); ALIF takes ``adaptation``.

They run the per-step loop of their own ``step`` (the fused kernels and the compiled loop take one leak, and
these neurons have two), but in a recurrent layer on the CPU, where they run fused
(:class:`plifnet.kernels.recurrent.RecurrentALIF`, :class:`~plifnet.kernels.recurrent.RecurrentAdLIF`). Shapes: a step's input ``[N, F]`` (or ``[N, C, ...]`` with a per-channel tau).
"""

from __future__ import annotations

import torch
from torch import nn

from plifnet import time_constants
from plifnet.contract import TimeConstant
from plifnet.errors import UserError
from plifnet.kernels import recurrent
from plifnet.neurons import HOOKS, PLIF, channel_leak, leaky_charge, reset_potential


class Adaptive(PLIF):
    """What ALIF and adLIF share: PLIF's learnt membrane tau (``w``) and a learnt adaptation tau (``w_adapt``)."""

    ADAPT_BOUNDS = (1.0, None)

    def __init__(self, **options):
        super().__init__(**options)
        if self.options.backend not in ("auto", "reference"):  # no fused or compiled form for two leaks yet
            raise UserError(
                f"backend {self.options.backend!r}: {type(self).__name__} runs its step loop in PyTorch; give "
                f"backend 'auto' or 'reference'"
            )
        if isinstance(self.w, nn.parameter.UninitializedParameter):
            self.w_adapt = nn.parameter.UninitializedParameter()
        else:
            self.w_adapt = nn.Parameter(self.initial_w_adapt())

    def initial_w_adapt(self):
        """The adaptation's ``w``, shaped as the membrane's, of taus drawn around ``options.tau_adapt``."""
        return self.initial_w(self.w.shape, tau=self.options.tau_adapt, bounds=self.ADAPT_BOUNDS)

    @property
    def tau_adapt(self):
        """The adaptation's tau in time steps, detached: a scalar, or ``[C]`` with ``per_channel``."""
        return 1 / time_constants.leak(self.w_adapt.detach().double(), *self.ADAPT_BOUNDS).to(self.w_adapt.dtype)

    def time_constants(self) -> dict[str, TimeConstant]:
        return {
            "tau": TimeConstant(self.tau, True, (self.w,)),
            "tau_adapt": TimeConstant(self.tau_adapt, True, (self.w_adapt,)),
        }

    def decay(self, x):
        """``(k, k_adapt)``, each shaped to broadcast over ``x [N, C, ...]``."""
        k = super().decay(x)
        if isinstance(self.w_adapt, nn.parameter.UninitializedParameter):
            self._materialize(self.w_adapt, self.initial_w_adapt())
        tau_min, tau_max = self.ADAPT_BOUNDS
        return k, channel_leak(self.w_adapt, x, tau_min=tau_min, tau_max=tau_max, per_channel=self.options.per_channel)

    @staticmethod
    def _materialize(parameter, value):
        parameter.materialize(value.shape, dtype=value.dtype, device=parameter.device)
        parameter.data.copy_(value)

    def _backend(self, x):
        return "reference"

    fused = None  # the class's fused recurrent layer (plifnet.kernels.recurrent), which runs that class's own step

    def _recurrent(self, x, k, feedback):
        """The fused layer on the CPU for a bias-free recurrent Linear; the loop for a subclass that overrides any
        hook of the step (``step``, ``reset_with``, ...), whose equations the fused kernel would not compute."""
        owner = next(cls for cls in type(self).__mro__ if "fused" in vars(cls))
        own = [name for name in (*HOOKS, "reset_with") if getattr(type(self), name) is not getattr(owner, name)]
        if (
            self.fused is not None
            and not own
            and isinstance(feedback, nn.Linear)
            and feedback.bias is None
            and self.options.backend == "auto"
            and recurrent.fuses(x, self.options)
        ):
            return self.fused(x, feedback, *k, options=self.options)
        return super()._recurrent(x, k, feedback)

    def reset_with(self, h, spike, threshold):
        """PLIF's reset, the soft one subtracting the step's ``threshold``; ``spike`` detached with detach_reset."""
        spike = spike.detach() if self.options.detach_reset else spike
        if self.options.soft_reset:
            return h - threshold * spike
        return reset_potential(h, spike, options=self.options)


class ALIF(Adaptive):
    """Adaptive-threshold LIF (equations in :mod:`plifnet.adaptive`): state ``v`` and ``a``. In a recurrent layer on
    the CPU it runs fused (:class:`plifnet.kernels.recurrent.RecurrentALIF`; ``backend='reference'``: the loop)."""

    fused = staticmethod(recurrent.recurrent_alif)

    def initial_state(self, x):
        return {"v": x.new_full(x.shape, self.options.rest), "a": x.new_zeros(x.shape)}

    def step(self, state, x, k):
        (k, k_adapt), o = k, self.options
        h = leaky_charge(state["v"], x, k, options=o)
        threshold = o.v_threshold + o.adaptation * state["a"]
        spike = o.surrogate(h - threshold)
        a = state["a"] + k_adapt * (spike - state["a"])
        return spike, {"v": self.reset_with(h, spike, threshold), "a": a}


class AdLIF(Adaptive):
    """Adaptive LIF with an adaptation current (equations in :mod:`plifnet.adaptive`): state ``v``, ``w``, ``s``. In a
    recurrent layer on the CPU it runs fused (:class:`plifnet.kernels.recurrent.RecurrentAdLIF`)."""

    def __init__(self, **options):
        super().__init__(**options)
        lazy = isinstance(self.w, nn.parameter.UninitializedParameter)
        self.coupling = nn.parameter.UninitializedParameter() if lazy else nn.Parameter(torch.zeros_like(self.w))
        self.spike_coupling = nn.parameter.UninitializedParameter() if lazy else nn.Parameter(torch.zeros_like(self.w))

    def initial_state(self, x):
        zeros = x.new_zeros(x.shape)
        return {"v": x.new_full(x.shape, self.options.rest), "w": zeros, "s": zeros}

    def decay(self, x):
        k, k_adapt = super().decay(x)
        for parameter in (self.coupling, self.spike_coupling):
            if isinstance(parameter, nn.parameter.UninitializedParameter):
                self._materialize(parameter, self.w.new_zeros(self.w.shape))
        # a and b broadcast as the leaks do, computed once per call with them
        a, b = self.coupling.tanh(), 2 * self.spike_coupling.sigmoid()
        if self.options.per_channel:
            a, b = (value.view(-1, *([1] * (x.dim() - 2))) for value in (a, b))
        return k, k_adapt, a, b

    fused = staticmethod(recurrent.recurrent_adlif)

    def step(self, state, x, k):
        (k, k_adapt, a, b), o = k, self.options
        w = state["w"] + k_adapt * (a * (state["v"] - o.rest) - state["w"]) + b * state["s"]
        h = leaky_charge(state["v"], x - w, k, options=o)
        spike = o.surrogate(h - o.v_threshold)
        return spike, {"v": self.reset_with(h, spike, o.v_threshold), "w": w, "s": spike}
