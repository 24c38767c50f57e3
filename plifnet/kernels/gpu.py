"""Fused multi-step neuron kernels for CUDA tensors, in Triton.

The same algorithm as :mod:`plifnet.kernels.cpu`: one program per block of elements loops over
time, keeping V in registers; the backward loops in reverse. Inputs of any float dtype are read
and accumulated in float32 (also the tau gradient). Nothing here synchronises with the host.
``enable_fp_fusion=False`` keeps multiply-adds unfused, so that spikes match the reference bit for bit.
``STATIC``: the input is one row [1, E] repeated at every step, and its gradient is summed over time.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from plifnet.options import NeuronOptions
from plifnet.surrogates import ATan, FastSigmoid, PiecewiseQuadratic, Sigmoid, kernel_code

# the codes that _surrogate_grad switches on, as the surrogate classes declare them
ATAN, SIGMOID = tl.constexpr(ATan.kernel_code), tl.constexpr(Sigmoid.kernel_code)
PIECEWISE_QUADRATIC, FAST_SIGMOID = tl.constexpr(PiecewiseQuadratic.kernel_code), tl.constexpr(FastSigmoid.kernel_code)

BLOCK = 1024


@triton.jit
def _surrogate_grad(z, alpha, CODE: tl.constexpr):
    if CODE == ATAN:
        u = 1.5707963267948966 * alpha * z
        g = alpha * 0.5 / (1.0 + u * u)
    elif CODE == SIGMOID:
        s = 1.0 / (1.0 + tl.exp(-alpha * z))
        g = alpha * s * (1.0 - s)
    elif CODE == PIECEWISE_QUADRATIC:
        g = tl.maximum(alpha - alpha * alpha * tl.abs(z), 0.0)
    elif CODE == FAST_SIGMOID:
        d = 1.0 + alpha * tl.abs(z)
        g = 1.0 / (d * d)
    else:  # Rectangle
        g = tl.where(tl.abs(z) < 0.5 / alpha, alpha, 0.0)
    return g


@triton.jit
def _forward_kernel(
    x_ptr,
    k_ptr,
    spikes_ptr,
    h_ptr,
    steps,
    elements,
    channels,
    inner,
    v_th,
    rest,
    SOFT: tl.constexpr,
    DECAY_INPUT: tl.constexpr,
    STATIC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < elements
    k = tl.load(k_ptr + (offsets // inner) % channels, mask=mask, other=0.0)
    v = tl.zeros([BLOCK], tl.float32) + rest
    for t in range(0, steps):
        at = t * elements + offsets
        if STATIC:
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        else:
            x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
        if DECAY_INPUT:
            h = v + k * (x - (v - rest))
        else:
            h = v - k * (v - rest) + x
        fired = h - v_th >= 0
        tl.store(h_ptr + at, h, mask=mask)
        tl.store(spikes_ptr + at, tl.where(fired, 1.0, 0.0), mask=mask)
        if SOFT:
            v = tl.where(fired, h - v_th, h)
        else:
            v = tl.where(fired, rest, h)


@triton.jit
def _backward_kernel(
    grad_ptr,
    h_ptr,
    x_ptr,
    k_ptr,
    grad_x_ptr,
    grad_k_ptr,
    steps,
    elements,
    channels,
    inner,
    v_th,
    rest,
    alpha,
    SOFT: tl.constexpr,
    DECAY_INPUT: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    CODE: tl.constexpr,
    STATIC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < elements
    k = tl.load(k_ptr + (offsets // inner) % channels, mask=mask, other=0.0)
    grad_v = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK], tl.float32)
    grad_x_sum = tl.zeros([BLOCK], tl.float32)  # STATIC only
    for i in range(0, steps):
        t = steps - 1 - i
        at = t * elements + offsets
        h = tl.load(h_ptr + at, mask=mask, other=0.0)
        z = h - v_th
        s = tl.where(z >= 0, 1.0, 0.0)
        sg = _surrogate_grad(z, alpha, CODE)
        if SOFT:
            if DETACH_RESET:
                dv_dh = tl.zeros([BLOCK], tl.float32) + 1.0
            else:
                dv_dh = 1.0 - v_th * sg
        else:
            if DETACH_RESET:
                dv_dh = 1.0 - s
            else:
                dv_dh = 1.0 - s + (rest - h) * sg
        grad_h = tl.load(grad_ptr + at, mask=mask, other=0.0).to(tl.float32) * sg + grad_v * dv_dh
        h_prev = tl.load(h_ptr + at - elements, mask=mask & (t > 0), other=0.0)
        if SOFT:
            v_prev = tl.where(h_prev - v_th >= 0, h_prev - v_th, h_prev)
        else:
            v_prev = tl.where(h_prev - v_th >= 0, rest, h_prev)
        v_prev = tl.where(t > 0, v_prev, rest)
        if DECAY_INPUT:
            grad_in = grad_h * k
            if STATIC:
                x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            else:
                x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
            acc += grad_h * (x - (v_prev - rest))  # dH/dk, from X as in the reference (exact at k = 0)
        else:
            grad_in = grad_h
            acc -= grad_h * (v_prev - rest)
        if STATIC:
            grad_x_sum += grad_in
        else:
            tl.store(grad_x_ptr + at, grad_in, mask=mask)
        grad_v = grad_h * (1.0 - k)
    if STATIC:
        tl.store(grad_x_ptr + offsets, grad_x_sum, mask=mask)
    tl.store(grad_k_ptr + offsets, acc, mask=mask)


def _grid(elements):
    return (triton.cdiv(elements, BLOCK),)


def forward(x, k, *, steps: int, channels: int, inner: int, options: NeuronOptions):
    """x [T, E], or [1, E] for a constant input repeated over ``steps``."""
    elements = x.shape[1]
    spikes = torch.empty(steps, elements, dtype=x.dtype, device=x.device)
    h = torch.empty(steps, elements, dtype=torch.float32, device=x.device)
    _forward_kernel[_grid(elements)](
        x_ptr=x,
        k_ptr=k,
        spikes_ptr=spikes,
        h_ptr=h,
        steps=steps,
        elements=elements,
        channels=channels,
        inner=inner,
        v_th=options.v_threshold,
        rest=options.rest,
        SOFT=options.soft_reset,
        DECAY_INPUT=options.decay_input,
        STATIC=x.shape[0] < steps,
        BLOCK=BLOCK,
        enable_fp_fusion=False,
    )
    return spikes, h


def backward(grad_spikes, h, x, k, *, input_steps: int, channels: int, inner: int, options: NeuronOptions):
    """grad_x [T, E], or [1, E] summed over time when the input was constant (``input_steps`` = 1).
    ``x``: the forward's input [T or 1, E], read for dL/dk with decay_input (None otherwise)."""
    steps, elements = grad_spikes.shape
    static = input_steps < steps
    grad_x = torch.empty(1 if static else steps, elements, dtype=grad_spikes.dtype, device=grad_spikes.device)
    grad_k = torch.empty(elements, dtype=torch.float32, device=grad_spikes.device)
    x = h if x is None else x  # not read without decay_input
    _backward_kernel[_grid(elements)](
        grad_ptr=grad_spikes,
        h_ptr=h,
        x_ptr=x,
        k_ptr=k,
        grad_x_ptr=grad_x,
        grad_k_ptr=grad_k,
        steps=steps,
        elements=elements,
        channels=channels,
        inner=inner,
        v_th=options.v_threshold,
        rest=options.rest,
        alpha=options.surrogate.alpha,
        SOFT=options.soft_reset,
        DECAY_INPUT=options.decay_input,
        DETACH_RESET=options.detach_reset,
        CODE=kernel_code(options.surrogate),
        STATIC=static,
        BLOCK=BLOCK,
        enable_fp_fusion=False,
    )
    return grad_x, grad_k
