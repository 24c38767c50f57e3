"""Example plug-ins for plifnet: a neuron model and a surrogate gradient, declared as entry points
(``pyproject.toml``) so that ``--model.net.neuron alif`` and ``--model.net.options.surrogate gaussian`` find them."""

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
        V[t] = H[t] * (1 - S[t]) + V_reset * S[t]               (PLIF's reset)
        A[t] = rho * A[t-1] + S[t],   rho = exp(-1 / tau_adapt)

    Only the threshold differs from PLIF: its state ``A`` (:meth:`initial_state`), the threshold it
    gives (:meth:`threshold`) and its update after the spike (:meth:`reset_membrane`, after PLIF's).
    PLIF's charge, fire and reset are inherited, and the whole step runs compiled.
    """

    def __init__(self, *, beta: float = 0.2, tau_adapt: float = 20.0, **options):
        super().__init__(**options)
        if self.v_reset is None:
            raise ValueError("ALIF uses the hard reset: v_reset must be a number")
        self.beta, self.tau_adapt = float(beta), float(tau_adapt)
        self.rho = math.exp(-1 / self.tau_adapt)

    def initial_state(self, x):
        """PLIF's ``V`` and the threshold's raise ``A = 0``, both ``[N, ...]``."""
        return dict(super().initial_state(x), a=torch.zeros_like(x))

    def threshold(self, state):
        """``v_threshold + beta * A[t-1]``, ``[N, ...]``."""
        return self.v_threshold + self.beta * state["a"]

    def reset_membrane(self, state, spike):
        """PLIF's reset of ``V``, and ``A[t] = rho * A[t-1] + S[t]``."""
        return dict(super().reset_membrane(state, spike), a=self.rho * state["a"] + spike)

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
