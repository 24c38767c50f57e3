"""Torch-facing wrappers of the numba CPU kernels: allocate the outputs, pass float32 scalars."""

from __future__ import annotations

import numpy as np
import torch

from plifnet.kernels import cpu


def per_element(k, elements, channels, inner):
    """k [C] -> the k of each of the E elements of a step (channel of element e: (e // inner) % C).

    The kernels read k from such an array: building the block's k inside the numba kernel instead
    makes the forward and the backward 1.4-1.6x slower here (the inner loop no longer vectorises
    as well); the array costs 0.3 ms for a [16, 128, 28, 28] step.
    """
    return k.view(1, channels, 1).expand(elements // (channels * inner), channels, inner).reshape(-1).contiguous().numpy()


def forward(x, steps, k, channels, inner, v_th, rest, soft, detach_reset, decay_input):
    """x [T, E], or [1, E] for a constant input repeated over ``steps``."""
    spikes = torch.empty(steps, x.shape[1], dtype=torch.float32)
    h = torch.empty_like(spikes)
    kernel = cpu.forward_kernel(bool(soft), bool(decay_input), x.shape[0] < steps)
    kernel(x.detach().numpy(), per_element(k, x.shape[1], channels, inner), np.float32(v_th), np.float32(rest),
           spikes.numpy(), h.numpy())
    return spikes, h


def backward(grad_spikes, h, input_steps, k, channels, inner, v_th, rest, soft, detach_reset, decay_input, code, alpha):
    """grad_x [T, E], or [1, E] summed over time when the input was constant (``input_steps`` = 1)."""
    static = input_steps < grad_spikes.shape[0]
    grad_x = torch.zeros(1, h.shape[1]) if static else torch.empty_like(grad_spikes)
    grad_k = torch.empty(grad_spikes.shape[1], dtype=torch.float32)
    kernel = cpu.backward_kernel(bool(soft), bool(decay_input), bool(detach_reset), int(code), static)
    kernel(grad_spikes.detach().numpy(), h.numpy(), per_element(k, h.shape[1], channels, inner), np.float32(v_th),
           np.float32(rest), np.float32(alpha), grad_x.numpy(), grad_k.numpy())
    return grad_x, grad_k


def max_pool2x2_forward(x):
    """x [B, H, W] float32 contiguous (H, W even) -> (out [B, H/2, W/2], index uint8)."""
    batch, height, width = x.shape
    out = torch.empty(batch, height // 2, width // 2, dtype=x.dtype)
    index = torch.empty(out.shape, dtype=torch.uint8)
    cpu.max_pool2x2_forward(x.detach().numpy(), out.numpy(), index.numpy())
    return out, index


def max_pool2x2_backward(grad_out, index):
    batch, height, width = grad_out.shape
    grad_in = torch.empty(batch, 2 * height, 2 * width, dtype=grad_out.dtype)
    cpu.max_pool2x2_backward(grad_out.detach().numpy(), index.numpy(), grad_in.numpy())
    return grad_in
