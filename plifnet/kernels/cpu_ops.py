"""Torch-facing wrappers of the numba CPU kernels: allocate the outputs, pass float32 scalars.

Each kernel is a ``torch.library`` custom operator (``torch.ops.plifnet.*``) with a fake
implementation that gives its outputs' shapes and dtypes, so that ``torch.compile`` of a network
traces through a fused neuron or pooling layer as one opaque call instead of handing numba a fake
tensor. The operators take the neuron's options as keyword-only scalars (an operator's schema holds
no Python objects); :func:`forward` and :func:`backward` unpack a
:class:`~plifnet.options.NeuronOptions` into them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from plifnet.kernels import cpu
from plifnet.kernels.memory import keep_freed_memory_unless_opted_out
from plifnet.options import NeuronOptions
from plifnet.surrogates import kernel_code


def k_array(k, elements, channels, inner):
    """The kernels' k: ``[1]`` for one k, else the k of each of the E elements of a step [E]
    (the channel of element e is (e // inner) % C).

    The kernels read a per-channel k from such an array: building the block's k inside the numba
    kernel instead makes the forward and the backward 1.4-1.6x slower here (the inner loop no
    longer vectorises as well); the array costs 0.3 ms for a [16, 128, 28, 28] step.
    """
    if channels == 1:
        return k.reshape(1).numpy()
    return (
        k.view(1, channels, 1).expand(elements // (channels * inner), channels, inner).reshape(-1).contiguous().numpy()
    )


def _array(tensor):
    """The numpy array the kernels take: float32 as it is, bfloat16 as its bits (int16)."""
    tensor = tensor.detach()
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def forward(x, k, *, steps: int, channels: int, inner: int, options: NeuronOptions, dtype=torch.float32):
    """x [T, E] float32, or bfloat16 with ``dtype=torch.bfloat16`` (a constant input [1, E] repeated
    over ``steps`` is float32 always) -> spikes [T, E] in ``dtype``. Nothing else is kept: the
    backward replays the forward from x."""
    return torch.ops.plifnet.neuron_forward(
        x,
        k,
        steps=steps,
        channels=channels,
        inner=inner,
        v_threshold=options.v_threshold,
        rest=options.rest,
        soft=options.soft_reset,
        decay_input=options.decay_input,
        bf16=dtype == torch.bfloat16,
    )


@torch.library.custom_op("plifnet::neuron_forward", mutates_args=(), device_types="cpu")
def _neuron_forward(
    x: Tensor,
    k: Tensor,
    *,
    steps: int,
    channels: int,
    inner: int,
    v_threshold: float,
    rest: float,
    soft: bool,
    decay_input: bool,
    bf16: bool,
) -> Tensor:
    keep_freed_memory_unless_opted_out()
    spikes = torch.empty(steps, x.shape[1], dtype=torch.bfloat16 if bf16 else torch.float32)
    kernel = cpu.forward_kernel(
        soft=soft, decay_input=decay_input, static=x.shape[0] < steps, per_element=channels > 1, bf16=bf16
    )
    kernel(
        x=_array(x),
        k=k_array(k, x.shape[1], channels, inner),
        v_th=np.float32(v_threshold),
        rest=np.float32(rest),
        spikes=_array(spikes),
    )
    return spikes


@_neuron_forward.register_fake
def _(x, k, *, steps, channels, inner, v_threshold, rest, soft, decay_input, bf16):
    return x.new_empty(steps, x.shape[1], dtype=torch.bfloat16 if bf16 else torch.float32)


def backward(grad_spikes, x, k, *, channels: int, inner: int, options: NeuronOptions):
    """grad_x [T, E] (or [1, E] summed over time when the input was constant, x [1, E]) and grad_k:
    dL/dk per element with per-channel k, else per block of elements (sum it either way).
    ``x``: the forward's input as the forward read it."""
    return torch.ops.plifnet.neuron_backward(
        grad_spikes,
        x,
        k,
        channels=channels,
        inner=inner,
        v_threshold=options.v_threshold,
        rest=options.rest,
        soft=options.soft_reset,
        decay_input=options.decay_input,
        detach_reset=options.detach_reset,
        surrogate=kernel_code(options.surrogate),
        alpha=options.surrogate.alpha,
    )


def _backward_shapes(grad_spikes, x, channels):
    steps, elements = grad_spikes.shape
    static = x.shape[0] < steps
    grad_x_shape = (1, elements) if static else (steps, elements)
    return static, grad_x_shape, (elements if channels > 1 else -(-elements // cpu.BLOCK),)


@torch.library.custom_op("plifnet::neuron_backward", mutates_args=(), device_types="cpu")
def _neuron_backward(
    grad_spikes: Tensor,
    x: Tensor,
    k: Tensor,
    *,
    channels: int,
    inner: int,
    v_threshold: float,
    rest: float,
    soft: bool,
    decay_input: bool,
    detach_reset: bool,
    surrogate: int,
    alpha: float,
) -> tuple[Tensor, Tensor]:
    static, grad_x_shape, grad_k_shape = _backward_shapes(grad_spikes, x, channels)
    bf16 = grad_spikes.dtype == torch.bfloat16  # then x and grad_x (unless static) are bfloat16 too
    grad_x = torch.zeros(grad_x_shape) if static else torch.empty_like(grad_spikes)
    grad_k = torch.empty(grad_k_shape, dtype=torch.float32)
    kernel = cpu.backward_kernel(
        soft=soft,
        decay_input=decay_input,
        detach_reset=detach_reset,
        code=surrogate,
        static=static,
        per_element=channels > 1,
        bf16=bf16,
    )
    kernel(
        grad_spikes=_array(grad_spikes),
        x=_array(x),
        k=k_array(k, grad_spikes.shape[1], channels, inner),
        v_th=np.float32(v_threshold),
        rest=np.float32(rest),
        alpha=np.float32(alpha),
        grad_x=_array(grad_x),
        grad_k=grad_k.numpy(),
    )
    return grad_x, grad_k


@_neuron_backward.register_fake
def _(grad_spikes, x, k, *, channels, inner, v_threshold, rest, soft, decay_input, detach_reset, surrogate, alpha):
    static, grad_x_shape, grad_k_shape = _backward_shapes(grad_spikes, x, channels)
    grad_x = grad_spikes.new_empty(grad_x_shape, dtype=torch.float32 if static else grad_spikes.dtype)
    return grad_x, grad_spikes.new_empty(grad_k_shape, dtype=torch.float32)


@torch.library.custom_op("plifnet::max_pool2x2_forward", mutates_args=(), device_types="cpu")
def max_pool2x2_forward(x: Tensor) -> tuple[Tensor, Tensor]:
    """x [B, H, W] float32 or bfloat16, contiguous (H, W even) -> (out [B, H/2, W/2] in x's dtype, index uint8)."""
    keep_freed_memory_unless_opted_out()
    batch, height, width = x.shape
    out = torch.empty(batch, height // 2, width // 2, dtype=x.dtype)
    index = torch.empty(out.shape, dtype=torch.uint8)
    cpu.max_pool2x2_forward_kernel(bf16=x.dtype == torch.bfloat16)(_array(x), _array(out), index.numpy())
    return out, index


@max_pool2x2_forward.register_fake
def _(x):
    batch, height, width = x.shape
    return x.new_empty(batch, height // 2, width // 2), x.new_empty(batch, height // 2, width // 2, dtype=torch.uint8)


@torch.library.custom_op("plifnet::max_pool2x2_backward", mutates_args=(), device_types="cpu")
def max_pool2x2_backward(grad_out: Tensor, index: Tensor) -> Tensor:
    """grad_out [B, H, W] float32 or bfloat16 and the forward's index -> grad_in [B, 2H, 2W] in its dtype."""
    batch, height, width = grad_out.shape
    grad_in = torch.empty(batch, 2 * height, 2 * width, dtype=grad_out.dtype)
    bf16 = grad_out.dtype == torch.bfloat16
    bits, pairs = (torch.int16, torch.int32) if bf16 else (torch.int32, torch.int64)
    cpu.max_pool2x2_backward_kernel(bf16=bf16)(grad_out.view(bits).numpy(), index.numpy(), grad_in.view(pairs).numpy())
    return grad_in


@max_pool2x2_backward.register_fake
def _(grad_out, index):
    batch, height, width = grad_out.shape
    return grad_out.new_empty(batch, 2 * height, 2 * width)
