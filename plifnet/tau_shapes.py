"""Which shape a layer's time constants take: normal, log-normal or gamma, fitted by maximum likelihood.

Perez-Nieves et al. 2021 found that per-neuron time constants learnt on sequence tasks spread like the brain's:
skewed to the right, closer to a gamma or a log-normal distribution than to a normal one. :func:`fit` fits the
three families to one layer's time constants ``tau [neurons]`` (in time steps, all > 0) and says which is the most
likely. Each family has two parameters, so ranking them by AIC is ranking them by their log-likelihood::

    normal      mu = mean(tau), sigma^2 = mean((tau - mu)^2)
    lognormal   the normal fit of ln(tau)                         (a density over tau: ln-likelihood - mean(ln tau))
    gamma       shape a: ln(a) - digamma(a) = ln(mean(tau)) - mean(ln tau) (Newton's method from Minka's start),
                scale mean(tau) / a

The log-likelihoods are per value (the mean over the layer's neurons), so that layers of different widths read
alike. Time constants that all start at one value (``tau_init constant``) have no shape: ``best`` is "constant".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FAMILIES = ("normal", "lognormal", "gamma")
NEWTON_STEPS = 6  # Minka's start is within 1.5% of the gamma shape: a few steps reach float64 rounding


@dataclass(frozen=True)
class Shape:
    """The time constants of one layer at one moment, summarised: their count, mean, median, 5% and 95%
    quantiles, skewness (the third standardised moment: 0 for a normal distribution, 2/sqrt(a) for a gamma one)
    and the log-likelihood per value of each family's best fit (``None`` where the values are all equal)."""

    count: int
    mean: float
    median: float
    q5: float
    q95: float
    skewness: float
    log_likelihood: dict[str, float] | None
    best: str  # the family of the highest log-likelihood, or "constant"


def fit(tau: torch.Tensor) -> Shape:
    """The :class:`Shape` of the time constants ``tau`` (any shape, every value finite and > 0)."""
    x = tau.detach().flatten().double().cpu()
    if x.numel() == 0 or not torch.isfinite(x).all() or (x <= 0).any():
        raise ValueError(f"time constants must be finite and > 0 to have a shape; got {x.numel()} values")
    mean, std = x.mean().item(), x.std(correction=0).item()
    quantiles = torch.quantile(x, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist()
    summary = dict(count=x.numel(), mean=mean, median=quantiles[1], q5=quantiles[0], q95=quantiles[2])
    if std <= 1e-12 * mean:
        return Shape(**summary, skewness=0.0, log_likelihood=None, best="constant")
    skewness = (((x - mean) / std) ** 3).mean().item()
    log_x = x.log()
    likelihood = {
        "normal": normal_log_likelihood(x),
        "lognormal": normal_log_likelihood(log_x) - log_x.mean().item(),  # d ln(tau) / d tau = 1 / tau
        "gamma": gamma_log_likelihood(x),
    }
    return Shape(**summary, skewness=skewness, log_likelihood=likelihood, best=max(likelihood, key=likelihood.get))


def normal_log_likelihood(x: torch.Tensor) -> float:
    """The mean log-density of ``x`` under its maximum-likelihood normal distribution."""
    variance = x.var(correction=0).item()
    return -0.5 * math.log(2 * math.pi * variance) - 0.5


def gamma_shape(x: torch.Tensor) -> float:
    """The maximum-likelihood shape ``a`` of a gamma distribution of ``x`` (> 0, not all equal)."""
    s = math.log(x.mean().item()) - x.log().mean().item()  # > 0 by Jensen's inequality
    a = torch.tensor((3 - s + math.sqrt((s - 3) ** 2 + 24 * s)) / (12 * s), dtype=torch.float64)
    for _ in range(NEWTON_STEPS):  # the root of f(a) = ln(a) - digamma(a) - s
        a = a - (a.log() - torch.special.digamma(a) - s) / (1 / a - torch.special.polygamma(1, a))
    return a.item()


def gamma_log_likelihood(x: torch.Tensor) -> float:
    """The mean log-density of ``x`` under its maximum-likelihood gamma distribution."""
    a = gamma_shape(x)
    scale = x.mean().item() / a
    return (a - 1) * x.log().mean().item() - a - a * math.log(scale) - math.lgamma(a)
