"""Fused multi-step neuron kernels for the CPU, compiled by numba (cached on disk after the first run).

One pass over ``[T, E]`` (E = all elements of a step) does the whole forward; one reverse pass does the
backward. Elements are processed in blocks of ``BLOCK`` contiguous values so that the inner loop over a
block vectorises, and blocks are spread over the cores. Every value is computed in float32 and the
arithmetic follows ``plifnet.neurons.neuron_step`` operation by operation (the reset as a selection,
the same values), so spikes are identical to the reference. Under bfloat16 autocast the kernels read
and write bfloat16 as its bits (int16 arrays, widened and rounded to nearest even inside their loops),
so no float32 copies of the input, the spikes or their gradients are made. The forward saves nothing
but its input: the backward replays the forward from it block by block, in the cache, and so never
reads a stored ``H`` ([T, E] float32: 2x the bfloat16 input, T x a constant input) that the forward
would have had to write. ``rest`` is V_reset for the hard reset and 0 for the soft one (where the leak
then pulls to).

A constant input (``static``: a static image's encoder current, the same at every step) is read
as one row ``x [1, E]``, and its gradient is summed over time inside the backward into ``grad_x
[1, E]``; the [T, E] copy of the input and of its gradient never exist.

Each combination of the options gets its own kernel (``forward_kernel(soft=..., decay_input=...,
static=..., per_element=...)``, ``backward_kernel(...)``): the options are constants of the compiled code, so every
branch on them is folded away and the loop body holds only the arithmetic of that neuron. Computing
all forms and selecting one by 0/1 factors instead costs 1.9x (forward) and 2x (backward) here.
``per_element``: per-channel k, read from an array with one k per element; otherwise the single k
is a constant of the loop.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from plifnet.surrogates import ATan, FastSigmoid, PiecewiseQuadratic, Sigmoid

BLOCK = 2048  # the backward's [T, BLOCK] replay buffers stay in the L2 cache (512 to 4096 measured alike)
# the codes that surrogate_grad switches on, as the surrogate classes declare them
ATAN, SIGMOID, PIECEWISE_QUADRATIC, FAST_SIGMOID = (
    cls.kernel_code for cls in (ATan, Sigmoid, PiecewiseQuadratic, FastSigmoid)
)

ZERO, ONE, HALF = np.float32(0.0), np.float32(1.0), np.float32(0.5)
HALF_PI = np.float32(np.pi / 2)


@njit(inline="always", cache=True)
def surrogate_grad(z, code, alpha):
    """The derivative of surrogate ``code`` at ``z`` (see ``plifnet.surrogates``)."""
    if code == ATAN:
        u = HALF_PI * alpha * z
        return alpha * HALF / (ONE + u * u)
    if code == SIGMOID:
        s = ONE / (ONE + np.exp(-alpha * z))
        return alpha * s * (ONE - s)
    if code == PIECEWISE_QUADRATIC:
        return max(alpha - alpha * alpha * abs(z), ZERO)
    if code == FAST_SIGMOID:
        d = ONE + alpha * abs(z)
        return ONE / (d * d)
    return alpha * np.float32(abs(z) < HALF / alpha)  # RECTANGLE


BF16_ONE = np.int16(0x3F80)  # the bits of 1.0 in bfloat16


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bits are the low 32 of the integer ``bits``: an LLVM bitcast, which numba has
    no spelling for (numba widens integer arithmetic to 64 bits; the truncation is free)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = builder.trunc(args[0], ir.IntType(32)) if bits.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _bits_from_float32(typingctx, value):
    """The bits (uint32) of the float32 ``value``."""
    if value != types.float32:
        return None
    return types.uint32(types.float32), lambda context, builder, sig, args: builder.bitcast(args[0], ir.IntType(32))


@njit(inline="always", cache=True)
def widen(bits):
    """bfloat16 bits (int16) -> float32: the same value, exactly. Called inside the kernels' loops (not
    into a buffer first), a bfloat16 element costs a zero-extension and a shift more than a float32 one."""
    return _float32_from_bits(np.uint32(np.uint16(bits)) << np.uint32(16))


@njit(inline="always", cache=True)
def narrow(value):
    """float32 -> bfloat16 bits (int16), rounded to nearest even, as torch rounds."""
    u = _bits_from_float32(value)
    return np.int16(np.uint16((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)))


@njit(inline="always", cache=True)
def as_float32(value, bf16):
    """An element of a kernel's input as float32: bfloat16 bits (``bf16``) widened, or float32 as it is."""
    if bf16:
        return widen(value)
    return value


