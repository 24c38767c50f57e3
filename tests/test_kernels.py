"""Fused kernels against the plain per-step reference: identical spikes, gradients to float32 rounding."""

import importlib.util
import itertools
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from plifnet import kernels
from plifnet.models import SpikingNet
from plifnet.neurons import IF, LIF, PLIF, multi_step
from plifnet.options import NeuronOptions
from plifnet.surrogates import SURROGATES, ATan, surrogate


def make(kind, backend, v_reset, detach_reset, decay_input, spike_fn, per_channel=0):
    options = dict(v_reset=v_reset, detach_reset=detach_reset, surrogate=spike_fn, backend=backend)
    if kind == "plif":
        return PLIF(
            tau=2.5, decay_input=decay_input, per_channel=bool(per_channel), channels=per_channel or None, **options
        )
    if kind == "lif":
        return LIF(tau=3.0, decay_input=decay_input, **options)
    return IF(**options)


def inputs(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * 1.5 + 0.5
    x.view(-1)[::5] = 2.5  # PLIF/LIF at V = 0: H = k * 2.5 = 1.0 exactly (tau 2.5) -> on the threshold
    return x


def run(neuron, x, grad, time_steps=None):
    x = x.clone().requires_grad_()
    spikes = neuron(x, time_steps=time_steps)
    (spikes * grad).sum().backward()
    w_grad = neuron.w.grad.clone() if isinstance(neuron, PLIF) else None
    return spikes.detach(), x.grad, w_grad


def compare(kind, v_reset, detach_reset, decay_input, spike_fn, shape, seed=0, per_channel=0, time_steps=None):
    """``time_steps``: the input is one step's ``shape[1:]``, the same at each of ``time_steps`` = shape[0] steps."""
    x, grad = (
        inputs(shape[1:] if time_steps else shape, seed),
        torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1)),
    )
    ref = run(make(kind, "reference", v_reset, detach_reset, decay_input, spike_fn, per_channel), x, grad, time_steps)
    fused = run(make(kind, "cpu", v_reset, detach_reset, decay_input, spike_fn, per_channel), x, grad, time_steps)
    assert torch.equal(fused[0], ref[0]), "spikes differ"
    assert 0 < ref[0].mean() < 1
    torch.testing.assert_close(fused[1], ref[1], rtol=1e-5, atol=1e-6)
    if kind == "plif":
        torch.testing.assert_close(fused[2], ref[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kind,v_reset,detach_reset,decay_input",
    list(itertools.product(["plif", "lif", "if"], [0.0, None, -0.4], [True, False], [True, False])),
)
def test_cpu_kernel_every_neuron_option(kind, v_reset, detach_reset, decay_input):
    compare(kind, v_reset, detach_reset, decay_input, ATan(), (6, 3, 7, 5))


@pytest.mark.parametrize("name", sorted(SURROGATES))
@pytest.mark.parametrize("detach_reset", [True, False])
def test_cpu_kernel_every_surrogate(name, detach_reset):
    compare("plif", 0.0, detach_reset, True, surrogate(name, 1.3), (5, 2, 33))


@pytest.mark.parametrize("shape", [(1, 4, 3), (1, 1), (2, 1, 1), (7, 3, 1025), (16, 2, 5, 3, 3), (3, 5, 513)])
def test_cpu_kernel_odd_shapes_and_one_step(shape):
    x, grad = inputs(shape, 3), torch.ones(shape)
    ref = run(PLIF(tau=2.5, backend="reference"), x, grad)
    fused = run(PLIF(tau=2.5, backend="cpu"), x, grad)
    assert torch.equal(fused[0], ref[0])
    torch.testing.assert_close(fused[1], ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused[2], ref[2], rtol=1e-4, atol=1e-5)


def test_cpu_kernel_per_channel_tau():
    compare("plif", 0.0, True, True, ATan(), (4, 3, 6, 5, 5), per_channel=6)
    compare("plif", None, False, False, ATan(), (4, 3, 6), per_channel=6)


@pytest.mark.parametrize(
    "kind,v_reset,detach_reset,decay_input",
    [("plif", *options) for options in itertools.product([0.0, None], [True, False], [True, False])]
    + [("if", 0.0, True, False), ("lif", -0.4, False, True)],
)
def test_cpu_kernel_constant_input(kind, v_reset, detach_reset, decay_input):
    """A static image's current, given once for all steps: same spikes, and its gradient (summed
    over time in the kernel) equal to the reference's gradient through ``x.expand(T, ...)``."""
    compare(kind, v_reset, detach_reset, decay_input, ATan(), (6, 3, 7, 5), time_steps=6)


def test_cpu_kernel_constant_input_odd_cases():
    compare("plif", 0.0, True, True, ATan(), (4, 3, 6, 5, 5), per_channel=6, time_steps=4)
    compare("plif", 0.0, True, True, ATan(), (1, 2, 1025), time_steps=1)  # T = 1: the plain path
    compare("plif", 0.0, True, True, ATan(), (9, 2, 2100), time_steps=9)  # two blocks, the second partial
    with pytest.raises(ValueError, match="time_steps"):
        PLIF(step_mode="single")(torch.zeros(2, 3), time_steps=4)
    with pytest.raises(ValueError, match="time_steps"):
        PLIF()(torch.zeros(2, 3), time_steps=0)


@pytest.mark.parametrize("shape,time_steps", [((6, 3, 7, 5), None), ((8, 4, 700), None), ((5, 2, 3, 700), 5)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cpu_kernel_half_precision_input_is_computed_in_float32(dtype, shape, time_steps):
    """bf16/fp16 input (what autocast gives a neuron after a convolution): the kernel computes in
    float32, so spikes equal the float32 reference on the same values, dX comes back in the input's
    dtype (bf16: read and written by the kernel itself, rounded to nearest even as torch rounds) and
    the tau gradient is accumulated in float32."""
    x = inputs(shape[1:] if time_steps else shape, 4).to(dtype)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(dtype)
    ref = run(make("plif", "reference", 0.0, False, True, ATan()), x.float(), grad.float(), time_steps)
    fused = run(make("plif", "cpu", 0.0, False, True, ATan()), x, grad, time_steps)
    assert fused[0].dtype == fused[1].dtype == dtype and fused[2].dtype == torch.float32
    assert torch.equal(fused[0].float(), ref[0]) and 0 < ref[0].mean() < 1
    torch.testing.assert_close(fused[1], ref[1].to(dtype))  # the float32 gradient, rounded to dtype once
    torch.testing.assert_close(fused[2], ref[2], rtol=1e-4, atol=1e-5)


def test_bfloat16_bits_convert_as_torch_converts():
    """The kernels' own bfloat16 <-> float32 conversions (``cpu.widen``, ``cpu.narrow``) against torch's:
    exact both ways, rounding to nearest even on exact ties, over random values and tiny ones."""
    from plifnet.kernels import cpu

    generator = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(100_000, generator=generator) * 10, torch.randn(1000, generator=generator) * 1e-38])
    bits = values.view(torch.int32)
    ties = (bits[:2000] & ~0xFFFF) | 0x8000  # exactly halfway between two bfloat16 numbers, even and odd below
    values = torch.cat([values, ties.view(torch.float32), torch.tensor([0.0, -0.0, 1.0, -1.0, 3.0e38])])
    narrowed = convert_each(cpu.narrow, values.numpy(), np.int16)
    np.testing.assert_array_equal(narrowed, values.to(torch.bfloat16).view(torch.int16).numpy())
    widened = convert_each(cpu.widen, narrowed, np.float32)
    np.testing.assert_array_equal(widened, values.to(torch.bfloat16).float().numpy())


def convert_each(convert, values, dtype):
    """``convert`` (a numba function of one value) applied to each of ``values`` inside numba, as the kernels call it."""
    from numba import njit

    @njit
    def loop(values, out):
        for i in range(values.shape[0]):
            out[i] = convert(values[i])

    out = np.empty(len(values), dtype)
    loop(values, out)
    return out


def test_network_trains_under_bf16_autocast():
    """A training step of the MNIST network under CPU autocast (``--trainer.precision bf16-mixed``):
    the neurons get bf16 currents and every parameter a finite float32 gradient."""
    from plifnet.module import SpikingClassifier

    torch.manual_seed(0)
    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=3))
    seen = []
    model.net.layers[0].register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model._loss(model(torch.randn(4, 1, 28, 28) * 2), torch.tensor([1, 5, 7, 0]))
    loss.backward()
    assert seen == [torch.bfloat16] and torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.grad.dtype == torch.float32 and torch.isfinite(parameter.grad).all(), name
    assert all(model.net.layers[i].w.grad != 0 for i in (0, 3))


