"""Neurons against an independent step-by-step reference and against hand computation.

The reference below writes docs/paper.md section 1 directly and gets the surrogate gradient without any
custom autograd Function: ``S = step(x) + primitive(x) - primitive(x).detach()`` has the exact step
as its value and the surrogate as its derivative.
"""

import itertools
import math

import pytest
import torch

from plifnet.factory import neuron_factory
from plifnet.neurons import IF, LIF, PLIF, reset_state
from plifnet.surrogates import SURROGATES, ATan, surrogate


def reference(x_seq, k, v_th, v_reset, detach_reset, decay_input, spike_fn):
    rest = 0.0 if v_reset is None else v_reset
    v = torch.full_like(x_seq[0], rest)
    out = []
    for t in range(x_seq.shape[0]):
        x = x_seq[t]
        h = v + k * (x - (v - rest)) if decay_input else v - k * (v - rest) + x
        z = h - v_th
        s = (z >= 0).to(z.dtype) + (spike_fn.primitive(z) - spike_fn.primitive(z).detach())
        s_reset = s.detach() if detach_reset else s
        v = h - v_th * s_reset if v_reset is None else h * (1 - s_reset) + v_reset * s_reset
        out.append(s)
    return torch.stack(out)


def make(kind, tau, v_reset, detach_reset, decay_input, spike_fn):
    options = dict(v_reset=v_reset, detach_reset=detach_reset, surrogate=spike_fn)
    if kind == "plif":
        return PLIF(tau=tau, decay_input=decay_input, **options)
    if kind == "lif":
        return LIF(tau=tau, decay_input=decay_input, **options)
    return IF(**options)


def inputs(shape, dtype=torch.float64):
    x = torch.randn(shape, dtype=dtype) * 1.5 + 0.6
    x.view(-1)[::7] = 2.0  # with k = 1/2 and V = 0 this lands H exactly on the threshold
    return x


OPTIONS = list(itertools.product(["plif", "lif", "if"], [0.0, None, -0.3], [True, False], [True, False]))


@pytest.mark.parametrize("kind,v_reset,detach_reset,decay_input", OPTIONS)
@pytest.mark.parametrize("spike_name", ["atan", "sigmoid", "piecewise_quadratic"])
def test_matches_reference_values_and_gradients(kind, v_reset, detach_reset, decay_input, spike_name):
    spike_fn = surrogate(spike_name)
    neuron = make(kind, 2.0 if kind != "lif" else 3.0, v_reset, detach_reset, decay_input, spike_fn).double()
    x = inputs((6, 3, 4, 5)).requires_grad_()
    spikes = neuron(x)
    grad_out = torch.randn_like(spikes)
    (spikes * grad_out).sum().backward()

    x_ref = x.detach().clone().requires_grad_()
    if kind == "plif":
        w_ref = neuron.w.detach().clone().requires_grad_()
        k = torch.sigmoid(w_ref)
    else:
        k = 1 / neuron.tau if kind == "lif" else 0.0
    ref = reference(x_ref, k, 1.0, v_reset, detach_reset, decay_input and kind != "if", spike_fn)
    (ref * grad_out).sum().backward()

    assert torch.equal(spikes, ref.detach())
    assert 0 < spikes.mean() < 1
    torch.testing.assert_close(x.grad, x_ref.grad)
    if kind == "plif":
        torch.testing.assert_close(neuron.w.grad, w_ref.grad)
        assert neuron.w.grad.abs() > 0


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_every_surrogate_inside_the_neuron(name):
    neuron = PLIF(surrogate=name).double()
    x = inputs((5, 2, 7)).requires_grad_()
    neuron(x).sum().backward()
    x_ref = x.detach().clone().requires_grad_()
    w_ref = torch.zeros((), dtype=torch.float64, requires_grad=True)
    reference(x_ref, torch.sigmoid(w_ref), 1.0, 0.0, True, True, surrogate(name)).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(neuron.w.grad, w_ref.grad)