@njit(inline="always", cache=True)
def neuron_step(v, k, x, v_th, rest, soft, decay_input):
    """One step of ``plifnet.neurons.neuron_step`` for one element, in float32: charge, fire, reset.
    Returns H[t], whether it fired, V[t]. The forward and the backward's replay both call it, so the
    replayed H is the forward's H to the bit.

    The reset selects where the reference multiplies by S: ``H - v_th`` or H (soft), V_reset or H
    (hard), the same values as ``H - v_th * S`` and ``H * (1 - S) + V_reset * S`` (the hard reset's
    product can differ in the sign of a zero V, which no later spike or gradient sees) in one
    instruction instead of eight."""
    if decay_input:
        h = v + k * (x - (v - rest))
    else:
        h = v - k * (v - rest) + x
    fired = h - v_th >= 0
    if soft:
        return h, fired, (h - v_th if fired else h)
    return h, fired, (rest if fired else h)


@lru_cache(maxsize=None)
def forward_kernel(*, soft: bool, decay_input: bool, static: bool, per_element: bool, bf16: bool = False):
    """x [T, E] (static: [1, E]) and k (per_element: the k of each element [E], else [1]) -> spikes [T, E].

    ``bf16``: the spikes, and x unless static, are bfloat16 given as their bits (int16 arrays): read
    and written here, so that autocast's bfloat16 tensors need no float32 copies around the kernel.
    """

    bf16_input = bf16 and not static  # a constant input is float32

    @njit(parallel=True, cache=True)
    def forward(x, k, v_th, rest, spikes):
        steps, elements = spikes.shape
        for block in prange((elements + BLOCK - 1) // BLOCK):
            start = block * BLOCK
            size = min(BLOCK, elements - start)
            kb = k[start : start + size] if per_element else k
            v = np.full(size, rest, np.float32)
            for t in range(steps):
                xt, st = x[0 if static else t, start : start + size], spikes[t, start : start + size]
                for j in range(size):
                    _, fired, v[j] = neuron_step(
                        v=v[j],
                        k=kb[j] if per_element else kb[0],
                        x=as_float32(xt[j], bf16=bf16_input),
                        v_th=v_th,
                        rest=rest,
                        soft=soft,
                        decay_input=decay_input,
                    )
                    if bf16:
                        st[j] = BF16_ONE if fired else np.int16(0)
                    else:
                        st[j] = np.float32(fired)

    return forward


@lru_cache(maxsize=None)
def backward_kernel(
    *, soft: bool, decay_input: bool, detach_reset: bool, code: int, static: bool, per_element: bool, bf16: bool = False
):
    """Reverse pass: grad_x [T, E] (static: [1, E], zeroed by the caller, summed over time) and dL/dk
    summed over time: per element, grad_k [E], with per_element k; else one sum per block, in order.

    Each block first replays the forward from the input x (as the forward read it) into two
    [T, BLOCK] buffers that stay in the cache: H[t], and ``dH/dk = X - (V[t-1] - rest)`` (decay_input)
    or ``-(V[t-1] - rest)``, the reference's expression; then runs backward through time over them.

    ``dV[t]/dH[t] = 1 - S + g * (V_reset - H)`` for the hard reset and ``1 - g * v_th`` for the soft
    one, where g is the surrogate gradient; detach_reset drops the g term.

    ``bf16``: grad_spikes, and x and grad_x unless static, are bfloat16 bits (int16), as in the forward.
    """

    bf16_input = bf16 and not static  # x's dtype: a constant input (and its gradient) is float32

    @njit(parallel=True, cache=True)
    def backward(grad_spikes, x, k, v_th, rest, alpha, grad_x, grad_k):
        steps, elements = grad_spikes.shape
        for block in prange((elements + BLOCK - 1) // BLOCK):
            start = block * BLOCK
            size = min(BLOCK, elements - start)
            kb = k[start : start + size] if per_element else k
            h_replay = np.empty((steps, size), np.float32)
            dh_dk = np.empty((steps, size), np.float32)
            v = np.full(size, rest, np.float32)
            for t in range(steps):
                xt = x[0 if static else t, start : start + size]
                for j in range(size):
                    v_prev, xj = v[j], as_float32(xt[j], bf16=bf16_input)
                    h_replay[t, j], _, v[j] = neuron_step(
                        v=v_prev,
                        k=kb[j] if per_element else kb[0],
                        x=xj,
                        v_th=v_th,
                        rest=rest,
                        soft=soft,
                        decay_input=decay_input,
                    )
                    dh_dk[t, j] = xj - (v_prev - rest) if decay_input else -(v_prev - rest)
            grad_v = np.zeros(size, np.float32)
            acc = np.zeros(size, np.float32)
            for t in range(steps - 1, -1, -1):
                gt, gxt = grad_spikes[t, start : start + size], grad_x[0 if static else t, start : start + size]
                for j in range(size):
                    h, kj = h_replay[t, j], kb[j] if per_element else kb[0]
                    sg = surrogate_grad(h - v_th, code=code, alpha=alpha)
                    if soft:
                        dv_dh = ONE if detach_reset else ONE - sg * v_th
                    else:
                        not_fired = ZERO if h - v_th >= 0 else ONE  # 1 - S
                        dv_dh = not_fired if detach_reset else not_fired + sg * (rest - h)
                    grad_h = as_float32(gt[j], bf16=bf16) * sg + grad_v[j] * dv_dh
                    grad_in = grad_h * kj if decay_input else grad_h  # dH/dX = k, or 1
                    if static:
                        gxt[j] += grad_in
                    elif bf16:
                        gxt[j] = narrow(grad_in)
                    else:
                        gxt[j] = grad_in
                    acc[j] += grad_h * dh_dk[t, j]
                    grad_v[j] = grad_h * (ONE - kj)
            if per_element:
                for j in range(size):
                    grad_k[start + j] = acc[j]
            else:
                total = ZERO
                for j in range(size):
                    total += acc[j]
                grad_k[block] = total

    return backward


@njit(inline="always", cache=True)
def bf16_order(bits):
    """An integer that orders bfloat16 bits (int16) as their values: the magnitude, negated for a
    negative sign (so -0 ties with +0, as the values do)."""
    magnitude = np.int32(bits) & np.int32(0x7FFF)
    return magnitude if bits >= 0 else -magnitude


@lru_cache(maxsize=None)
def max_pool2x2_forward_kernel(*, bf16: bool):
    """2x2, stride-2 max pooling of x [B, H, W] (H, W even) into out [B, H/2, W/2] and the window
    position of the maximum (0..3, row-major) as one byte; ties go to the first position, as in
    ``torch.nn.functional.max_pool2d``. ``bf16``: x and out are bfloat16 bits (int16), compared
    through :func:`bf16_order`; the maximum's bits are copied."""

    @njit(parallel=True, cache=True)
    def max_pool2x2_forward(x, out, index):
        batch, height, width = out.shape
        for b in prange(batch):
            for i in range(height):
                top, bottom = x[b, 2 * i], x[b, 2 * i + 1]
                for j in range(width):
                    a, c = (
                        (bf16_order(top[2 * j]), bf16_order(top[2 * j + 1])) if bf16 else (top[2 * j], top[2 * j + 1])
                    )
                    d, e = (
                        (bf16_order(bottom[2 * j]), bf16_order(bottom[2 * j + 1]))
                        if bf16
                        else (bottom[2 * j], bottom[2 * j + 1])
                    )
                    best, where, value = a, 0, top[2 * j]
                    if c > best:
                        best, where, value = c, 1, top[2 * j + 1]
                    if d > best:
                        best, where, value = d, 2, bottom[2 * j]
                    if e > best:
                        best, where, value = e, 3, bottom[2 * j + 1]
                    out[b, i, j] = value
                    index[b, i, j] = where

    return max_pool2x2_forward


@lru_cache(maxsize=None)
def max_pool2x2_backward_kernel(*, bf16: bool):
    """Route each output gradient to the position of its window's maximum, zero elsewhere.

    grad_out [B, H, W] holds the gradients' bits (int16 for bfloat16, int32 for float32); grad_in
    [B, 2H, W] is the input gradient [B, 2H, 2W] viewed as pairs of neighbouring values, one integer
    each (int32, int64), written whole. One contiguous load and one contiguous store per window row:
    the loop vectorises, where value by value it stored with a stride of 2 (1.6-1.9x slower here)."""
    half = np.int32(16) if bf16 else np.int64(32)  # the bits of one value in a pair
    low_bits = np.int32(0xFFFF) if bf16 else np.int64(0xFFFFFFFF)  # one value's bits, sign not extended

    @njit(parallel=True, cache=True)
    def max_pool2x2_backward(grad_out, index, grad_in):
        batch, height, width = grad_out.shape
        for b in prange(batch):
            for i in range(height):
                grad_row, where_row = grad_out[b, i], index[b, i]
                top, bottom = grad_in[b, 2 * i], grad_in[b, 2 * i + 1]
                for j in range(width):
                    g = top.dtype.type(grad_row[j]) & low_bits
                    where = where_row[j]
                    pair = g << half if where & 1 else g  # the right-hand value sits in the high bits
                    top[j] = pair if where < 2 else 0
                    bottom[j] = 0 if where < 2 else pair

    return max_pool2x2_backward


@njit(parallel=True, cache=True)
def binary_to_bytes(x, out):
    """x [B, E] float32 into out [B, E] uint8, value by value, in one pass; returns the number of rows
    that hold a value other than 0 and 1 (0: out is x exactly)."""
    rows, elements = x.shape
    other = 0
    for r in prange(rows):
        row, row_out = x[r], out[r]
        found = np.uint8(0)
        for e in range(elements):  # integer flags, or-ed: the loop vectorises (a float sum would not)
            one = row[e] == ONE
            row_out[e] = np.uint8(one)
            found |= np.uint8(not one and row[e] != ZERO)  # NaN too
        other += found
    return other
