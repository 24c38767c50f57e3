"""The toolchains that read NIR (:data:`TARGETS`), what each importer maps, and the checks that every graph
plifnet writes or reads passes: a whole number of time steps, finite weights, positive time constants."""

from __future__ import annotations

from dataclasses import dataclass, field

import nir
import numpy as np

from plifnet.errors import UserError

POOL_THRESHOLD = 0.5  # any value in (0, 1): a sum of 0/1 spikes exceeds it exactly when one of them is 1
MAX_BYTES = 1 << 30  # the arrays a NIR file may declare before from_nir reads it (raise with max_bytes=)
MAX_TIME_STEPS = 1_000_000  # T in a graph's metadata or --time_steps: more would not fit any machine's memory


@dataclass(frozen=True)
class Target:
    """What one toolchain's NIR importer reads as shipped, and what it gets wrong (README's table, in code).

    ``dt``: the time step the importer assumes unless told (NIR's tau is ``tau`` in steps x dt);
    ``pool``: the pooling node it maps (``nir.SumPool2d`` or ``nir.AvgPool2d``); ``pool_spike``: the node
    that makes a pooled window of spikes one spike, exactly: ``threshold`` (``nir.Threshold``), ``if``
    (``nir.IF``, reset to 0: its membrane is 0 at every step) or ``lif`` (``nir.LIF`` with tau = dt, which
    keeps nothing from one step to the next); ``flatten``: whether it keeps NIR's Flatten dims (which
    exclude the batch), else every Linear after the feature maps is written as the equal Conv2d (a kernel
    the size of the map, then 1 x 1) and no Flatten is needed; ``refuses``: what the importer would run
    wrongly, by the neuron feature (``if``, ``decay_input=False``, ``per_channel``, ``v_reset``), or the
    whole target (``network``), with its reason; ``fixed_dt``: the importer has no dt option.
    """

    dt: float
    pool: type = nir.SumPool2d
    pool_spike: str = "threshold"
    flatten: bool = True
    refuses: dict = field(default_factory=dict)
    fixed_dt: bool = False


TARGETS = {
    "nir": Target(dt=1.0),
    "spikingjelly": Target(
        dt=1e-4,
        pool=nir.AvgPool2d,
        pool_spike="if",
        refuses={"per_channel": "SpikingJelly 2.0's importer takes one tau per LIF node"},
    ),
    "snntorch": Target(
        dt=1e-4,
        pool=nir.AvgPool2d,
        pool_spike="lif",
        flatten=False,
        fixed_dt=True,
        refuses={
            "if": "snnTorch 1.0 imports nir.IF as a Leaky neuron with beta 0.9 and a subtractive reset",
            "per_channel": "snnTorch 1.0 rescales a LIF node's thresholds by one input scale (the first of "
            "its dt / tau)",
            "v_reset": "snnTorch 1.0 resets to 0 and requires v_leak = 0",
        },
    ),
    "norse": Target(
        dt=1e-3,
        pool=nir.SumPool2d,
        pool_spike="lif",
        flatten=False,
        refuses={
            "decay_input=False": "Norse 1.1 runs nir.LIF with r = 1 whatever its r (it only warns)",
            "v_reset": "Norse 1.1's LIF resets to 0 whatever the node's v_reset",
        },
    ),
    "sinabs": Target(
        dt=1.0,
        refuses={
            "network": (
                "sinabs 3.1 requires nir <= 1.0.4, whose LIF and IF have no v_reset, and builds its IAF/LIF layers with a "
                "subtractive reset (IF's membrane clipped at -threshold): plifnet's neurons reset to v_reset, so any "
                "network of them would fire differently there (and sinabs cannot be installed beside plifnet's nir)"
            )
        },
    ),
    "rockpool": Target(
        dt=1.0,
        refuses={
            "network": (
                "Rockpool 3.1's from_nir maps no Conv2d, pooling, Flatten or IF node, and reads nir.LIF's time constant "
                "as 'tau_mem', which nir.LIF does not have (AttributeError): no spiking network loads there"
            )
        },
    ),
}


def checked_time_steps(value, where: str) -> int:
    """T as a whole number from 1 to :data:`MAX_TIME_STEPS`, or ``ValueError`` naming ``where`` it came from."""
    try:
        steps = int(np.asarray(value).item())
    except (TypeError, ValueError, OverflowError):
        steps = None
    if steps is None or steps != np.asarray(value).item() or not 1 <= steps <= MAX_TIME_STEPS:
        shown = text(np.asarray(value).item()) if np.asarray(value).size == 1 else repr(value)
        raise UserError(
            f"{where} {shown} is not a number of time steps: give a whole number from 1 to {MAX_TIME_STEPS:,}"
        )
    return steps


def checked_graph(graph: nir.NIRGraph, fix: str) -> nir.NIRGraph:
    """The graph, or ``ValueError`` naming the first node whose arrays hold a value that is not finite, a time
    constant that is not positive, or an IF's r that is not; ``fix`` ends the message."""
    for name, node in graph.nodes.items():
        for key, value in vars(node).items():
            if key in ("input_type", "output_type", "metadata") or isinstance(value, (str, bytes)):
                continue
            try:
                array = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                continue
            if not np.all(np.isfinite(array)):
                raise UserError(f"node {name}: {key} holds {'NaN' if np.isnan(array).any() else 'an infinity'} {fix}")
            if key in ("tau", "r") and not np.all(array > 0):
                raise UserError(f"node {name}: {key} holds {array.min():g}, not a positive number {fix}")
    return graph


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
