"""Per-neuron time constants (plifnet/time_constants.py): each initial distribution fits the distribution asked
for (Kolmogorov-Smirnov against scipy's), bounds hold by construction after 100 steps at a large learning rate,
PLIF's default parametrisation is unchanged (k = sigmoid(w)), and a per-neuron tau reaches every code path."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from plifnet import time_constants
from plifnet.adaptive import ALIF, AdLIF
from plifnet.errors import UserError
from plifnet.neurons import PLIF
from plifnet.options import NeuronOptions

CHANNELS = 4000


@pytest.mark.parametrize(
    "distribution, expected",
    [
        ("uniform", stats.uniform(loc=10 * 0.6, scale=10 * 0.8)),  # U(tau (1 - s), tau (1 + s)), s = 0.4
        ("lognormal", stats.lognorm(s=0.4, scale=10)),  # median tau, log-sd s
        ("gamma", stats.gamma(a=1 / 0.4**2, scale=10 * 0.4**2)),  # mean tau, coefficient of variation s
    ],
)
@pytest.mark.parametrize("neuron", [PLIF, ALIF])
def test_the_initial_taus_follow_the_distribution_asked_for(distribution, expected, neuron):
    torch.manual_seed(0)
    layer = neuron(tau=10.0, tau_init=distribution, tau_spread=0.4, per_channel=True, channels=CHANNELS)
    taus = layer.tau.double().numpy()
    assert stats.kstest(taus, expected.cdf).pvalue > 0.01
    assert stats.kstest(taus, stats.norm(10, 4).cdf).pvalue < 1e-6  # the test tells distributions apart
    if neuron is ALIF:  # the adaptation's tau: the same family around tau_adapt
        scaled = layer.tau_adapt.double().numpy() / (layer.options.tau_adapt / 10)
        assert stats.kstest(scaled, expected.cdf).pvalue > 0.01


def test_a_distribution_is_truncated_to_the_bounds():
    torch.manual_seed(1)
    layer = PLIF(tau=10.0, tau_init="gamma", tau_spread=0.5, tau_min=6.0, tau_max=14.0, per_channel=True, channels=3000)
    taus = layer.tau.double().numpy()
    assert taus.min() > 6 and taus.max() < 14
    gamma = stats.gamma(a=4, scale=2.5)
    truncated = lambda x: (gamma.cdf(x) - gamma.cdf(6)) / (gamma.cdf(14) - gamma.cdf(6))  # noqa: E731
    assert stats.kstest(taus, truncated).pvalue > 0.01


def test_a_constant_tau_is_plifs_parametrisation_bit_for_bit():
    layer = PLIF(tau=3.0, per_channel=True, channels=5)
    assert torch.equal(layer.w.detach(), torch.full((5,), -math.log(2.0)))
    x = torch.rand(2, 5)
    assert torch.equal(layer.decay(x), torch.sigmoid(layer.w).view(-1))  # k = sigmoid(w), as in the paper


@pytest.mark.parametrize("bounds", [(1.0, None), (2.0, None), (2.0, 30.0)])
def test_the_parameter_and_the_leak_are_inverse(bounds):
    taus = torch.tensor([2.5, 5.0, 17.0, 29.0], dtype=torch.float64)
    k = time_constants.leak(time_constants.parameter(taus, *bounds), *bounds)
    torch.testing.assert_close(1 / k, taus)


@pytest.mark.parametrize("neuron", [PLIF, ALIF, AdLIF])
@pytest.mark.parametrize("push", [1.0, -1.0])
def test_bounds_hold_after_100_steps_at_a_large_learning_rate(neuron, push):
    torch.manual_seed(2)
    layer = neuron(tau=5.0, tau_min=2.0, tau_max=8.0, per_channel=True, channels=16, v_threshold=0.3)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e4)
    x = torch.rand(20, 8, 16) * 2
    for _ in range(100):
        optimizer.zero_grad()
        spikes = layer(x)
        (push * (spikes.mean() + (1 / time_constants.leak(layer.w, 2.0, 8.0)).sum())).backward()
        optimizer.step()
    assert layer.w.detach().isfinite().all()
    tau = layer.tau
    assert (tau >= 2.0).all() and (tau <= 8.0).all()
    assert (tau - 5.0).abs().max() > 1  # it moved: towards a bound
    if neuron is not PLIF:
        assert (layer.tau_adapt >= 1.0).all()


def test_out_of_bounds_and_unknown_distributions_are_refused_in_one_line():
    with pytest.raises(UserError, match="tau must lie above tau_min=2.0 and below tau_max=4.0 .* got 5.0"):
        NeuronOptions(tau=5.0, tau_min=2.0, tau_max=4.0)
    with pytest.raises(UserError, match="tau_init must be one of .*'gamma'.* got 'normal'"):
        NeuronOptions(tau_init="normal", per_channel=True)
    with pytest.raises(UserError, match="tau_init 'gamma' draws one tau per channel: it needs per_channel true"):
        NeuronOptions(tau_init="gamma")
    with pytest.raises(UserError, match="lies almost wholly outside the bounds"):
        PLIF(tau=2.2, tau_init="lognormal", tau_spread=50, tau_min=2.0, tau_max=2.5, per_channel=True, channels=40)


def test_a_per_neuron_tau_is_the_same_on_every_code_path():
    """The fused CPU kernel and the reference loop both take the drawn per-neuron tau (a parallel neuron of a peer
    once ignored per-neuron decay)."""
    pytest.importorskip("numba")
    torch.manual_seed(3)
    x = torch.rand(30, 6, 64) * 1.5
    runs = {}
    for backend in ("reference", "cpu"):
        torch.manual_seed(4)
        layer = PLIF(tau=6.0, tau_init="lognormal", tau_spread=0.6, per_channel=True, channels=64, backend=backend)
        xb = x.clone().requires_grad_()
        spikes = layer(xb)
        (spikes * torch.linspace(-1, 1, 64)).sum().backward()
        runs[backend] = (spikes, xb.grad, layer.w.grad, layer.tau)
    assert np.unique(runs["cpu"][3].numpy()).size == 64  # 64 different taus
    assert torch.equal(runs["reference"][0], runs["cpu"][0])
    for got, want in zip(runs["cpu"][1:3], runs["reference"][1:3]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
