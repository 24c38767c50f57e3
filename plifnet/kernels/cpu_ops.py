"""Torch-facing wrappers of the numba CPU kernels: allocate the outputs, pass float32 scalars."""

from __future__ import annotations

import numpy as np
import torch

from plifnet.kernels import FUSED_SURROGATES, cpu
from plifnet.options import NeuronOptions


def k_array(k, elements, channels, inner):
    """The kernels' k: ``[1]`` for one k, else the k of each of the E elements of a step [E]
    (the channel of element e is (e // inner) % C).

    The kernels read a per-channel k from such an array: building the block's k inside the numba
    kernel instead makes the forward and the backward 1.4-1.6x slower here (the inner loop no
    longer vectorises as well); the array costs 0.3 ms for a [16, 128, 28, 28] step.
    """
    if channels == 1:
        return k.reshape(1).numpy()
    return k.view(1, channels, 1).expand(elements // (channels * inner), channels, inner).reshape(-1).contiguous().numpy()


def _array(tensor):
    """The numpy array the kernels take: float32 as it is, bfloat16 as its bits (int16)."""
    tensor = tensor.detach()
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()


def forward(x, k, *, steps: int, channels: int, inner: int, options: NeuronOptions, dtype=torch.float32):
    """x [T, E] float32, or bfloat16 with ``dtype=torch.bfloat16`` (a constant input [1, E] repeated
    over ``steps`` is float32 always) -> spikes [T, E] in ``dtype``. Nothing else is kept: the
    backward replays the forward from x."""
    spikes = torch.empty(steps, x.shape[1], dtype=dtype)
    kernel = cpu.forward_kernel(soft=options.soft_reset, decay_input=options.decay_input, static=x.shape[0] < steps,
                                per_element=channels > 1, bf16=dtype == torch.bfloat16)
    kernel(x=_array(x), k=k_array(k, x.shape[1], channels, inner), v_th=np.float32(options.v_threshold),
           rest=np.float32(options.rest), spikes=_array(spikes))
    return spikes


def backward(grad_spikes, x, k, *, channels: int, inner: int, options: NeuronOptions):
    """grad_x [T, E] (or [1, E] summed over time when the input was constant, x [1, E]) and grad_k:
    dL/dk per element with per-channel k, else per block of elements (sum it either way).
    ``x``: the forward's input as the forward read it."""
    steps, elements = grad_spikes.shape
    static = x.shape[0] < steps
    bf16 = grad_spikes.dtype == torch.bfloat16  # then x and grad_x (unless static) are bfloat16 too
    grad_x = torch.zeros(1, elements) if static else torch.empty_like(grad_spikes)
    grad_k = torch.empty(elements if channels > 1 else -(-elements // cpu.BLOCK), dtype=torch.float32)
    kernel = cpu.backward_kernel(soft=options.soft_reset, decay_input=options.decay_input,
                                 detach_reset=options.detach_reset, code=FUSED_SURROGATES[type(options.surrogate)],
                                 static=static, per_element=channels > 1, bf16=bf16)
    kernel(grad_spikes=_array(grad_spikes), x=_array(x), k=k_array(k, elements, channels, inner),
           v_th=np.float32(options.v_threshold), rest=np.float32(options.rest), alpha=np.float32(options.surrogate.alpha),
           grad_x=_array(grad_x), grad_k=grad_k.numpy())
    return grad_x, grad_k


def max_pool2x2_forward(x):
    """x [B, H, W] float32 or bfloat16, contiguous (H, W even) -> (out [B, H/2, W/2] in x's dtype, index uint8)."""
    batch, height, width = x.shape
    out = torch.empty(batch, height // 2, width // 2, dtype=x.dtype)
    index = torch.empty(out.shape, dtype=torch.uint8)
    cpu.max_pool2x2_forward_kernel(bf16=x.dtype == torch.bfloat16)(_array(x), _array(out), index.numpy())
    return out, index


def max_pool2x2_backward(grad_out, index):
    """grad_out [B, H, W] float32 or bfloat16 and the forward's index -> grad_in [B, 2H, 2W] in its dtype."""
    batch, height, width = grad_out.shape
    grad_in = torch.empty(batch, 2 * height, 2 * width, dtype=grad_out.dtype)
    bf16 = grad_out.dtype == torch.bfloat16
    bits, pairs = (torch.int16, torch.int32) if bf16 else (torch.int32, torch.int64)
    cpu.max_pool2x2_backward_kernel(bf16=bf16)(grad_out.view(bits).numpy(), index.numpy(), grad_in.view(pairs).numpy())
    return grad_in
