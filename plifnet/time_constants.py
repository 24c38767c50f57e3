"""Learnable time constants: how they are parametrised, bounded and first drawn.

A time constant ``tau`` (in time steps) is learnt through an unbounded parameter ``w``; the leak that a
step uses is ``k = 1 / tau``::

    tau = tau_min + exp(-w)                               no upper bound (tau_max None)
    tau = tau_min + (tau_max - tau_min) * sigmoid(-w)     bounded above by tau_max

so that every value of ``w`` gives a tau inside ``(tau_min, tau_max)``: a bound holds after any step of any
optimiser, by construction, and nothing is clipped. With ``tau_min = 1`` and no upper bound this is PLIF's
``k = sigmoid(w)`` (Fang et al. 2021), computed as that.

A per-neuron (or per-channel) tau starts from a distribution (``tau_init``) around the option ``tau``, with a
spread ``s`` (``tau_spread``)::

    constant    tau
    uniform     U(tau (1 - s), tau (1 + s))
    lognormal   exp(N(ln tau, s^2))                median tau, log-standard deviation s
    gamma       Gamma(shape 1/s^2, scale tau s^2)  mean tau, coefficient of variation s

(Perez-Nieves et al. 2021 found learnt time constants spread like gamma and log-normal distributions.) A draw
outside the bounds is drawn again: the distribution is truncated to ``(tau_min, tau_max)``. Draws use torch's
global generator, which ``seed_everything`` seeds: a run with a fixed seed starts from the same taus.
"""

from __future__ import annotations

import math

import torch

from plifnet.errors import UserError

DISTRIBUTIONS = ("constant", "uniform", "lognormal", "gamma")
REDRAWS = 100  # rounds of drawing again before a distribution that the bounds cut off almost wholly is refused


def leak(w: torch.Tensor, tau_min: float = 1.0, tau_max: float | None = None) -> torch.Tensor:
    """``k = 1 / tau`` of the parameter ``w`` (differentiable)."""
    if tau_max is None:
        return torch.sigmoid(w) if tau_min == 1 else 1 / (tau_min + torch.exp(-w))
    return 1 / (tau_min + (tau_max - tau_min) * torch.sigmoid(-w))


def parameter(tau: torch.Tensor, tau_min: float = 1.0, tau_max: float | None = None) -> torch.Tensor:
    """The ``w`` whose tau is ``tau`` (the inverse of :func:`leak`), in float64."""
    tau = torch.as_tensor(tau, dtype=torch.float64)
    if tau_max is None:
        return -torch.log(tau - tau_min)
    fraction = (tau - tau_min) / (tau_max - tau_min)
    return torch.log((1 - fraction) / fraction)  # sigmoid(-w) = fraction


def check_bounds(name: str, tau: float, tau_min: float, tau_max: float | None) -> None:
    if not tau_min >= 1:
        raise UserError(f"tau_min must be >= 1 (a leak k = 1/tau above 1 overshoots), got {tau_min}")
    if not (tau > tau_min and (tau_max is None or tau < tau_max)):
        upper = "" if tau_max is None else f" and below tau_max={tau_max}"
        raise UserError(f"{name} must lie above tau_min={tau_min}{upper} (its bounds), got {tau}")


def draw(
    shape: tuple[int, ...],
    tau: float,
    *,
    distribution: str = "constant",
    spread: float = 0.0,
    tau_min: float = 1.0,
    tau_max: float | None = None,
) -> torch.Tensor:
    """Initial time constants ``[*shape]`` in float64, from ``distribution`` around ``tau``, inside the bounds."""
    if distribution == "constant":
        return torch.full(shape, float(tau), dtype=torch.float64)
    sampler = _sampler(distribution, float(tau), float(spread))
    values = sampler.sample(shape)
    for _ in range(REDRAWS):
        outside = (values <= tau_min) | (values >= (math.inf if tau_max is None else tau_max))
        if not outside.any():
            return values
        values[outside] = sampler.sample((int(outside.sum()),))
    raise UserError(
        f"the {distribution} distribution around tau={tau} with spread {spread} lies almost wholly outside the "
        f"bounds ({tau_min}, {tau_max}): widen the bounds or narrow the spread"
    )


def _sampler(distribution: str, tau: float, spread: float) -> torch.distributions.Distribution:
    d = torch.distributions
    one = torch.tensor(1.0, dtype=torch.float64)
    if distribution == "uniform":
        return d.Uniform(one * tau * (1 - spread), one * tau * (1 + spread))
    if distribution == "lognormal":
        return d.LogNormal(one * math.log(tau), one * spread)
    if distribution == "gamma":
        return d.Gamma(one / spread**2, one / (tau * spread**2))  # torch's Gamma takes the rate, 1 / scale
    raise UserError(f"tau_init must be one of {DISTRIBUTIONS}, got {distribution!r}")
