"""Torch-facing wrappers of the numba CPU kernels: allocate the outputs, pass float32 scalars."""

from __future__ import annotations

import numpy as np
import torch

from plifnet.kernels import cpu


def forward(x, k, channels, inner, v_th, rest, soft, detach_reset, decay_input):
    spikes, h = torch.empty_like(x), torch.empty_like(x)
    cpu.forward(x.detach().numpy(), k.numpy(), channels, inner, np.float32(v_th), np.float32(rest), soft, decay_input,
                spikes.numpy(), h.numpy())
    return spikes, h


def backward(grad_spikes, h, k, channels, inner, v_th, rest, soft, detach_reset, decay_input, code, alpha):
    grad_x = torch.empty_like(grad_spikes)
    grad_k = torch.empty(grad_spikes.shape[1], dtype=torch.float32)
    cpu.backward(grad_spikes.detach().numpy(), h.numpy(), k.numpy(), channels, inner, np.float32(v_th), np.float32(rest),
                 soft, decay_input, detach_reset, code, np.float32(alpha), grad_x.numpy(), grad_k.numpy())
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