def test_hand_computed_forward():
    """PLIF tau = 2 (k = 1/2), V_th = 1, hard reset to 0, decay_input."""
    x = torch.tensor([[2.0], [0.5], [1.0], [1.5]])
    # t0: H = 0 + (2 - 0)/2 = 1.0 -> fires (heaviside(0) = 1), V = 0
    # t1: H = 0 + (0.5 - 0)/2 = 0.25 -> V = 0.25
    # t2: H = 0.25 + (1 - 0.25)/2 = 0.625 -> V = 0.625
    # t3: H = 0.625 + (1.5 - 0.625)/2 = 1.0625 -> fires
    assert PLIF(tau=2.0)(x).flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    # soft reset keeps the excess: t0 H = 1 -> V = 0; identical here, but with 3.0 at t0:
    # t0: H = 1.5 -> fires, V = 0.5; t1: H = 0.5 + (0.5 - 0.5)/2 = 0.5; t2: H = 0.5 + 0.25 = 0.75; t3: H = 0.75 + 0.375 = 1.125
    x_soft = torch.tensor([[3.0], [0.5], [1.0], [1.5]])
    assert PLIF(tau=2.0, v_reset=None)(x_soft).flatten().tolist() == [1.0, 0.0, 0.0, 1.0]
    # decay_input=False, LIF tau = 4 (k = 1/4): H = V - V/4 + X
    # t0: H = 0.8 -> V = 0.8; t1: H = 0.6 + 0.5 = 1.1 -> fires, V = 0
    assert LIF(tau=4.0, decay_input=False)(torch.tensor([[0.8], [0.5]])).flatten().tolist() == [0.0, 1.0]
    # IF: H = V + X: 0.4, 0.8, 1.2 -> fires
    assert IF()(torch.tensor([[0.4], [0.4], [0.4]])).flatten().tolist() == [0.0, 0.0, 1.0]


def test_hand_computed_gradients():
    """T = 2, x = [0.5, 0.5], PLIF w = 0 (k = 1/2), L = S[1]; no spike, so the reset is inactive.

    H0 = 0.25, V0 = 0.25, H1 = V0 + k (x1 - V0) = 0.375; g = ATan'(H1 - 1) = 1 / (1 + (0.625 pi)^2).
    dH1/dk = (x1 - V0) + (1 - k) dV0/dk = 0.25 + 0.5 * 0.5 = 0.5, dk/dw = k (1 - k) = 0.25
    dL/dw = g * 0.5 * 0.25; dL/dx1 = g * k = g / 2; dL/dx0 = g * (1 - k) * k = g / 4.
    """
    neuron = PLIF(tau=2.0).double()
    x = torch.tensor([[0.5], [0.5]], dtype=torch.float64, requires_grad=True)
    neuron(x)[1].sum().backward()
    g = 1 / (1 + (0.625 * math.pi) ** 2)
    assert neuron.w.grad.item() == pytest.approx(g * 0.125, rel=1e-12)
    assert x.grad.flatten().tolist() == pytest.approx([g / 4, g / 2], rel=1e-12)


def test_detach_reset_changes_only_the_reset_path():
    """x0 = 2 fires at t0 (H0 = 1, z = 0, g = 1). Detached: V0 = 0 carries no gradient to t1.
    Not detached: dV0/dH0 = (1 - S0) + (V_reset - H0) g = 0 - 1 = -1."""
    x = torch.tensor([[2.0], [0.0]], requires_grad=True)
    for detach, expected in [(True, 0.0), (False, -1.0 * 0.5 * 0.5)]:
        x.grad = None
        PLIF(tau=2.0, detach_reset=detach)(x)[1].sum().backward()
        g1 = 1 / (1 + (math.pi * (0.0 - 1)) ** 2)  # H1 = 0 (detached) or 0 + (0 - 0)/2 = 0
        assert x.grad[0].item() == pytest.approx(g1 * expected, abs=1e-7)


@pytest.mark.parametrize("tau", [1.5, 2.0, 16.0])
def test_tau_initialisation(tau):
    neuron = PLIF(tau=tau)
    assert neuron.w.item() == pytest.approx(-math.log(tau - 1), abs=1e-7)
    assert neuron.tau.item() == pytest.approx(tau, rel=1e-6)
    assert not neuron.tau.requires_grad
    assert [name for name, _ in neuron.named_parameters()] == ["w"]
    assert list(LIF(tau=tau).parameters()) == []


