"""A recurrent layer of plifnet's built-in step (PLIF, LIF, IF) as one autograd node, linear in T.

    I[t] = X[t] + S[t-1] W^T        X [T, N, F]: the input current (W_in x + b); W [F, F]; S[-1] = 0
    H[t] = leaky_charge(V[t-1], I[t], k);  S[t] = heaviside(H[t] - v_threshold);  V[t] = reset_potential(H[t], S[t])

the equations of :mod:`plifnet.equations` (the step loop's own), so that the spikes equal the step loop's bit for bit.

Forward: one matrix product per step (the feedback) and the step's element-wise operations, for a built-in
surrogate one kernel pass (numba's on the CPU, :mod:`~plifnet.kernels.recurrent_cpu`; Triton's on CUDA,
:mod:`~plifnet.kernels.recurrent_gpu`), torch operations otherwise; nothing of autograd's. Kept for backward: the current
``I`` (float32) and the spikes (one byte) of every step, 5 bytes per neuron and step, whatever T; where the input is not
decayed the kernels keep ``H`` instead of ``I`` (its dH/dk does not read I). Backward: replays ``H`` from them
(element-wise) where it was not kept, then runs back through time with the product ``dS[t-1] += dI[t] W`` per step and
``dW += dI[t]^T S[t-1]`` per 32 steps (:class:`_FeedbackBackward`). The reference's step loop keeps an autograd graph
of about ten nodes per step. Half precision is computed in float32, as the other kernels do; the feedback products,
forward and backward, are bf16 under autocast, as the loop's; the surrogate is any :class:`Surrogate`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from plifnet.equations import leaky_charge, reset_potential
from plifnet.kernels import available
from plifnet.kernels.memory import keep_freed_memory_unless_opted_out
from plifnet.options import NeuronOptions
from plifnet.surrogates import kernel_code


class RecurrentMultiStep(torch.autograd.Function):
    """``x [T, N, F]``, ``weight [F, F]``, ``k`` (a scalar tensor or ``[F]``) -> spikes ``[T, N, F]``.

    Fresh memory costs the kernel's page faults on first touch (measured: 90 us a step for two fresh ``[T, N, F]``
    float32 buffers at N x F = 128 x 256): forward writes only what it returns and keeps (the spikes as float32 and as
    bytes, each step's current), and the step's temporaries are small blocks that the allocator serves again."""

    @staticmethod
    def forward(ctx, x, weight, k, options: NeuronOptions, connection=None, kernel=None):
        w32, k32 = weight.float(), k.detach().float()
        product = _product(connection, w32)
        elementwise = _elementwise(x, options, kernel)
        # bfloat16 with bf16 products (autocast's, or a bf16 model's): the CPU kernels read the input and the feedback
        # and write the spikes in it as they are, so no float32 copy of them is made (nor of their gradients)
        products = _products_dtype(x)
        as_is = bool(elementwise and elementwise.READS_BFLOAT16) and torch.bfloat16 == x.dtype
        as_is = as_is and torch.bfloat16 in (products, weight.dtype)
        x_in = (x if as_is else x.float()).contiguous()  # each step's row a view of it, for the kernels
        if x.device.type == "cpu" and elementwise is not None:
            keep_freed_memory_unless_opted_out()  # as the feed-forward kernels: no page faults at every step
        step_shape, step_float = x.shape[1:], dict(dtype=torch.float32, device=x.device)
        k_elements = k32.expand(step_shape).contiguous() if elementwise else None
        v, currents, spikes = torch.full(step_shape, options.rest, **step_float), [], []
        if elementwise:
            # the kernels write each step's spikes into the output and, as bytes, into what backward keeps; with what
            # backward keeps of each step's current, all taken as the kernels' views once and indexed per step
            out, kept = torch.empty_like(x_in), torch.empty(x.shape, **step_float)
            spike_bytes = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
            x_rows, kept_rows, out_rows, byte_rows = elementwise.steps(x_in, kept, out, spike_bytes)
            v_row, k_row = elementwise.rows(v, k_elements)
        for t, x_t in enumerate(x_in.unbind(0)):
            # the feedback of S[-1] = 0 too, as the loop computes (and the synaptic counter counts) it; under
            # autocast the product is bf16, added to the float32 current as the loop adds it (an exact widening)
            feedback = product(spikes[-1] if spikes else torch.zeros_like(x_t))
            feedback = feedback if as_is else feedback.float()
            if elementwise:
                elementwise.run_forward(
                    x_rows[t], feedback, v_row, k_row, kept_rows[t], out_rows[t], byte_rows[t], options=options
                )
                spikes.append(out[t])
            else:
                current = x_t + feedback
                h = leaky_charge(v, current, k32, options=options)
                spike = ((h - options.v_threshold) >= 0).to(h.dtype)  # the surrogate's forward: heaviside(0) = 1
                v = reset_potential(h, spike, options=options)
                currents.append(current)
                spikes.append(spike)
        if elementwise:
            ctx.save_for_backward(w32, k32, spike_bytes, kept)
        else:
            out = torch.stack(spikes)
            spike_bytes = out.to(torch.uint8)
            ctx.save_for_backward(w32, k32, spike_bytes, *currents)
        ctx.options, ctx.dtypes = options, (x.dtype, weight.dtype, k.dtype, k.shape)
        # backward runs the kernels the forward ran (what they kept depends on them), in the forward's dtypes
        ctx.elementwise, ctx.products, ctx.as_is = elementwise, products, as_is
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_spikes):
        w32, k, spike_bytes, *currents = ctx.saved_tensors
        elementwise = ctx.elementwise
        if elementwise:
            (currents,) = currents  # [T, N, F]: each step's current, or H where the input is not decayed
        steps = len(currents)
        options, (x_dtype, w_dtype, k_dtype, k_shape) = ctx.options, ctx.dtypes
        grad = (grad_spikes if ctx.as_is else grad_spikes.float()).contiguous()  # as_is: dL/dI in bf16 too
        grad_i = torch.empty_like(grad)
        grad_k = torch.zeros_like(currents[0]) if ctx.needs_input_grad[2] else None
        grad_v = torch.zeros_like(currents[0])  # dL/dV[t], carried back
        v = torch.full_like(currents[0], options.rest)
        # H[t] replayed from the currents, the forward's arithmetic (V[t-1] from it step by step, where it is read);
        # the kernels kept H itself where the input is not decayed (dH/dk does not read the current then)
        if elementwise:
            k = k.expand(currents[0].shape).contiguous()
            current_rows, byte_rows, grad_rows, grad_i_rows = elementwise.steps(currents, spike_bytes, grad, grad_i)
            k_row, v_row, grad_v_row = elementwise.rows(k, v, grad_v)
            (grad_k_row,) = elementwise.rows(grad_v if grad_k is None else grad_k)  # (not written without with_k)
            h_rows = current_rows
            if options.decay_input:
                (h_rows,) = elementwise.steps(torch.empty_like(currents))
                for t in range(steps):
                    elementwise.run_replay(current_rows[t], k_row, v_row, h_rows[t], options=options)
        else:
            h_all, v_before = [], []
            for current, spike in zip(currents, spike_bytes):
                v_before.append(v)
                h_all.append(leaky_charge(v, current, k, options=options))
                v = reset_potential(h_all[-1], spike.float(), options=options)
        feedback = _FeedbackBackward(
            w32, grad_i, spike_bytes, ctx.products, with_weight=ctx.needs_input_grad[1], as_is=ctx.as_is
        )
        grad_s_next = None  # dL/dS[t] through I[t+1] = ... + S[t] W^T
        for t in reversed(range(steps)):
            before = max(t - 1, 0)  # the previous step's H and spike: V[t-1] (not read on the first step)
            if elementwise:
                elementwise.run_backward(
                    grad_rows[t],
                    grad_rows[t] if grad_s_next is None else grad_s_next,  # (not read on the last step)
                    h_rows[t],
                    byte_rows[t],
                    h_rows[before],
                    byte_rows[before],
                    current_rows[t],
                    k_row,
                    grad_v_row,
                    grad_k_row,
                    grad_i_rows[t],
                    options=options,
                    last=grad_s_next is None,
                    first=t == 0,
                    with_k=grad_k is not None,
                )
            else:
                grad_i[t], grad_v = _step_back(
                    grad[t],
                    grad_s_next,
                    h_all[t],
                    spike_bytes[t].float(),
                    v_before[t],
                    currents[t],
                    k,
                    grad_v,
                    grad_k,
                    options,
                )
            if t > 0:
                grad_s_next = feedback.step(t)
        grad_w = feedback.grad_weight
        if grad_k is not None:
            grad_k = (grad_k.sum() if len(k_shape) == 0 else grad_k.reshape(-1, grad_k.shape[-1]).sum(0)).view(k_shape)
            grad_k = grad_k.to(k_dtype)
        return grad_i.to(x_dtype), None if grad_w is None else grad_w.to(w_dtype), grad_k, None, None, None


class RecurrentALIF(torch.autograd.Function):
    """An ALIF recurrent layer (:class:`plifnet.adaptive.ALIF`'s step) on the CPU: ``x [T, N, F]``, ``weight [F, F]``,
    ``k`` and ``k_adapt`` (scalar tensors or ``[F]``) -> spikes ``[T, N, F]``, as :class:`RecurrentMultiStep` does
    it for one leak: numba step kernels around the per-step products; kept: the current and the spike's byte."""

    @staticmethod
    def forward(ctx, x, weight, k, k_adapt, options: NeuronOptions, connection=None):
        from plifnet.kernels import recurrent_cpu

        keep_freed_memory_unless_opted_out()
        x32, w32 = x.float().contiguous(), weight.float()
        product = _product(connection, w32)
        k32, ka32 = (value.detach().float().expand(x32.shape[1:]).contiguous() for value in (k, k_adapt))
        v, a = torch.full_like(x32[0], options.rest), torch.zeros_like(x32[0])
        out, currents = torch.empty_like(x32), torch.empty_like(x32)
        spike_bytes = torch.empty(x32.shape, dtype=torch.uint8)
        # numpy views taken once, indexed per step: a tensor's .numpy() costs more than the kernel at ECG's 36 x 64
        kernel = recurrent_cpu.alif_forward(soft=options.soft_reset, decay_input=options.decay_input)
        levels, state = _alif_levels(options), recurrent_cpu.rows(v, a, k32, ka32)
        x_rows, current_rows, out_rows, byte_rows = recurrent_cpu.steps(x32, currents, out, spike_bytes)
        for t in range(len(x32)):
            feedback = product(out[t - 1] if t else torch.zeros_like(x32[0])).float()  # S[-1] = 0, as the loop's
            kernel(
                x_rows[t], *recurrent_cpu.rows(feedback), *state, *levels, current_rows[t], out_rows[t], byte_rows[t]
            )
        ctx.save_for_backward(w32, k32, ka32, spike_bytes, currents)
        ctx.options, ctx.meta = options, (x.dtype, weight.dtype, k.dtype, k.shape, k_adapt.shape)
        ctx.products = _products_dtype(x)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_spikes):
        from plifnet.kernels import recurrent_cpu

        w32, k, k_a, spike_bytes, currents = ctx.saved_tensors
        options, (x_dtype, w_dtype, k_dtype, k_shape, ka_shape) = ctx.options, ctx.meta
        grad = grad_spikes.float().contiguous()
        v, a = torch.full_like(currents[0], options.rest), torch.zeros_like(currents[0])
        # (H, theta, V[t-1], A[t-1]) of every step, replayed from the currents
        replayed = [torch.empty_like(currents) for _ in range(4)]
        replay = recurrent_cpu.alif_replay(soft=options.soft_reset, decay_input=options.decay_input)
        levels, leaks, state = _alif_levels(options), recurrent_cpu.rows(k, k_a), recurrent_cpu.rows(v, a)
        (current_rows,), replayed_rows = recurrent_cpu.steps(currents), recurrent_cpu.steps(*replayed)
        for t, current in enumerate(current_rows):
            replay(current, *leaks, *state, *levels, *(rows[t] for rows in replayed_rows))
        grad_i = torch.empty_like(grad)
        feedback = _FeedbackBackward(w32, grad_i, spike_bytes, ctx.products)
        grad_v, grad_a, grad_k, grad_ka = (torch.zeros_like(currents[0]) for _ in range(4))
        carried = recurrent_cpu.rows(grad_v, grad_a, grad_k, grad_ka)
        grad_rows, byte_rows, grad_i_rows = recurrent_cpu.steps(grad, spike_bytes, grad_i)
        (grad_s_next,) = recurrent_cpu.rows(torch.zeros_like(currents[0]))  # dL/dS[T] through I[T+1]: none
        _, adaptation, rest = levels
        reset, alpha = _reset_and_alpha(options)
        kernel = recurrent_cpu.alif_backward(**recurrent_cpu.backward_options(options))
        for t in reversed(range(len(currents))):
            h, theta, v_before, a_before = (rows[t] for rows in replayed_rows)
            kernel(
                grad_rows[t],
                grad_s_next,
                h, theta, byte_rows[t], v_before, a_before, current_rows[t], *leaks,
                adaptation, reset, rest, alpha,
                *carried,
                grad_i_rows[t],
            )  # fmt: skip
            if t > 0:
                (grad_s_next,) = recurrent_cpu.rows(feedback.step(t))  # dL/dS[t-1] = dL/dI[t] W

        return (
            grad_i.to(x_dtype),
            feedback.grad_weight.to(w_dtype),
            _per_parameter(grad_k, k_shape).to(k_dtype),
            _per_parameter(grad_ka, ka_shape).to(k_dtype),
            None,
            None,
        )


def _reset_and_alpha(options: NeuronOptions) -> tuple:
    """The backward kernels' V_reset (0 for the soft reset) and surrogate alpha, as float32 scalars."""
    return np.float32(options.v_reset or 0.0), np.float32(options.surrogate.alpha)


def _alif_levels(options: NeuronOptions) -> tuple:
    return np.float32(options.v_threshold), np.float32(options.adaptation), np.float32(options.rest)


@torch.compiler.disable  # as recurrent_multi_step
def recurrent_alif(x: torch.Tensor, connection: torch.nn.Linear, k, k_adapt, *, options: NeuronOptions) -> torch.Tensor:
    """Spikes ``[T, N, F]`` of an ALIF layer with the feedback ``connection(S[t-1])`` (:class:`RecurrentALIF`, CPU)."""
    return RecurrentALIF.apply(x, connection.weight, k, k_adapt, options, connection)


class RecurrentAdLIF(torch.autograd.Function):
    """An adLIF recurrent layer (:class:`plifnet.adaptive.AdLIF`'s step) on the CPU: ``x [T, N, F]``, ``weight
    [F, F]``, the leaks ``k``, ``k_adapt`` and the couplings ``a``, ``b`` (scalar tensors or ``[F]``) -> spikes
    ``[T, N, F]``, as :class:`RecurrentALIF` does it: numba step kernels around the per-step products; kept: the
    current and the spike's byte; backward replays H, W and V[t-1] and carries dL/dV and dL/dW back."""

    @staticmethod
    def forward(ctx, x, weight, k, k_adapt, a, b, options: NeuronOptions, connection=None):
        from plifnet.kernels import recurrent_cpu

        keep_freed_memory_unless_opted_out()
        x32, w32 = x.float().contiguous(), weight.float()
        product = _product(connection, w32)
        k32, kw32, a32, b32 = (
            value.detach().float().expand(x32.shape[1:]).contiguous() for value in (k, k_adapt, a, b)
        )
        v, w, s = torch.full_like(x32[0], options.rest), torch.zeros_like(x32[0]), torch.zeros_like(x32[0])
        out, currents = torch.empty_like(x32), torch.empty_like(x32)
        spike_bytes = torch.empty(x32.shape, dtype=torch.uint8)
        kernel = recurrent_cpu.adlif_forward(soft=options.soft_reset, decay_input=options.decay_input)
        levels = np.float32(options.v_threshold), np.float32(options.rest)
        state = recurrent_cpu.rows(v, w, s, k32, kw32, a32, b32)  # numpy views once, as RecurrentALIF's
        x_rows, current_rows, out_rows, byte_rows = recurrent_cpu.steps(x32, currents, out, spike_bytes)
        for t in range(len(x32)):
            feedback = product(out[t - 1] if t else torch.zeros_like(x32[0])).float()  # S[-1] = 0, as the loop's
            kernel(
                x_rows[t], *recurrent_cpu.rows(feedback), *state, *levels, current_rows[t], out_rows[t], byte_rows[t]
            )
        ctx.save_for_backward(w32, k32, kw32, a32, b32, spike_bytes, currents)
        ctx.options, ctx.meta = options, (x.dtype, weight.dtype, [(p.dtype, p.shape) for p in (k, k_adapt, a, b)])
        ctx.products = _products_dtype(x)
        return out.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_spikes):
        from plifnet.kernels import recurrent_cpu

        w32, k, k_w, a, b, spike_bytes, currents = ctx.saved_tensors
        options, (x_dtype, w_dtype, parameters) = ctx.options, ctx.meta
        grad = grad_spikes.float().contiguous()
        zeros = torch.zeros_like(currents[0])
        v, w, s = torch.full_like(zeros, options.rest), zeros.clone(), zeros.clone()
        replayed = [torch.empty_like(currents) for _ in range(3)]  # H[t], W[t], V[t-1] of every step
        replay = recurrent_cpu.adlif_replay(soft=options.soft_reset, decay_input=options.decay_input)
        levels = np.float32(options.v_threshold), np.float32(options.rest)
        parameter_rows, state = recurrent_cpu.rows(k, k_w, a, b), recurrent_cpu.rows(v, w, s)
        (current_rows,), replayed_rows = recurrent_cpu.steps(currents), recurrent_cpu.steps(*replayed)
        for t, current in enumerate(current_rows):
            replay(current, *parameter_rows, *state, *levels, *(rows[t] for rows in replayed_rows))
        h_rows, w_rows, v_before_rows = replayed_rows
        grad_i = torch.empty_like(grad)
        feedback = _FeedbackBackward(w32, grad_i, spike_bytes, ctx.products)
        grad_v, grad_w, *grad_parameters = (torch.zeros_like(zeros) for _ in range(6))
        carried = recurrent_cpu.rows(grad_v, grad_w, *grad_parameters)
        grad_rows, byte_rows, grad_i_rows = recurrent_cpu.steps(grad, spike_bytes, grad_i)
        no_current, no_spikes = recurrent_cpu.rows(zeros, torch.zeros_like(spike_bytes[0]))
        grad_s_next = no_current  # dL/dS[T] through I[T+1]: none
        (threshold, rest), (reset, alpha) = levels, _reset_and_alpha(options)
        kernel = recurrent_cpu.adlif_backward(**recurrent_cpu.backward_options(options))
        for t in reversed(range(len(currents))):
            w_before, spike_before = (w_rows[t - 1], byte_rows[t - 1]) if t else (no_current, no_spikes)
            kernel(
                grad_rows[t],
                grad_s_next,
                h_rows[t], byte_rows[t], w_rows[t], w_before, v_before_rows[t], spike_before, current_rows[t],
                *parameter_rows,
                threshold, reset, rest, alpha,
                *carried,
                grad_i_rows[t],
            )  # fmt: skip
            if t > 0:
                (grad_s_next,) = recurrent_cpu.rows(feedback.step(t))  # dL/dS[t-1] = dL/dI[t] W
        summed = [_per_parameter(g, shape).to(dtype) for g, (dtype, shape) in zip(grad_parameters, parameters)]
        return grad_i.to(x_dtype), feedback.grad_weight.to(w_dtype), *summed, None, None