def test_tau_gradient_is_deterministic():
    x, grad = inputs((8, 16, 64, 9, 9), 5), torch.randn(8, 16, 64, 9, 9)
    first, second = (run(PLIF(tau=2.0, backend="cpu"), x, grad)[2] for _ in range(2))
    assert torch.equal(first, second)


def test_auto_picks_the_fused_kernel_and_rejects_bad_backends():
    expected = "cpu" if kernels.available("cpu") else "reference"
    assert kernels.resolve(torch.zeros(2, 2), options=NeuronOptions()) == expected
    with pytest.raises(ValueError, match="backend must be one of"):
        PLIF(backend="cuda")
    with pytest.raises(ValueError, match="cannot run tensors on cpu"):
        kernels.resolve(torch.zeros(2, 2), options=NeuronOptions(backend="triton"))


def test_reference_gradients_pass_gradcheck_in_float64():
    """With a smooth spike function (the surrogate's primitive as forward) the reference's analytic
    gradient must equal finite differences, for every wiring of the recurrence that is not detached."""

    class Smooth(ATan):
        def __call__(self, z):
            return self.primitive(z)

    for v_reset, decay_input in itertools.product([0.0, None], [True, False]):
        x = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
        w = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        options = NeuronOptions(v_reset=v_reset, detach_reset=False, decay_input=decay_input, surrogate=Smooth())
        fn = lambda x, w: multi_step(x, torch.sigmoid(w), options=options)
        assert torch.autograd.gradcheck(fn, (x, w))


