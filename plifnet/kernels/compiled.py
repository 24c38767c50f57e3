"""A neuron's own hooks at fused speed: its multi-step loop compiled by ``torch.compile``.

:func:`multi_step` runs ``neuron.step`` (the neuron's ``charge`` / ``fire`` / ``reset_membrane``, or
its own ``step``) over time as one graph that TorchInductor compiles (C++ on the CPU, Triton on CUDA):
the loop over T is unrolled and every step's arithmetic, the surrogate and the backward through
time are fused into a few kernels, where the reference path pays one autograd node per operation
per step. A sequence longer than ``UNROLLED_STEPS`` compiles one step instead, called at every step (an
unrolled graph's compile time grows with T). Spikes equal the reference's (the same float32 arithmetic; half precision is computed in
float32 and the spikes given back in the input's dtype), gradients agree to rounding.

Every layer goes through one compiled graph: a step's input ``[N, ...]`` is flattened to ``[E]``
(a per-channel leak ``[C, 1, ...]`` expanded to one value per element) and E is a dynamic size, so
layers of every width, and the last, smaller batch, share it; a new graph is compiled per neuron
class, time steps, dtype and grad mode (tens of seconds on a small CPU the first time, seconds from
TorchInductor's cache on disk afterwards). The hooks must therefore be elementwise arithmetic on
tensors of the state's shape (what every neuron of plifnet's is); a hook that needs the step's shape
(``x.shape[1]``) or Python control flow on values runs on the reference path: where compiling
fails, :func:`multi_step` says why, once per neuron class, and returns None.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import torch

from plifnet import compat

COST = (
    "the reference path runs one PyTorch operation per step and variable: about 10x the compiled time in the "
    "neuron layers, 1.3-1.8x on the MNIST network's training step (benchmarks/neuron_api.py)"
)

_failed: dict[type, str] = {}  # neuron class -> why it could not be compiled
RECOMPILE_LIMIT = 64  # graphs of the compiled loop per process, over every neuron class
UNROLLED_STEPS = 32  # up to this T the whole loop is one graph (image networks: T = 4 to 20); longer, one step is


def run_steps(x_seq, state, step):
    """``step(state, X[t]) -> (S[t], state)`` over ``x_seq [T, N, ...]``; returns the spikes ``[T, N, ...]``.
    The one loop over time steps: the reference path runs it as it is, :func:`multi_step` compiled. Met by
    torch.compile of a whole network, a sequence longer than ``UNROLLED_STEPS`` leaves the graph (a break) and runs
    here as Python, step by step: traced, the loop would be unrolled over T (over two minutes of compiling at
    T = 200 on 2 cores, growing with T)."""
    if torch.compiler.is_compiling() and len(x_seq) > UNROLLED_STEPS:
        return _steps_outside_the_graph(x_seq, state, step)
    return _steps(x_seq, state, step)


def _steps(x_seq, state, step):
    spikes = []
    for x in x_seq:
        spike, state = step(state, x)
        spikes.append(spike)
    return torch.stack(spikes)


@torch.compiler.disable
def _steps_outside_the_graph(x_seq, state, step):
    _say_outside_the_graph(len(x_seq))
    return _steps(x_seq, state, step)


def _say_outside_the_graph(steps: int) -> None:
    """The graph break, said (Python shows a warning once per place): a compiled network runs this loop as Python."""
    warnings.warn(
        f"plifnet: a loop over {steps} time steps runs outside the compiled network's graph (a graph break): "
        f"traced, it would be unrolled step by step, and its compile time grows with T",
        stacklevel=3,
    )


def _run_steps(neuron, x_seq, k):
    """``neuron.step`` over ``x_seq [T, E]``, computed in float32; spikes ``[T, E]`` in x's dtype."""
    dtype, x_seq = x_seq.dtype, x_seq.float()
    return run_steps(x_seq, neuron.initial_state(x_seq[0]), lambda state, x: neuron.step(state, x, k)).to(dtype)