@torch.compiler.disable  # as recurrent_multi_step
def recurrent_adlif(x: torch.Tensor, connection: torch.nn.Linear, k, k_adapt, a, b, *, options: NeuronOptions):
    """Spikes ``[T, N, F]`` of an adLIF layer with the feedback ``connection(S[t-1])`` (:class:`RecurrentAdLIF`)."""
    return RecurrentAdLIF.apply(x, connection.weight, k, k_adapt, a, b, options, connection)


def _per_parameter(summed: torch.Tensor, shape) -> torch.Tensor:
    """A gradient summed per element ``[N, F]`` as its parameter's: a scalar, or ``[F]`` per neuron."""
    return (summed.sum() if len(shape) == 0 else summed.reshape(-1, summed.shape[-1]).sum(0)).view(shape)


WEIGHT_GRAD_STEPS = 32  # steps whose dW = sum_t dI[t]^T S[t-1] is one product (of 32 N rows; one per step: 1.25x)


def _products_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the forward's feedback products: autocast's (bfloat16) where it is on, float32 otherwise."""
    on = torch.is_autocast_enabled(x.device.type)
    return torch.get_autocast_dtype(x.device.type) if on else torch.float32


class _FeedbackBackward:
    """The backward of the feedback ``I[t] = X[t] + S[t-1] W^T``, from the last step to the first: ``dL/dS[t-1] =
    dI[t] W`` and ``dW = sum_t dI[t]^T S[t-1]``, the latter over chunks of :data:`WEIGHT_GRAD_STEPS` steps. Both in the
    dtype of the forward's products (bfloat16 under autocast, as autograd computes the step loop's backward under
    it), their results added in float32."""

    def __init__(self, weight, grad_i, spike_bytes, dtype, with_weight: bool = True, as_is: bool = False):
        self.weight, self.grad_i, self.spike_bytes, self.dtype = weight.to(dtype), grad_i, spike_bytes, dtype
        self.as_is = as_is  # dL/dS[t-1] returned in the products' dtype (for kernels that read it so), not float32
        self.grad_weight = torch.zeros_like(weight) if with_weight else None
        self.summed_from = len(grad_i)  # dW holds the steps from here on

    def step(self, t: int) -> torch.Tensor:
        """Once dI[t] (t > 0) is written: dL/dS[t-1], and dW of the steps down to t when a chunk is full."""
        if self.grad_weight is not None and (t == 1 or self.summed_from - t == WEIGHT_GRAD_STEPS):
            grads = self.grad_i[t : self.summed_from].flatten(0, 1).T
            spikes = self.spike_bytes[t - 1 : self.summed_from - 1].flatten(0, 1)
            if self.dtype == torch.float32:
                self.grad_weight.addmm_(grads, spikes.float())
            else:
                self.grad_weight += (grads.to(self.dtype) @ spikes.to(self.dtype)).float()
            self.summed_from = t
        grad_s = self.grad_i[t].to(self.dtype) @ self.weight
        return grad_s if self.as_is else grad_s.float()


def _product(connection, weight):
    """The feedback product of a step: the recurrent ``nn.Linear`` called as a module, so that its forward hooks (the
    synaptic-operation counter's) see every step as they do in the step loop; ``F.linear`` without one."""
    return connection if connection is not None else (lambda spikes: F.linear(spikes, weight))


def fuses(x: torch.Tensor, options: NeuronOptions) -> bool:
    """Whether the fused ALIF layer runs ``x``: on the CPU with numba, for a built-in surrogate, below float64."""
    return _numba(x, options) and x.dtype != torch.float64


def _step_back(grad, grad_s_next, h, s, v_before, current, k, grad_v, grad_k, options: NeuronOptions):
    """One step back in torch operations: (dL/dI[t], dL/dV[t-1]); dL/dk added into ``grad_k`` in place."""
    grad_s = grad if grad_s_next is None else grad + grad_s_next
    surrogate = options.surrogate.derivative(h - options.v_threshold)
    # V[t] = H (1 - S) + v_reset S (hard) or H - v_threshold S (soft); S detached in the reset or not
    grad_h = grad_s * surrogate + grad_v * (1.0 if options.soft_reset else 1 - s)
    if not options.detach_reset:
        grad_h = grad_h + grad_v * surrogate * (-options.v_threshold if options.soft_reset else options.v_reset - h)
    if grad_k is not None:  # dH/dk = I - (V[t-1] - rest), or -(V[t-1] - rest) without the input decayed
        grad_k += grad_h * (current - (v_before - options.rest) if options.decay_input else options.rest - v_before)
    return (grad_h * k if options.decay_input else grad_h), grad_h * (1 - k)  # dH/dI: k, or 1 undecayed


def _elementwise(x: torch.Tensor, options: NeuronOptions, kernel: str | None = None):
    """The module of a step's element-wise kernels for ``x`` (their ``run_forward``, ``run_replay``, ``run_backward``):
    numba's on the CPU, Triton's on CUDA (``kernel="triton"`` also elsewhere: its interpreter on the CPU), for a
    built-in surrogate; None where neither runs (then torch operations)."""
    if kernel_code(options.surrogate) is None:
        return None
    if kernel == "triton" or (kernel is None and x.device.type == "cuda" and available("triton")):
        from plifnet.kernels import recurrent_gpu  # Triton is imported at the first such layer's run

        return recurrent_gpu
    if kernel is None and _numba(x, options):
        from plifnet.kernels import recurrent_cpu  # numba is imported at the first recurrent layer's run

        return recurrent_cpu
    return None


def _numba(x: torch.Tensor, options: NeuronOptions) -> bool:
    """Whether the step runs as numba kernels: on the CPU, with numba installed, for a built-in surrogate."""
    return x.device.type == "cpu" and available("cpu") and kernel_code(options.surrogate) is not None


@torch.compiler.disable  # one opaque node for torch.compile: its trace would unroll the T steps
def recurrent_multi_step(x: torch.Tensor, connection: torch.nn.Linear, k, *, options: NeuronOptions) -> torch.Tensor:
    """Spikes ``[T, N, F]`` of the built-in step with the feedback ``connection(S[t-1])`` (an ``nn.Linear`` without
    bias, ``S[t-1] W^T``) added to ``x [T, N, F]``; ``k`` a number or a tensor (a scalar, or ``[F]`` per neuron).
    Equal to the step loop (:meth:`BaseNode.forward` with ``feedback``): spikes bit for bit, gradients to float32
    rounding (dW summed over steps in another order)."""
    if not torch.is_tensor(k):
        k = torch.tensor(float(k), dtype=torch.float32, device=x.device)
    return RecurrentMultiStep.apply(x, connection.weight, k, options, connection)
