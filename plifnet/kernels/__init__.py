"""Fused multi-step neurons: the same function as :func:`plifnet.neurons.multi_step`, in one kernel.

``fused_multi_step(x_seq, k, ...)`` computes exactly what the per-step reference computes, as one
``torch.autograd.Function`` whose forward and backward are single passes over ``[T, E]``:

* ``cpu``: numba kernels (:mod:`plifnet.kernels.cpu`), compiled once and cached on disk;
* ``triton``: Triton kernels for CUDA tensors (:mod:`plifnet.kernels.gpu`).

Saved for backward: on the CPU the input alone (the backward replays the forward from it); on CUDA
``H`` in float32 (``T * E * 4`` bytes), and the input where the tau gradient needs it. The reference
keeps several tensors per step. The tau gradient is summed over time by the kernel, per element (or,
for one k on the CPU, per block of elements, in order), and then by ``torch.sum``: the same bits on
every run.
"""

from __future__ import annotations

import importlib.util

import torch

from plifnet.errors import UserError
from plifnet.kernels.memory import keep_freed_memory_unless_opted_out  # noqa: F401  (re-exported)
from plifnet.options import BACKENDS, NeuronOptions  # noqa: F401  (BACKENDS: re-exported)
from plifnet.surrogates import kernel_code

# Looked up once, at import (find_spec imports nothing): asked at every forward of every layer, and
# read as a constant where torch.compile traces a network.
AVAILABLE = {
    "reference": True,
    "compile": True,
    "cpu": importlib.util.find_spec("numba") is not None,
    "triton": importlib.util.find_spec("triton") is not None and torch.cuda.is_available(),
}


def available(backend: str) -> bool:
    return AVAILABLE.get(backend, False)


def resolve(x: torch.Tensor, *, options: NeuronOptions) -> str:
    """The fused kernel that runs the built-in step on ``x`` (``cpu``, ``triton``), or ``reference``
    where none is asked for (``reference``, ``compile``) or none applies (``auto``); an explicit
    kernel that cannot run ``x`` is refused."""
    backend = options.backend
    if backend in ("reference", "compile"):
        return "reference"
    if kernel_code(options.surrogate) is None:  # a plug-in's derivative runs through the compiled step
        if backend != "auto":
            raise UserError(
                f"the fused kernels know the built-in surrogates only, not {type(options.surrogate).__name__}"
            )
        return "reference"
    if x.dtype == torch.float64:  # the kernels compute in float32
        if backend != "auto":
            raise UserError(f"backend {backend!r} computes in float32; use 'reference' for float64 input")
        return "reference"
    if backend != "auto":
        device_ok = {"cpu": x.device.type == "cpu", "triton": x.device.type == "cuda"}[backend]
        if not device_ok:
            raise UserError(f"backend {backend!r} cannot run tensors on {x.device}")
        if not available(backend):
            raise UserError(
                f"backend {backend!r} is not available here: install {'numba' if backend == 'cpu' else 'triton'}"
            )
        return backend
    if x.device.type == "cpu" and available("cpu"):
        return "cpu"
    if x.device.type == "cuda" and available("triton"):
        return "triton"
    return "reference"


class FusedMultiStep(torch.autograd.Function):
    """x [T, N, ...] (or [N, ...], the same input at each of ``time_steps`` steps) and k (scalar
    tensor, or [C] for per-channel) -> spikes [T, N, ...]."""

    @staticmethod
    def forward(ctx, x, k, time_steps, options, backend):
        rows = 1 if time_steps else x.shape[0]  # time steps of the input that the kernels read
        step_shape = x.shape if time_steps else x.shape[1:]
        # the CPU kernels read and write bfloat16 (autocast's dtype) themselves: no float32 copies of
        # the input, the spikes and their gradients; a constant input (one step) is read in float32
        native = torch.bfloat16 if backend == "cpu" and x.dtype == torch.bfloat16 else torch.float32
        flat = x.reshape(rows, -1).to(torch.float32 if time_steps else native).contiguous()
        k_vec = k.detach().reshape(-1).to(torch.float32).contiguous()
        channels = k_vec.numel()
        inner = step_shape[1:].numel() // channels if channels > 1 else flat.shape[1]
        layout = dict(steps=time_steps or rows, channels=channels, inner=inner)
        if backend == "cpu":  # nothing but the input is kept: the backward replays the forward from it
            spikes = _kernels(backend).forward(flat, k_vec, **layout, options=options, dtype=native)
            ctx.save_for_backward(flat, k_vec)
        else:  # H, and the input for dH/dk = X - (V[t-1] - rest): from H alone, (H - V[t-1]) / k loses
            # precision as 1/k grows and is 0/0 at k = 0 (sigmoid(w) underflows at w < -104)
            spikes, h = _kernels(backend).forward(flat, k_vec, **layout, options=options)
            ctx.save_for_backward(flat.float() if options.decay_input else None, k_vec, h)
        ctx.meta = (x.shape, x.dtype, native, rows, channels, inner, options, backend, k.shape)
        return spikes.view(-1, *step_shape).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_spikes):
        x, k_vec, *h = ctx.saved_tensors
        shape, dtype, native, rows, channels, inner, options, backend, k_shape = ctx.meta
        grad = grad_spikes.reshape(grad_spikes.shape[0], -1).to(native).contiguous()
        if backend == "cpu":
            grad_x, grad_k_parts = _kernels(backend).backward(
                grad, x, k_vec, channels=channels, inner=inner, options=options
            )
        else:
            grad_x, grad_k_parts = _kernels(backend).backward(
                grad, h[0], x, k_vec, input_steps=rows, channels=channels, inner=inner, options=options
            )
        grad_k = None
        if ctx.needs_input_grad[1]:
            if channels > 1:
                grad_k = grad_k_parts.view(-1, channels, inner).sum((0, 2)).view(k_shape)
            else:
                grad_k = grad_k_parts.sum().view(k_shape)
        return grad_x.view(shape).to(dtype), grad_k, None, None, None