@lru_cache(maxsize=None)
def _compiled_run_steps():
    return torch.compile(_run_steps, fullgraph=True)  # made at first use: importing plifnet loads no compiler


def _step(neuron, state, x, k):
    return neuron.step(state, x, k)


@lru_cache(maxsize=None)
def _compiled_step():
    return torch.compile(_step, fullgraph=True)


def _run_compiled_steps(neuron, x_seq, k):
    """A sequence longer than ``UNROLLED_STEPS``: one step compiled, looped over time here (``unbind``), so that the
    graph is one step's at any T and autograd keeps the same per step (an unrolled graph of T = 200 took over two
    minutes to compile on a 2-core CPU, growing with T)."""
    step = _compiled_step()
    dtype, x_seq = x_seq.dtype, x_seq.float()
    return run_steps(x_seq, neuron.initial_state(x_seq[0]), lambda state, x: step(neuron, state, x, k)).to(dtype)


@torch.compiler.disable  # the loop runs as Python; the step inside is a compiled function of its own
def _outside_the_graph(neuron, x_seq, k):
    """:func:`_run_compiled_steps` where a whole network is being compiled (see :func:`run_steps`)."""
    _say_outside_the_graph(len(x_seq))
    return _run_compiled_steps(neuron, x_seq, k)


def multi_step(neuron, x: torch.Tensor, k, *, time_steps: int | None = None) -> torch.Tensor | None:
    """Spikes ``[T, N, ...]`` of ``neuron`` (a :class:`plifnet.neurons.BaseNode`) for ``x [T, N, ...]``
    (or ``x [N, ...]`` at each of ``time_steps`` steps), from one compiled graph; None, after one
    warning per neuron class, where its hooks cannot be compiled."""
    cls = type(neuron)
    if cls in _failed:
        return None
    step_shape = x.shape if time_steps else x.shape[1:]
    steps = time_steps or x.shape[0]
    flat = x.reshape(1 if time_steps else steps, -1)
    flat = flat.expand(steps, -1) if time_steps else flat  # a view: the gradient is summed over time by autograd
    if torch.is_tensor(k) and k.dim() > 0:  # per channel [C, 1, ...]: one k per element of a step
        k = k.expand(step_shape).reshape(-1)
    # inside torch.compile of a whole network: traced into its graph as it is, up to UNROLLED_STEPS steps; a longer
    # sequence leaves the graph (a break) for the loop of one compiled step, as outside it; under a dispatch mode
    # (the model summary's FLOP count), where nothing compiles: the same loop, run as it is
    if torch.compiler.is_compiling() and steps > UNROLLED_STEPS:
        return _outside_the_graph(neuron, flat, k).view(steps, *step_shape)
    if torch.compiler.is_compiling() or compat.dispatch_mode_active():
        return _run_steps(neuron, flat, k).view(steps, *step_shape)
    run = _compiled_run_steps() if steps <= UNROLLED_STEPS else _run_compiled_steps
    for tensor in (flat, k):
        if torch.is_tensor(tensor) and tensor.dim() > 0:
            compat.maybe_dynamic(tensor, tensor.dim() - 1)  # one graph for every layer width and batch
    try:
        # one graph per neuron class and variant (training or not, a constant input, a width's size class): one
        # network meets about 8, dynamo's default limit per function, after which fullgraph=True raises
        with compat.recompile_limit(RECOMPILE_LIMIT):
            spikes = run(neuron, flat, k)
    except Exception as error:  # noqa: BLE001  (the reference path then runs and raises a genuine error itself)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _failed[cls] = reason
        torch.compiler.reset()  # a failed trace can leave dynamo's state half-built, failing the next class's too
        warnings.warn(
            f"plifnet: neuron {cls.__name__} runs on the reference path, not compiled ({type(error).__name__}: "
            f"{reason[:300]}); {COST}. Make its hooks elementwise tensor arithmetic, or pass "
            f"backend='reference' to choose that path without this warning.",
            stacklevel=3,
        )
        return None
    return spikes.view(steps, *step_shape)
