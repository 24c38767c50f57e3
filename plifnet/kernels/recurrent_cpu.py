"""The element-wise part of a recurrent layer's step (:mod:`plifnet.kernels.recurrent`) for the CPU, one numba pass
each: the step forward, the replay of ``H`` and ``V`` for backward, and the step backward. The matrix products stay
torch's (BLAS); around them each step is one pass over its ``N * F`` elements instead of a dozen torch operations.
The step is :func:`plifnet.kernels.cpu.neuron_step`, the fused feed-forward kernels' (the spikes equal the
reference's), with the options as constants of each compiled kernel.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from numba import njit, types
from numba.extending import overload

from plifnet.kernels.cpu import ONE, ZERO, narrow, neuron_step, surrogate_grad, widen
from plifnet.surrogates import kernel_code

READS_BFLOAT16 = True  # the step's input, feedback, spikes and their gradients may be bfloat16 (see read and write)


# A bfloat16 array comes as its bits (an int16 array: see rows()), read as float32 and written rounded to nearest even
# in the loop: the kernels compile once more for such arrays, from the same code, and no float32 copy of a [T, N, F]
# tensor is made around them.
def read(array, j):
    """``array[j]`` as float32: bfloat16 bits widened, float32 as it is."""


def write(array, j, value):
    """``array[j] = value``: rounded to bfloat16 bits into an int16 array, as it is into a float32 one."""


@overload(read, inline="always")
def _read(array, j):
    if isinstance(array.dtype, types.Integer):
        return lambda array, j: widen(array[j])
    return lambda array, j: array[j]


@overload(write, inline="always")
def _write(array, j, value):
    if isinstance(array.dtype, types.Integer):

        def write_bits(array, j, value):
            array[j] = narrow(value)

        return write_bits

    def write_value(array, j, value):
        array[j] = value

    return write_value


@lru_cache(maxsize=None)
def step_forward(*, soft: bool, decay_input: bool):
    """``I = X[t] + R[t]`` (R the feedback product), the step, in place: ``v`` [E] becomes V[t]; writes into ``kept``
    what backward needs of the step (the current with the input decayed, whose dH/dk reads it; H itself otherwise,
    which spares backward the replay), the spike (the layer's output) and the spike as a byte (kept too)."""

    @njit(cache=True)
    def forward(x, feedback, v, k, v_th, rest, kept, spike, spike_byte):
        for j in range(v.shape[0]):
            i = read(x, j) + read(feedback, j)
            h, fired, v[j] = neuron_step(v=v[j], k=k[j], x=i, v_th=v_th, rest=rest, soft=soft, decay_input=decay_input)
            kept[j] = i if decay_input else h
            write(spike, j, ONE if fired else ZERO)
            spike_byte[j] = 1 if fired else 0

    return forward


@lru_cache(maxsize=None)
def replay(*, soft: bool, decay_input: bool):
    """One step replayed: ``h`` = H[t] from the kept current and ``v`` (V[t-1], becomes V[t] in place)."""

    @njit(cache=True)
    def run(current, k, v, v_th, rest, h):
        for j in range(v.shape[0]):
            h[j], _, v[j] = neuron_step(
                v=v[j], k=k[j], x=current[j], v_th=v_th, rest=rest, soft=soft, decay_input=decay_input
            )

    return run


@lru_cache(maxsize=None)
def step_backward(*, soft: bool, decay_input: bool, detach_reset: bool, code: int):
    """One step back: ``grad_i`` (dL/dI[t]) from dL/dS[t] (the output's ``grad`` plus ``feedback`` = dL/dI[t+1] W,
    zeros on the last step), ``grad_v`` (dL/dV[t], becomes dL/dV[t-1] in place); with ``with_k``, dL/dk summed into
    ``grad_k`` per element. V[t-1] is the reset of the previous step's ``h_before`` and spike (``rest`` on the
    ``first`` step): the forward's selection, recomputed here rather than kept; spikes are read as bytes. ``first``
    and ``with_k`` are arguments, not constants of the compiled kernel: one compilation per option set."""

    @njit(cache=True)
    def backward(
        grad, feedback, h, spike, h_before, spike_before, current, k, v_th, v_reset, rest, alpha, first, with_k,
        grad_v, grad_k, grad_i,
    ):  # fmt: skip
        for j in range(grad_v.shape[0]):
            grad_s = read(grad, j) + read(feedback, j)
            sg = surrogate_grad(h[j] - v_th, code, alpha)
            gh = grad_s * sg + grad_v[j] * (ONE if soft else (ZERO if spike[j] else ONE))
            if not detach_reset:
                gh += grad_v[j] * sg * (-v_th if soft else v_reset - h[j])
            write(grad_i, j, gh * k[j] if decay_input else gh)
            if with_k:
                if first:
                    v_before = rest
                elif soft:
                    v_before = h_before[j] - v_th if spike_before[j] else h_before[j]
                else:
                    v_before = rest if spike_before[j] else h_before[j]
                grad_k[j] += gh * (current[j] - (v_before - rest) if decay_input else rest - v_before)
            grad_v[j] = gh * (ONE - k[j])

    return backward


# ALIF (plifnet.adaptive): the threshold theta = v_threshold + adaptation * A[t-1] adapts with the spikes,
# A[t] = A[t-1] + k_a (S[t] - A[t-1]); the state is V and A, the leaks k and k_a, one per element.


@njit(inline="always", cache=True)
def alif_step(v, a, k, k_a, x, v_th, adaptation, rest, soft, decay_input):
    """One ALIF step for one element, in float32, as ``ALIF.step`` computes it: H, theta, fired, V[t], A[t]."""
    if decay_input:
        h = v + k * (x - (v - rest))
    else:
        h = v - k * (v - rest) + x
    theta = v_th + adaptation * a
    fired = h - theta >= 0
    s = ONE if fired else ZERO
    if soft:
        v_next = h - theta * s
    else:
        v_next = rest if fired else h
    return h, theta, fired, v_next, a + k_a * (s - a)


@lru_cache(maxsize=None)
def alif_forward(*, soft: bool, decay_input: bool):
    """ALIF's step forward in place (``v``, ``a``); writes the current, the spike and its byte."""

    @njit(cache=True)
    def forward(x, feedback, v, a, k, k_a, v_th, adaptation, rest, current, spike, spike_byte):
        for j in range(v.shape[0]):
            i = x[j] + feedback[j]
            _, _, fired, v[j], a[j] = alif_step(v[j], a[j], k[j], k_a[j], i, v_th, adaptation, rest, soft, decay_input)
            current[j] = i
            spike[j] = ONE if fired else ZERO
            spike_byte[j] = 1 if fired else 0

    return forward


@lru_cache(maxsize=None)
def alif_replay(*, soft: bool, decay_input: bool):
    """H[t], theta[t], V[t-1] and A[t-1] of one step from its kept current (``v``, ``a`` advance in place)."""

    @njit(cache=True)
    def run(current, k, k_a, v, a, v_th, adaptation, rest, h, theta, v_before, a_before):
        for j in range(v.shape[0]):
            v_before[j], a_before[j] = v[j], a[j]
            h[j], theta[j], _, v[j], a[j] = alif_step(
                v[j], a[j], k[j], k_a[j], current[j], v_th, adaptation, rest, soft, decay_input
            )

    return run


@lru_cache(maxsize=None)
def alif_backward(*, soft: bool, decay_input: bool, detach_reset: bool, code: int):
    """One ALIF step back: dL/dI[t] into ``grad_i``; dL/dV and dL/dA carried back in place; dL/dk, dL/dk_a summed
    per element. The spike that adapts A carries the surrogate gradient (as in ``ALIF.step``)."""

    @njit(cache=True)
    def backward(
        grad,
        feedback,
        h,
        theta,
        spike,
        v_before,
        a_before,
        current,
        k,
        k_a,
        adaptation,
        v_reset,
        rest,
        alpha,
        grad_v,
        grad_a,
        grad_k,
        grad_k_a,
        grad_i,
    ):
        for j in range(grad_v.shape[0]):
            s = ONE if spike[j] else ZERO
            sg = surrogate_grad(h[j] - theta[j], code, alpha)
            grad_s = (grad[j] + feedback[j]) + grad_a[j] * k_a[j]  # feedback: zeros on the last step
            if not detach_reset:  # the reset's own dependence on S
                grad_s += grad_v[j] * (-theta[j] if soft else v_reset - h[j])
            grad_h = grad_s * sg + grad_v[j] * (ONE if soft else ONE - s)
            grad_theta = -grad_s * sg - (grad_v[j] * s if soft else ZERO)
            grad_k_a[j] += grad_a[j] * (s - a_before[j])
            grad_a[j] = grad_theta * adaptation + grad_a[j] * (ONE - k_a[j])
            grad_i[j] = grad_h * k[j] if decay_input else grad_h
            grad_k[j] += grad_h * (current[j] - (v_before[j] - rest) if decay_input else rest - v_before[j])
            grad_v[j] = grad_h * (ONE - k[j])

    return backward


# adLIF (plifnet.adaptive): an adaptation current W, fed by the membrane (a) and by the spikes (b), is taken from the
# input, W[t] = W[t-1] + k_w (a (V[t-1] - rest) - W[t-1]) + b S[t-1]; the state is V, W and S[t-1].


@njit(inline="always", cache=True)
def adlif_step(v, w, s, k, k_w, a, b, x, v_th, rest, soft, decay_input):
    """One adLIF step for one element, in float32, as ``AdLIF.step`` computes it (``s``: S[t-1] as 0 or 1):
    W[t], then PLIF's step on the input less W[t]: H[t], fired, V[t]."""
    w_next = w + k_w * (a * (v - rest) - w) + b * s
    h, fired, v_next = neuron_step(v=v, k=k, x=x - w_next, v_th=v_th, rest=rest, soft=soft, decay_input=decay_input)
    return w_next, h, fired, v_next


@lru_cache(maxsize=None)
def adlif_forward(*, soft: bool, decay_input: bool):
    """adLIF's step forward in place (``v``, ``w``, ``s``); writes the current, the spike and its byte."""

    @njit(cache=True)
    def forward(x, feedback, v, w, s, k, k_w, a, b, v_th, rest, current, spike, spike_byte):
        for j in range(v.shape[0]):
            i = x[j] + feedback[j]
            w[j], _, fired, v[j] = adlif_step(
                v[j], w[j], s[j], k[j], k_w[j], a[j], b[j], i, v_th, rest, soft, decay_input
            )
            s[j] = ONE if fired else ZERO
            current[j] = i
            spike[j] = s[j]
            spike_byte[j] = 1 if fired else 0

    return forward


@lru_cache(maxsize=None)
def adlif_replay(*, soft: bool, decay_input: bool):
    """H[t], W[t] and V[t-1] of one step from its kept current (``v``, ``w``, ``s`` advance in place)."""

    @njit(cache=True)
    def run(current, k, k_w, a, b, v, w, s, v_th, rest, h, w_now, v_before):
        for j in range(v.shape[0]):
            v_before[j] = v[j]
            w[j], h[j], fired, v[j] = adlif_step(
                v[j], w[j], s[j], k[j], k_w[j], a[j], b[j], current[j], v_th, rest, soft, decay_input
            )
            w_now[j] = w[j]
            s[j] = ONE if fired else ZERO

    return run


@lru_cache(maxsize=None)
def adlif_backward(*, soft: bool, decay_input: bool, detach_reset: bool, code: int):
    """One adLIF step back: dL/dI[t] into ``grad_i``; dL/dV (``grad_v``: of V[t], becomes of V[t-1]) and dL/dW
    (``grad_w``: of W[t+1], becomes of W[t]) carried back in place; dL/dk, dL/dk_w, dL/da, dL/db summed per element.
    ``w_before`` and ``spike_before`` are W[t-1] and S[t-1] (zeros on the first step); S[t] reaches W[t+1] through
    b with its surrogate gradient, as in ``AdLIF.step``."""

    @njit(cache=True)
    def backward(
        grad, feedback, h, spike, w_now, w_before, v_before, spike_before, current, k, k_w, a, b,
        v_th, v_reset, rest, alpha, grad_v, grad_w, grad_k, grad_k_w, grad_a, grad_b, grad_i,
    ):  # fmt: skip
        for j in range(grad_v.shape[0]):
            s = ONE if spike[j] else ZERO
            sg = surrogate_grad(h[j] - v_th, code, alpha)
            grad_s = (grad[j] + feedback[j]) + b[j] * grad_w[j]  # feedback: zeros on the last step; b: via W[t+1]
            if not detach_reset:  # the reset's own dependence on S
                grad_s += grad_v[j] * (-v_th if soft else v_reset - h[j])
            grad_h = grad_s * sg + grad_v[j] * (ONE if soft else ONE - s)
            if decay_input:  # H = V + k ((I - W) - (V - rest))
                grad_in = grad_h * k[j]
                grad_k[j] += grad_h * ((current[j] - w_now[j]) - (v_before[j] - rest))
            else:  # H = V - k (V - rest) + (I - W)
                grad_in = grad_h
                grad_k[j] += grad_h * (rest - v_before[j])
            grad_i[j] = grad_in
            gw = grad_w[j] * (ONE - k_w[j]) - grad_in  # dL/dW[t]: through W[t+1] and H[t]
            grad_k_w[j] += gw * (a[j] * (v_before[j] - rest) - w_before[j])
            grad_a[j] += gw * k_w[j] * (v_before[j] - rest)
            grad_b[j] += gw * (ONE if spike_before[j] else ZERO)
            grad_v[j] = grad_h * (ONE - k[j]) + gw * k_w[j] * a[j]
            grad_w[j] = gw

    return backward


# What plifnet.kernels.recurrent calls, with the same arguments as plifnet.kernels.recurrent_gpu's: the arrays of one
# step (rows of steps(), or contiguous tensors), the options; each passed to its compiled kernel as a flat numpy view.


def run_forward(x, feedback, v, k, kept, spike, spike_byte, *, options) -> None:
    """``I = X[t] + R[t]`` and the step: ``v`` becomes V[t] in place; writes what backward keeps of the step (the
    current with ``options.decay_input``, else H), the spike and its byte."""
    step_forward(soft=options.soft_reset, decay_input=options.decay_input)(
        *rows(x, feedback, v, k), np.float32(options.v_threshold), np.float32(options.rest),
        *rows(kept, spike, spike_byte),
    )  # fmt: skip


def run_replay(current, k, v, h, *, options) -> None:
    """``h`` = H[t] from the kept current and ``v`` = V[t-1], which becomes V[t] in place."""
    replay(soft=options.soft_reset, decay_input=options.decay_input)(
        *rows(current, k, v), np.float32(options.v_threshold), np.float32(options.rest), *rows(h)
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
    options,
    last,
    first,
    with_k,
) -> None:
    """One step back: ``grad_i`` = dL/dI[t] from dL/dS[t] (``grad``, plus ``feedback`` = dL/dI[t+1] W unless
    ``last``); ``grad_v`` = dL/dV[t] becomes dL/dV[t-1]; dL/dk added into ``grad_k`` per element (``with_k``)."""
    grad, feedback = rows(grad, feedback)
    step_backward(**backward_options(options))(
        grad,
        np.zeros_like(grad) if last else feedback,
        *rows(h, spike, h_before, spike_before, current, k),
        np.float32(options.v_threshold),
        np.float32(options.v_reset or 0.0),
        np.float32(options.rest),
        np.float32(options.surrogate.alpha),
        first,
        with_k,
        *rows(grad_v, grad_k, grad_i),
    )


def backward_options(options) -> dict:
    """What every backward kernel is compiled for: the reset, the input's decay, the reset's detachment, the surrogate."""
    return dict(
        soft=options.soft_reset,
        decay_input=options.decay_input,
        detach_reset=options.detach_reset,
        code=kernel_code(options.surrogate),
    )


def steps(*tensors) -> list:
    """Each tensor [T, ...] as a numpy view [T, E], one row a step."""
    return [_numpy(t).reshape(len(t), -1) for t in tensors]


def rows(*tensors) -> list:
    """Each tensor as a flat numpy view; a numpy array (a row of :func:`steps`) passes as it is."""
    return [t if isinstance(t, np.ndarray) else _numpy(t).ravel() for t in tensors]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's own memory as numpy (a bfloat16 one, which numpy has not, as its bits). Contiguous only: numpy
    would reshape or ravel another layout into a copy, and what a kernel wrote there would be lost."""
    if not tensor.is_contiguous():
        raise ValueError(f"the recurrent kernels take contiguous tensors, got strides {tensor.stride()}")
    return (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()