def test_the_fused_kernels_of_this_platform_are_installed():
    """numba is a dependency and triton a test dependency (Linux x86-64, where its wheels are): a
    missing one fails here, instead of every kernel test running the reference against itself."""
    assert kernels.available("cpu"), "numba is missing: pip install -e '.[test]'"
    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert importlib.util.find_spec("triton"), "triton is missing: pip install -e '.[test]'"
    if torch.cuda.is_available():
        assert kernels.available("triton")


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"), reason="no triton wheel here")
def test_triton_kernel_under_the_interpreter():
    """The GPU kernels' numerics, run on the CPU by Triton's interpreter (TRITON_INTERPRET=1)."""
    script = ROOT / "tests" / "triton_check.py"
    result = subprocess.run(
        [sys.executable, script],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, TRITON_INTERPRET="1"),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "triton kernels match the reference" in result.stdout


@pytest.mark.parametrize("shape", [(2, 3, 4, 6, 8), (3, 2, 7, 9), (1, 1, 2, 2), (4, 5, 34, 34)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("binary", [True, False])
def test_max_pool_kernel_matches_max_pool2d(shape, binary, dtype):
    """Same values and the same gradient routing (ties go to the first position of the window), in
    float32 and in bfloat16 (autocast's spikes: the kernel reads and writes bf16 itself)."""
    from plifnet.kernels import max_pool2x2

    x = ((torch.rand(shape) > 0.7).float() if binary else torch.randn(shape).round(decimals=1)).to(dtype)
    out_shape = (*shape[:-2], shape[-2] // 2, shape[-1] // 2)
    grad = torch.randn(out_shape).to(dtype)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    fused = max_pool2x2(a, backend="cpu" if kernels.available("cpu") else "reference")
    reference = torch.nn.functional.max_pool2d(b.reshape(-1, *shape[-3:]), 2, 2).view(out_shape)
    fused.backward(grad)
    reference.backward(grad)
    assert torch.equal(fused, reference) and torch.equal(a.grad, b.grad)


def test_networks_give_the_same_result_on_every_backend():
    from plifnet.module import SpikingClassifier

    x, y = torch.randn(3, 1, 28, 28) * 2, torch.tensor([1, 5, 7])
    results = []
    for backend in ("reference", "auto"):
        torch.manual_seed(0)
        model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=3, options=NeuronOptions(backend=backend)))
        torch.manual_seed(1)
        rates = model(x)
        model._loss(rates, y).backward()
        results.append((rates.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (rates_ref, grads_ref), (rates, grads) = results
    assert torch.equal(rates, rates_ref)
    for name in grads_ref:
        torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-6)


def test_float64_input_runs_the_reference():
    x = torch.zeros(2, 3, dtype=torch.float64)
    assert kernels.resolve(x, options=NeuronOptions()) == "reference"
    with pytest.raises(ValueError, match="computes in float32; use 'reference' for float64"):
        kernels.resolve(x, options=NeuronOptions(backend="cpu"))


@pytest.mark.parametrize("k,time_steps", [(0.0, None), (0.0, 8), (1e-4, None), (1e-4, 8), (0.5, None)])
def test_cpu_kernel_tau_gradient_at_vanishing_leak(k, time_steps):
    """k = 0 (sigmoid(w) underflows to 0 for w < -104) and tau = 1e4 (k = 1e-4): the tau gradient
    must match the reference, finite, where (H - V[t-1]) / k would be 0/0 or lose digits; and the usual
    tau 2 (k = 0.5) beside them."""
    shape = (8, 4, 300)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(shape[1:] if time_steps else shape, generator=generator) * 2 + 1.5
    grad = torch.randn(shape, generator=generator)
    results = []
    for backend in ("reference", "cpu"):
        xr, kr = x.clone().requires_grad_(), torch.tensor(k).requires_grad_()
        if backend == "reference":
            x_seq = xr.expand(time_steps, *xr.shape) if time_steps else xr
            out = multi_step(x_seq, kr, options=NeuronOptions(v_threshold=0.3))
        else:
            out = kernels.fused_multi_step(
                xr, kr, options=NeuronOptions(v_threshold=0.3), backend=backend, time_steps=time_steps
            )
        out.backward(grad)
        results.append((out.detach(), xr.grad, kr.grad))
    (s_ref, gx_ref, gk_ref), (s, gx, gk) = results
    assert torch.equal(s, s_ref)
    assert torch.isfinite(gk) and gk_ref.abs() > 1
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gk, gk_ref, rtol=2e-5, atol=1e-5)


@pytest.mark.parametrize("dtype,time_steps", [(torch.float32, None), (torch.bfloat16, None), (torch.float32, 8)])
def test_cpu_backward_keeps_the_input_and_nothing_of_its_own(dtype, time_steps):
    """The CPU backward replays the forward from the input: it keeps the input tensor itself (no copy),
    and no [T, E] float32 H (2x a bfloat16 input, T x a constant one); its gradients still match the reference."""
    shape = (8, 4, 300)
    x = inputs(shape[1:] if time_steps else shape, 2).to(dtype).requires_grad_()
    out = PLIF(backend="cpu")(x, time_steps=time_steps)
    saved = [t for t in out.grad_fn.saved_tensors if t is not None]
    assert [t.numel() for t in saved] == [x.numel(), 1]  # the input and k
    assert saved[0].data_ptr() == x.data_ptr()
    compare("plif", 0.0, True, True, ATan(), shape, seed=2, time_steps=time_steps)


def test_plif_at_an_underflowed_leak_gives_the_reference_gradients():
    """PLIF with w = -200 (k = sigmoid(w) = 0 in float32): finite, equal gradients on both paths."""
    x, grad = inputs((6, 3, 40), 3), torch.randn(6, 3, 40)
    results = []
    for backend in ("reference", "cpu"):
        neuron = PLIF(backend=backend, v_threshold=0.5)
        with torch.no_grad():
            neuron.w.fill_(-200.0)
        results.append(run(neuron, x, grad))
    assert all(torch.isfinite(g).all() for g in results[1][1:])
    for ref, fused in zip(results[0], results[1]):
        torch.testing.assert_close(fused, ref)
