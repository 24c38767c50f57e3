"""Run the Triton kernels against the reference; with TRITON_INTERPRET=1 this runs on the CPU.

Used by tests/test_kernels.py (in a subprocess, since the interpreter is chosen when Triton's kernels
are defined) and runnable by hand on a GPU machine: ``python tests/triton_check.py``.
"""

import itertools
import os

import torch

from plifnet.kernels import FusedMultiStep
from plifnet.kernels.recurrent import RecurrentMultiStep
from plifnet.neurons import PLIF, multi_step
from plifnet.options import NeuronOptions
from plifnet.surrogates import SURROGATES, surrogate

device = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"


def check(shape, k, v_reset, detach_reset, decay_input, spike_fn, seed, time_steps=None, dtype=torch.float32):
    """``time_steps``: the input is one step's ``shape[1:]``, the same at each of shape[0] steps.
    ``dtype``: the fused kernel gets input and gradient in it (as under autocast) and must match the
    float32 reference on the same values."""
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape[1:] if time_steps else shape, generator=generator) * 1.5 + 0.5).to(device)
    x.view(-1)[::5] = 2.5
    grad = torch.randn(shape, generator=generator).to(device)
    x, grad = x.to(dtype), grad.to(dtype)
    k = k.to(device)
    options = NeuronOptions(v_reset=v_reset, detach_reset=detach_reset, decay_input=decay_input, surrogate=spike_fn)
    results = []
    for fused in (False, True):
        xr, kr = (x if fused else x.float()).clone().requires_grad_(), k.clone().requires_grad_()
        k_b = kr.view(-1, *([1] * (len(shape) - 3))) if kr.numel() > 1 else kr  # [C, 1, ...] over [N, C, ...]
        if fused:
            out = FusedMultiStep.apply(xr, k_b, time_steps, options, "triton")
        else:
            x_seq = xr.expand(time_steps, *xr.shape) if time_steps else xr
            out = multi_step(x_seq, k_b, options=options)
        out.backward(grad if fused else grad.float())
        results.append((out.detach(), xr.grad, kr.grad))
    (s_ref, gx_ref, gk_ref), (s, gx, gk) = results
    assert s.dtype == gx.dtype == dtype and gk.dtype == torch.float32
    assert torch.equal(s.float(), s_ref), (shape, v_reset, detach_reset, decay_input, spike_fn)
    if dtype == torch.float32:
        torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(gx, gx_ref.to(dtype))
    torch.testing.assert_close(gk, gk_ref, rtol=1e-4, atol=1e-5)


cases = 0
for v_reset, detach_reset, decay_input in itertools.product([0.0, None, -0.4], [True, False], [True, False]):
    check((5, 3, 7), torch.tensor(0.4), v_reset, detach_reset, decay_input, surrogate("atan"), cases)
    cases += 1
for name in sorted(SURROGATES):
    check((4, 2, 33), torch.tensor(0.4), 0.0, False, True, surrogate(name, 1.3), cases)
    cases += 1
check((3, 2, 6, 4, 4), torch.rand(6) * 0.8 + 0.1, 0.0, True, True, surrogate("atan"), 99)  # per channel
check((1, 1100), torch.tensor(0.4), 0.0, True, True, surrogate("atan"), 100)  # T = 1, two blocks
for v_reset, decay_input in itertools.product([0.0, None], [True, False]):  # a constant input over 6 steps
    check((6, 3, 1100), torch.tensor(0.4), v_reset, False, decay_input, surrogate("atan"), 101, time_steps=6)
check((3, 2, 6, 4, 4), torch.rand(6) * 0.8 + 0.1, 0.0, True, True, surrogate("atan"), 102, time_steps=3)
for dtype in (torch.bfloat16, torch.float16):  # autocast's dtypes: computed in float32 all the same
    check((5, 3, 70), torch.tensor(0.4), 0.0, False, True, surrogate("atan"), 103, dtype=dtype)
for k, time_steps in ((0.0, None), (0.0, 5), (1e-4, None)):  # a vanishing leak: dL/dk finite and exact
    check((5, 3, 70), torch.tensor(k), 0.0, True, True, surrogate("atan"), 104, time_steps=time_steps)


def check_recurrent(per_neuron, v_reset, detach_reset, decay_input, seed, steps=40, batch=3, width=37, bf16=False):
    """The recurrent layer's Triton step kernels (RecurrentMultiStep with kernel="triton") against the neuron's step
    loop with the same feedback Linear: spikes bit for bit, gradients of the input, the weight and tau to rounding.
    ``bf16``: both under bf16 autocast (the feedback products in bf16); the recurrent weight's gradient then to bf16's
    precision, since the fused backward sums 32 steps in one bf16 product where autograd rounds each step's."""
    generator = torch.Generator().manual_seed(seed)
    linear = torch.nn.Linear(width, width, bias=False).to(device)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(width, width, generator=generator) * 0.4)
    x = (torch.randn(steps, batch, width, generator=generator) * 1.2 + 0.4).to(device)
    grad = torch.randn(steps, batch, width, generator=generator).to(device)
    results = []
    for fused in (False, True):
        neuron = PLIF(
            tau=2.5, per_channel=per_neuron, channels=width, v_reset=v_reset, detach_reset=detach_reset,
            decay_input=decay_input, backend="reference",
        ).to(device)  # fmt: skip
        linear.zero_grad()
        xr = x.clone().requires_grad_()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            if fused:
                out = RecurrentMultiStep.apply(xr, linear.weight, neuron.decay(xr[0]), neuron.options, linear, "triton")
            else:
                out = neuron(xr, feedback=linear)
        out.float().backward(grad)
        results.append((out.detach(), xr.grad, linear.weight.grad.clone(), neuron.w.grad))
    (s_ref, *grads_ref), (s, *grads) = results
    assert torch.equal(s, s_ref) and 0.05 < s.mean() < 0.95, (per_neuron, v_reset, detach_reset, decay_input)
    for name, got, want in zip(("input", "weight", "tau"), grads, grads_ref):
        assert want.abs().sum() > 0
        if bf16:
            assert (got - want).norm() < (0.02 if name == "weight" else 1e-5) * want.norm(), (name, per_neuron)
        else:
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


recurrent_cases = 0
for per_neuron, v_reset, detach_reset, decay_input in (
    (False, 0.0, True, True),
    (True, None, True, False),  # per neuron, the soft reset, the input not decayed
    (True, 0.0, False, True),  # the reset not detached
    (False, None, False, True),
):
    check_recurrent(per_neuron, v_reset, detach_reset, decay_input, 200 + recurrent_cases)
    recurrent_cases += 1
for per_neuron, v_reset, decay_input in ((True, None, False), (False, 0.0, True)):  # under bf16 autocast
    check_recurrent(per_neuron, v_reset, True, decay_input, 300 + recurrent_cases, bf16=True)
    recurrent_cases += 1
print(f"triton kernels match the reference ({cases + 12} cases, device {device})")
print(f"triton recurrent kernels match the step loop ({recurrent_cases} cases, device {device})")