@pytest.mark.parametrize("bad", [1.0, 0.5, -2.0])
def test_tau_not_above_one_is_rejected(bad):
    for build in (lambda tau: PLIF(tau=tau), lambda tau: LIF(tau=tau), lambda tau: neuron_factory("plif", tau=tau)):
        with pytest.raises(ValueError, match=r"tau must be > 1"):
            build(bad)


def test_per_channel_tau():
    neuron = PLIF(tau=4.0, per_channel=True, channels=3).double()
    assert neuron.w.shape == (3,) and torch.allclose(neuron.tau, torch.full((3,), 4.0, dtype=torch.float64))
    with torch.no_grad():
        neuron.w.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    x = inputs((5, 2, 3, 4, 4)).requires_grad_()
    neuron(x).sum().backward()
    w_ref = neuron.w.detach().clone().requires_grad_()
    reference(x.detach(), torch.sigmoid(w_ref).view(3, 1, 1), 1.0, 0.0, True, True, ATan()).sum().backward()
    torch.testing.assert_close(neuron.w.grad, w_ref.grad)
    assert (neuron.w.grad != 0).all()

    lazy = PLIF(per_channel=True)  # channels from the first input
    lazy(torch.rand(2, 1, 5))
    assert lazy.w.shape == (5,) and torch.allclose(lazy.tau, torch.full((5,), 2.0))
    with pytest.raises(ValueError, match="3 channel taus but the input has 4 channels"):
        neuron(torch.rand(2, 1, 4))


def test_single_step_keeps_state_until_reset():
    x = inputs((7, 3, 5), torch.float32)
    multi = PLIF(tau=2.0)(x)
    single = PLIF(tau=2.0, step_mode="single")
    container = torch.nn.Sequential(torch.nn.Identity(), single)
    assert torch.equal(torch.stack([container(x_t) for x_t in x]), multi)
    assert single.v is not None
    reset_state(container)
    assert single.v is None
    # after the reset the neuron starts again from V_reset, as a fresh multi-step call does
    assert torch.equal(torch.stack([single(x_t) for x_t in x[:3]]), multi[:3])


def test_multi_step_calls_are_independent():
    neuron = PLIF(tau=2.0)
    x = inputs((4, 2, 3), torch.float32)
    first = neuron(x)
    neuron(torch.full_like(x, 10.0))
    assert torch.equal(neuron(x), first)


def test_bad_arguments():
    with pytest.raises(
        ValueError, match="unknown neuron 'alfi'; choose one of .*'plif'.*entry-point group 'plifnet.neurons'"
    ):
        neuron_factory("alfi")
    with pytest.raises(ValueError, match="per_channel applies to neurons with a per-channel tau"):
        neuron_factory("lif", per_channel=True)
    with pytest.raises(ValueError, match="step_mode"):
        PLIF(step_mode="both")
    with pytest.raises(ValueError, match=r"v_reset \(1.5\) must be below v_threshold"):
        neuron_factory("plif", v_reset=1.5)
    with pytest.raises(ValueError, match=r"multi-step input must be \[T, N, ...\]"):
        PLIF()(torch.rand(5))


def test_the_neurons_import_without_lightning_and_figures_leave_the_backend_alone(tmp_path):
    """A fresh interpreter, as a user's script or notebook: `import plifnet.neurons` brings no Lightning (its
    import takes seconds), and writing a figure keeps the backend the user chose."""
    import subprocess
    import sys

    from conftest import ROOT

    code = (
        "import sys, matplotlib; matplotlib.use('pdf'); import plifnet.neurons; "
        "print('lightning' in sys.modules); from plifnet import plots; "
        "plots.tau_trajectories([0, 1], {'conv1': [2.0, 2.1]}, sys.argv[1]); print(matplotlib.get_backend())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, tmp_path / "tau.png"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["False", "pdf"]
    assert (tmp_path / "tau.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
