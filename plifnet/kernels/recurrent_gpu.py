"""The element-wise part of a recurrent layer's step (:mod:`plifnet.kernels.recurrent`) for CUDA tensors, in Triton:
the step forward, the replay of ``H`` for backward and the step backward, each one program per block of elements,
the arithmetic of :mod:`plifnet.kernels.recurrent_cpu` operation by operation (``enable_fp_fusion=False`` keeps
multiply-adds unfused, so that the spikes equal the step loop's). The matrix products between them stay torch's
(cuBLAS). Every tensor is a contiguous step ``[N, F]``, read as its ``E = N * F`` elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from plifnet.kernels.gpu import BLOCK, _surrogate_grad
from plifnet.options import NeuronOptions
from plifnet.surrogates import kernel_code

READS_BFLOAT16 = False  # the recurrent layer gives these kernels float32 (not yet run on a GPU in bf16)


@triton.jit
def _charge(v, k, x, rest, DECAY_INPUT: tl.constexpr):
    if DECAY_INPUT:
        h = v + k * (x - (v - rest))
    else:
        h = v - k * (v - rest) + x
    return h


@triton.jit
def _reset(h, fired, v_th, rest, SOFT: tl.constexpr):
    if SOFT:
        v = tl.where(fired, h - v_th, h)
    else:
        v = tl.where(fired, rest, h)
    return v


@triton.jit
def _forward_step(
    x_ptr,
    feedback_ptr,
    v_ptr,
    k_ptr,
    current_ptr,
    spike_ptr,
    byte_ptr,
    elements,
    v_th,
    rest,
    SOFT: tl.constexpr,
    DECAY_INPUT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < elements
    i = tl.load(x_ptr + offsets, mask=mask, other=0.0) + tl.load(feedback_ptr + offsets, mask=mask, other=0.0)
    v = tl.load(v_ptr + offsets, mask=mask, other=0.0)
    h = _charge(v, tl.load(k_ptr + offsets, mask=mask, other=0.0), i, rest, DECAY_INPUT)
    fired = h - v_th >= 0
    if DECAY_INPUT:  # what backward keeps of the step, as recurrent_cpu.step_forward says
        tl.store(current_ptr + offsets, i, mask=mask)
    else:
        tl.store(current_ptr + offsets, h, mask=mask)
    tl.store(spike_ptr + offsets, tl.where(fired, 1.0, 0.0), mask=mask)
    tl.store(byte_ptr + offsets, tl.where(fired, 1, 0).to(tl.uint8), mask=mask)
    tl.store(v_ptr + offsets, _reset(h, fired, v_th, rest, SOFT), mask=mask)


@triton.jit
def _replay_step(
    current_ptr,
    k_ptr,
    v_ptr,
    h_ptr,
    elements,
    v_th,
    rest,
    SOFT: tl.constexpr,
    DECAY_INPUT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < elements
    v = tl.load(v_ptr + offsets, mask=mask, other=0.0)
    k = tl.load(k_ptr + offsets, mask=mask, other=0.0)
    h = _charge(v, k, tl.load(current_ptr + offsets, mask=mask, other=0.0), rest, DECAY_INPUT)
    tl.store(h_ptr + offsets, h, mask=mask)
    tl.store(v_ptr + offsets, _reset(h, h - v_th >= 0, v_th, rest, SOFT), mask=mask)


@triton.jit
def _backward_step(
    grad_ptr,
    feedback_ptr,
    h_ptr,
    spike_ptr,
    h_before_ptr,
    spike_before_ptr,
    current_ptr,
    k_ptr,
    grad_v_ptr,
    grad_k_ptr,
    grad_i_ptr,
    elements,
    v_th,
    v_reset,
    rest,
    alpha,
    SOFT: tl.constexpr,
    DECAY_INPUT: tl.constexpr,
    DETACH_RESET: tl.constexpr,
    CODE: tl.constexpr,
    LAST: tl.constexpr,
    FIRST: tl.constexpr,
    WITH_K: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < elements
    grad_s = tl.load(grad_ptr + offsets, mask=mask, other=0.0)
    if not LAST:
        grad_s = grad_s + tl.load(feedback_ptr + offsets, mask=mask, other=0.0)
    h = tl.load(h_ptr + offsets, mask=mask, other=0.0)
    fired = tl.load(spike_ptr + offsets, mask=mask, other=0) != 0
    k = tl.load(k_ptr + offsets, mask=mask, other=0.0)
    grad_v = tl.load(grad_v_ptr + offsets, mask=mask, other=0.0)
    sg = _surrogate_grad(h - v_th, alpha, CODE)
    if SOFT:
        gh = grad_s * sg + grad_v
    else:
        gh = grad_s * sg + grad_v * tl.where(fired, 0.0, 1.0)
    if not DETACH_RESET:
        if SOFT:
            gh += grad_v * sg * (-v_th)
        else:
            gh += grad_v * sg * (v_reset - h)
    if DECAY_INPUT:
        tl.store(grad_i_ptr + offsets, gh * k, mask=mask)
    else:
        tl.store(grad_i_ptr + offsets, gh, mask=mask)
    if WITH_K:
        if FIRST:
            v_before = tl.zeros([BLOCK], tl.float32) + rest
        else:
            h_before = tl.load(h_before_ptr + offsets, mask=mask, other=0.0)
            fired_before = tl.load(spike_before_ptr + offsets, mask=mask, other=0) != 0
            v_before = _reset(h_before, fired_before, v_th, rest, SOFT)
        if DECAY_INPUT:
            dh_dk = tl.load(current_ptr + offsets, mask=mask, other=0.0) - (v_before - rest)
        else:
            dh_dk = rest - v_before
        tl.store(grad_k_ptr + offsets, tl.load(grad_k_ptr + offsets, mask=mask, other=0.0) + gh * dh_dk, mask=mask)
    tl.store(grad_v_ptr + offsets, gh * (1.0 - k), mask=mask)


def _grid(tensor: torch.Tensor) -> tuple[int]:
    return (triton.cdiv(tensor.numel(), BLOCK),)


def steps(*tensors) -> list:
    """The tensors [T, ...] as the step functions take them, one step at an index: as they are (CUDA tensors)."""
    return list(tensors)


rows = steps  # a step's tensors, likewise as they are


def run_forward(x, feedback, v, k, current, spike, spike_byte, *, options: NeuronOptions) -> None:
    """``I = X[t] + R[t]`` and the step: ``v`` becomes V[t] in place; writes what backward keeps of the step (the
    current with ``options.decay_input``, else H: ``current`` holds it), the spike and its byte."""
    _forward_step[_grid(v)](
        x,
        feedback,
        v,
        k,
        current,
        spike,
        spike_byte,
        v.numel(),
        options.v_threshold,
        options.rest,
        SOFT=options.soft_reset,
        DECAY_INPUT=options.decay_input,
        BLOCK=BLOCK,
        enable_fp_fusion=False,
    )


def run_replay(current, k, v, h, *, options: NeuronOptions) -> None:
    """``h`` = H[t] from the kept current and ``v`` = V[t-1], which becomes V[t] in place."""
    _replay_step[_grid(v)](
        current,
        k,
        v,
        h,
        v.numel(),
        options.v_threshold,
        options.rest,
        SOFT=options.soft_reset,
        DECAY_INPUT=options.decay_input,
        BLOCK=BLOCK,
        enable_fp_fusion=False,
    )


def run_backward(
    grad,
    feedback,
    h,
    spike,
    h_before,
    spike_before,
    current,
    k,
    grad_v,
    grad_k,
    grad_i,
    *,
    options: NeuronOptions,
    last: bool,
    first: bool,
    with_k: bool,
) -> None:
    """One step back, as :func:`plifnet.kernels.recurrent_cpu.run_backward` says."""
    _backward_step[_grid(grad_v)](
        grad,
        feedback,
        h,
        spike,
        h_before,
        spike_before,
        current,
        k,
        grad_v,
        grad_k,
        grad_i,
        grad_v.numel(),
        options.v_threshold,
        options.v_reset or 0.0,
        options.rest,
        options.surrogate.alpha,
        SOFT=options.soft_reset,
        DECAY_INPUT=options.decay_input,
        DETACH_RESET=options.detach_reset,
        CODE=kernel_code(options.surrogate),
        LAST=last,
        FIRST=first,
        WITH_K=with_k,
        BLOCK=BLOCK,
        enable_fp_fusion=False,
    )
