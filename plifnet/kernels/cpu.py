"""Fused multi-step neuron kernels for the CPU, compiled by numba (cached on disk after the first run).

One pass over ``[T, E]`` (E = all elements of a step) does the whole forward; one reverse pass does
the backward. Elements are processed in blocks of ``BLOCK`` contiguous values so that the inner loop
over a block vectorises, and blocks are spread over the cores. Every value is float32 and the
arithmetic follows ``plifnet.neurons.neuron_step`` operation by operation, so spikes are identical
to the reference. The forward saves only ``H`` (float32); the backward recomputes ``S = H >= v_th``
and ``V[t-1]`` from ``H[t-1]``, and gets ``dH/dk = X - (V[t-1] - rest) = (H - V[t-1]) / k`` without X.
``rest`` is V_reset for the hard reset and 0 for the soft one (where the leak then pulls to).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

BLOCK = 2048  # per-block temporaries stay in the L1 cache
ATAN, SIGMOID, PIECEWISE_QUADRATIC, FAST_SIGMOID, RECTANGLE = range(5)

ZERO, ONE, HALF = np.float32(0.0), np.float32(1.0), np.float32(0.5)
HALF_PI = np.float32(np.pi / 2)


@njit(inline="always", cache=True)
def surrogate_grads(z, out, code, alpha):
    """``out[j]`` = the derivative of surrogate ``code`` at ``z[j]`` (see ``plifnet.surrogates``).

    The branch on ``code`` stands outside the loops, so that each loop vectorises.
    """
    if code == ATAN:
        for j in range(len(z)):
            u = HALF_PI * alpha * z[j]
            out[j] = alpha * HALF / (ONE + u * u)
    elif code == SIGMOID:
        for j in range(len(z)):
            s = ONE / (ONE + np.exp(-alpha * z[j]))
            out[j] = alpha * s * (ONE - s)
    elif code == PIECEWISE_QUADRATIC:
        for j in range(len(z)):
            out[j] = max(alpha - alpha * alpha * abs(z[j]), ZERO)
    elif code == FAST_SIGMOID:
        for j in range(len(z)):
            d = ONE + alpha * abs(z[j])
            out[j] = ONE / (d * d)
    else:  # RECTANGLE
        for j in range(len(z)):
            out[j] = alpha * np.float32(abs(z[j]) < HALF / alpha)


@njit(parallel=True, cache=True)
def forward(x, k, channels, inner, v_th, rest, soft, decay_input, spikes, h_out):
    """x [T, E] -> spikes [T, E], H [T, E]; ``k[c]`` applies to element e with c = (e // inner) % channels."""
    steps, elements = x.shape
    soft_f, hard = np.float32(soft), np.float32(not soft)
    decay_f, plain_f = np.float32(decay_input), np.float32(not decay_input)
    for block in prange((elements + BLOCK - 1) // BLOCK):
        start = block * BLOCK
        stop = min(start + BLOCK, elements)
        v = np.full(stop - start, rest, np.float32)
        kb = np.empty(stop - start, np.float32)
        for j in range(stop - start):
            kb[j] = k[((start + j) // inner) % channels]
        for t in range(steps):
            xt, st, ht = x[t, start:stop], spikes[t, start:stop], h_out[t, start:stop]
            for j in range(stop - start):
                # both forms of the charge and of the reset, selected by exact 0/1 factors
                # (1 * a + 0 * b == a bit for bit), so that the loop has no branch and vectorises
                vj = v[j]
                h = decay_f * (vj + kb[j] * (xt[j] - (vj - rest))) + plain_f * (vj - kb[j] * (vj - rest) + xt[j])
                s = np.float32(h - v_th >= 0)
                ht[j] = h
                st[j] = s
                v[j] = soft_f * (h - v_th * s) + hard * (h * (ONE - s) + rest * s)


@njit(parallel=True, cache=True)
def backward(grad_spikes, h_saved, k, channels, inner, v_th, rest, soft, decay_input, detach_reset,
             code, alpha, grad_x, grad_k):
    """Reverse pass: grad_x [T, E] and each element's dL/dk summed over time, grad_k [E].

    The options enter as 0/1 factors rather than branches, so that the inner loop vectorises:
    ``dV[t]/dH[t] = 1 - S*hard + attached * g * (hard * (V_reset - H) - soft * v_th)``.
    """
    steps, elements = grad_spikes.shape
    soft_f, hard = np.float32(soft), np.float32(not soft)
    attached = np.float32(not detach_reset)
    decay_f, plain_f = np.float32(decay_input), np.float32(not decay_input)
    for block in prange((elements + BLOCK - 1) // BLOCK):
        start = block * BLOCK
        stop = min(start + BLOCK, elements)
        size = stop - start
        grad_v = np.zeros(size, np.float32)
        acc = np.zeros(size, np.float32)
        kb, k_in, inv_k = np.empty(size, np.float32), np.empty(size, np.float32), np.empty(size, np.float32)
        z, sg = np.empty(size, np.float32), np.empty(size, np.float32)
        for j in range(size):
            kb[j] = k[((start + j) // inner) % channels]
            k_in[j] = kb[j] if decay_input else ONE  # dH/dX
            inv_k[j] = ONE / kb[j] if decay_input else ZERO
        for t in range(steps - 1, -1, -1):
            gt, ht, gxt = grad_spikes[t, start:stop], h_saved[t, start:stop], grad_x[t, start:stop]
            hp = h_saved[max(t - 1, 0), start:stop]
            later = np.float32(t > 0)
            for j in range(size):
                z[j] = ht[j] - v_th
            surrogate_grads(z, sg, code, alpha)
            for j in range(size):
                h = ht[j]
                s = np.float32(z[j] >= 0)
                dv_dh = ONE - s * hard + attached * sg[j] * (hard * (rest - h) - soft_f * v_th)
                grad_h = gt[j] * sg[j] + grad_v[j] * dv_dh
                s_prev = np.float32(hp[j] - v_th >= 0)  # V[t-1] recomputed from H[t-1]
                v_prev = hp[j] - s_prev * (hard * (hp[j] - rest) + soft_f * v_th)
                v_prev = later * v_prev + (ONE - later) * rest
                gxt[j] = grad_h * k_in[j]
                # dH/dk = X - (V[t-1] - rest) = (H - V[t-1]) / k with decay_input, else -(V[t-1] - rest)
                acc[j] += grad_h * (decay_f * (h - v_prev) * inv_k[j] - plain_f * (v_prev - rest))
                grad_v[j] = grad_h * (ONE - kb[j])
        for j in range(size):
            grad_k[start + j] = acc[j]


@njit(parallel=True, cache=True)
def max_pool2x2_forward(x, out, index):
    """2x2, stride-2 max pooling of x [B, H, W] (H, W even) into out [B, H/2, W/2] and the window
    position of the maximum (0..3, row-major) as one byte; ties go to the first position, as in
    ``torch.nn.functional.max_pool2d``."""
    batch, height, width = out.shape
    for b in prange(batch):
        for i in range(height):
            top, bottom = x[b, 2 * i], x[b, 2 * i + 1]
            for j in range(width):
                best, where = top[2 * j], 0
                if top[2 * j + 1] > best:
                    best, where = top[2 * j + 1], 1
                if bottom[2 * j] > best:
                    best, where = bottom[2 * j], 2
                if bottom[2 * j + 1] > best:
                    best, where = bottom[2 * j + 1], 3
                out[b, i, j] = best
                index[b, i, j] = where


@njit(parallel=True, cache=True)
def max_pool2x2_backward(grad_out, index, grad_in):
    """Route each output gradient to the position of its window's maximum; grad_in [B, H, W] is
    written whole (zeros elsewhere)."""
    batch, height, width = grad_out.shape
    for b in prange(batch):
        for i in range(height):
            top, bottom = grad_in[b, 2 * i], grad_in[b, 2 * i + 1]
            for j in range(width):
                g, where = grad_out[b, i, j], index[b, i, j]
                top[2 * j] = g if where == 0 else ZERO
                top[2 * j + 1] = g if where == 1 else ZERO
                bottom[2 * j] = g if where == 2 else ZERO
                bottom[2 * j + 1] = g if where == 3 else ZERO
