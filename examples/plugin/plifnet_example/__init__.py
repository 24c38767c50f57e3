"""Example plug-ins for plifnet: a neuron model and a surrogate gradient, declared as entry points
(``pyproject.toml``) so that ``--model.neuron alif`` and ``--model.surrogate gaussian`` find them."""

from __future__ import annotations

import math

import torch

from plifnet.neurons import PLIF
from plifnet.surrogates import Surrogate

__all__ = ["ALIF", "Gaussian"]


class ALIF(PLIF):
    """PLIF with an adaptive threshold (Bellec et al., NeurIPS 2018, "LSNN"): every spike raises the
    neuron's threshold by ``beta``, and the raise decays with the time constant ``tau_adapt``::

        H[t] = V[t-1] + k * (X[t] - (V[t-1] - V_reset))        (PLIF's charge, learnable k = 1/tau)
        S[t] = heaviside(H[t] - v_threshold - beta * A[t-1])
        V[t] = H[t] * (1 - S[t]) + V_reset * S[t]
        A[t] = rho * A[t-1] + S[t],   rho = exp(-1 / tau_adapt)

    The state is ``(V, A)``; overriding :meth:`step` makes plifnet run these equations on the
    reference path instead of the fused PLIF kernel.
    """

    def __init__(self, tau: float = 2.0, beta: float = 0.2, tau_adapt: float = 20.0, **kwargs):
        super().__init__(tau, **kwargs)
        if self.v_reset is None:
            raise ValueError("ALIF uses the hard reset: v_reset must be a number")
        self.beta, self.tau_adapt = float(beta), float(tau_adapt)
        self.rho = math.exp(-1 / self.tau_adapt)

    def initial_state(self, x):
        return super().initial_state(x), torch.zeros_like(x)

    def step(self, state, x, k):
        v, adaptation = state
        if self.decay_input:
            h = v + k * (x - (v - self.v_reset))
        else:
            h = v - k * (v - self.v_reset) + x
        spike = self.surrogate(h - self.v_threshold - self.beta * adaptation)
        s = spike.detach() if self.detach_reset else spike
        return spike, (h * (1 - s) + self.v_reset * s, self.rho * adaptation + s)

    def extra_repr(self) -> str:
        return f"beta={self.beta}, tau_adapt={self.tau_adapt}, " + super().extra_repr()


class Gaussian(Surrogate):
    """Gaussian surrogate: ``g(x) = alpha / sqrt(2 pi) * exp(-(alpha x)^2 / 2)``, the density of a
    normal distribution of width 1/alpha; primitive ``(1 + erf(alpha x / sqrt 2)) / 2``."""

    def __init__(self, alpha: float = 2.0):
        super().__init__(alpha)

    def derivative(self, x):
        return self.alpha / math.sqrt(2 * math.pi) * torch.exp(-((self.alpha * x) ** 2) / 2)

    def primitive(self, x):
        return (1 + torch.erf(self.alpha * x / math.sqrt(2))) / 2