def _kernels(backend: str):
    if backend == "cpu":
        from plifnet.kernels import cpu_ops

        return cpu_ops
    from plifnet.kernels import gpu

    return gpu


def fused_multi_step(x_seq, k, *, options: NeuronOptions, backend: str = "cpu", time_steps: int | None = None):
    """Fused equivalent of :func:`plifnet.neurons.multi_step` on ``backend`` (``cpu`` or ``triton``);
    ``k`` is a float or a tensor (a scalar, or ``[C]`` per channel).

    With ``time_steps``, ``x_seq`` is one step's input ``[N, ...]``, the same at every step (a static
    image's current): it is read once per step and its gradient summed over time inside the kernel,
    without the ``[T, N, ...]`` copy that ``x.expand(T, ...)`` would cost.
    """
    if not torch.is_tensor(k):
        k = torch.tensor(float(k), dtype=torch.float32, device=x_seq.device)
    return FusedMultiStep.apply(x_seq, k, time_steps, options, backend)


class MaxPool2x2(torch.autograd.Function):
    """``max_pool2d(x, 2, 2)`` on the CPU: one pass, and one byte per output kept for backward
    (the window position of the maximum) instead of the input and an int64 index."""

    @staticmethod
    def forward(ctx, x):
        height, width = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2  # odd sizes: the last row/column drops
        native = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32  # the kernel's dtypes
        flat = x[..., :height, :width].reshape(-1, height, width).to(native).contiguous()
        out, index = _kernels("cpu").max_pool2x2_forward(flat)
        ctx.save_for_backward(index)
        ctx.shape, ctx.dtype = x.shape, x.dtype
        return out.view(*x.shape[:-2], height // 2, width // 2).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (index,) = ctx.saved_tensors
        grad = (
            grad_out.reshape(index.shape)
            .to(torch.bfloat16 if ctx.dtype == torch.bfloat16 else torch.float32)
            .contiguous()
        )
        grad_in = _kernels("cpu").max_pool2x2_backward(grad, index)
        grad_in = grad_in.view(*ctx.shape[:-2], *grad_in.shape[-2:])
        if grad_in.shape != ctx.shape:
            grad_in = torch.nn.functional.pad(
                grad_in, (0, ctx.shape[-1] - grad_in.shape[-1], 0, ctx.shape[-2] - grad_in.shape[-2])
            )
        return grad_in.to(ctx.dtype)


def max_pool2x2(x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``F.max_pool2d(x, 2, 2)``, with the CPU kernel where ``backend`` allows it; same values and gradients."""
    if backend in ("auto", "cpu") and x.device.type == "cpu" and available("cpu"):
        return MaxPool2x2.apply(x)
    pooled = torch.nn.functional.max_pool2d(x.reshape(-1, *x.shape[-3:]), 2, 2)  # it takes 3-D or 4-D input
    return pooled.view(*x.shape[:-2], *pooled.shape[-2:])


def binary_as_bytes(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as uint8 where every value is 0 or 1 (exact: a quarter of float32's bytes), else None;
    on the CPU one pass that converts and checks (:func:`plifnet.kernels.cpu.binary_to_bytes`)."""
    if x.device.type == "cpu" and available("cpu") and x.dtype == torch.float32 and x.is_contiguous() and x.dim():
        from plifnet.kernels import cpu

        out = torch.empty(x.shape, dtype=torch.uint8)
        other = cpu.binary_to_bytes(x.reshape(x.shape[0], -1).numpy(), out.view(x.shape[0], -1).numpy())
        return out if other == 0 else None
    return x.to(torch.uint8) if torch.all((x == 0) | (x == 1)) else None
