"""NIR export and import: a trained network leaves for neuromorphic hardware and simulators.

NIR (the Neuromorphic Intermediate Representation, https://neuroir.org, package ``nir``) describes a
network as a graph of continuous-time nodes that Loihi/Lava, SpiNNaker, Xylo, Speck, Norse, snnTorch
and SpikingJelly read. At ``dt = 1`` (one NIR time unit per step) NIR's Euler step of its neurons is
exactly the step of :mod:`plifnet.neurons`::

    NIR LIF   tau dv/dt = (v_leak - v) + r I   ->   v <- v + (1/tau) (v_leak - v + r I)
    plifnet   H = V + k (X - (V - V_reset))         decay_input=True:  tau = 1/k, r = 1,   v_leak = V_reset
              H = V - k (V - V_reset) + X           decay_input=False: tau = 1/k, r = tau, v_leak = V_reset
    NIR IF    dv/dt = r I                      ->   v <- v + r I        IF: r = 1
    both      spike when v crosses v_threshold, then v = v_reset (hard reset)

NIR fires at ``v > v_threshold``, plifnet at ``H >= v_threshold`` (heaviside(0) = 1): the two differ
only when the membrane equals the threshold exactly, a float tie. The soft reset (``v_reset=None``,
``V = H - v_threshold``) has no NIR form and is refused rather than exported wrongly.

The layers of a :class:`plifnet.models.SpikingNet` map to NIR nodes as follows:

- Conv2d + BatchNorm2d (eval) -> one ``nir.Conv2d``, BatchNorm folded into weight and bias (in float64);
- MaxPool2d of spikes -> ``nir.SumPool2d`` then ``nir.Threshold(0.5)``: the maximum of 0/1 values over
  a window is 1 exactly when their sum exceeds 0.5, so the paper's networks export exactly;
- Flatten -> ``nir.Flatten`` (NIR's dims exclude the batch), Linear -> ``nir.Linear`` (``nir.Affine``
  with a bias), the vote -> ``nir.Linear`` with weights 1/10 over each class's group; dropout is dropped.

The graph's metadata holds ``time_steps``, ``input`` (``static``: the image is presented at every step;
``events``: frame t at step t), ``dt`` and ``target``.

A graph is written to be run elsewhere, and each toolchain's importer reads its own part of NIR, in its
own time convention: ``target`` (:data:`TARGETS`) writes only what that importer maps, by exact
rewrites, and ``dt`` turns a time constant of tau steps into NIR's ``tau x dt`` (SpikingJelly and snnTorch
assume dt = 1e-4 s, Norse 1e-3 s). What an importer would run wrongly is refused with the reason.

    rewrite                      why it is exact
    max-pool -> AvgPool2d + IF   an average of 0/1 spikes over k x k exceeds 0.5/k^2 exactly when one is 1;
                                 an IF that resets to 0 and gets 0 when it does not fire is 0 at every step
    max-pool -> pool + LIF       the same with a LIF of tau = dt: v += (dt/tau)(0 - v + I) is v = I
    Linear -> Conv2d             over a [C, H, W] map, a kernel of H x W computes the flattened Linear;
                                 then 1 x 1 kernels: no Flatten, which some importers apply to the batch too

Command line: ``plifnet export --ckpt_path CKPT --out FILE.nir [--target T] [--dt DT]`` (``--config`` as
for plifnet fit when the checkpoint alone cannot rebuild the network).
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

import nir
import numpy as np
import torch
from torch import nn

import plifnet
from plifnet import contract
from plifnet.contract import is_neuron
from plifnet.models import MaxPool, SharedDropout, SpikingNet, TimeDistributed, Vote
from plifnet.neurons import IF, PLIF

if TYPE_CHECKING:  # Lightning is imported by the loader alone: the graph code needs none of it
    from lightning.pytorch import LightningDataModule

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


def to_nir(
    model: nn.Module,
    time_steps: int | None = None,
    dtype=np.float32,
    input_shape: tuple[int, int, int] | None = None,
    target: str = "nir",
    dt: float | None = None,
) -> nir.NIRGraph:
    """The NIR graph of a :class:`plifnet.module.SpikingClassifier` or :class:`plifnet.models.SpikingNet`,
    or of any network whose layers form one ``nn.Sequential`` (itself, or its only child, run on the
    image at every step: how SpikingJelly and snnTorch networks are often written), of parts with a NIR
    form: Conv2d (+ BatchNorm2d), neurons that are plifnet's step (:func:`plifnet.contract.dynamics`:
    plifnet's, SpikingJelly's PLIF/LIF/IF, snnTorch's Leaky with the reset to zero), max-pooling of
    spikes, Flatten, Linear. Such a network needs ``input_shape`` ``(C, H, W)``, and the exported graph
    is run against it (float64, random images) before it is returned: a forward that does more than
    its chain is refused, not exported wrongly.

    ``time_steps`` goes into the metadata (default: the network's T). Arrays are written as ``dtype``;
    ``np.float64`` keeps the folded BatchNorm exact to the last bit, for checks that compare spikes.
    ``target`` (a key of :data:`TARGETS`) writes only what that toolchain's importer maps, by exact rewrites;
    ``dt`` (default: the target's) makes a time constant of ``tau`` steps NIR's ``tau x dt``; both are
    recorded in the metadata. Raises ``ValueError`` naming the layer for what has no NIR form (a plug-in
    neuron, the soft reset) or what the target's importer would run wrongly.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
    spec = TARGETS[target]
    if "network" in spec.refuses:
        raise ValueError(
            f"--target {target}: {spec.refuses['network']}; export with --target nir for a simulator "
            f"that reads NIR as specified"
        )
    dt = spec.dt if dt is None else float(dt)
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"--dt {dt}: the time step must be a positive number of seconds (or 1: NIR time in steps)")
    if spec.fixed_dt and dt != spec.dt:
        raise ValueError(
            f"--target {target} --dt {dt}: its importer assumes dt = {spec.dt:g} and has no option for "
            f"another; leave --dt out"
        )
    exported = (target, spec, dt)
    net = getattr(model, "net", model)
    if net.training:
        raise ValueError(
            "to_nir exports a network in eval mode (BatchNorm's running statistics, no dropout): call .eval()"
        )
    if isinstance(net, SpikingNet):
        if not net.built:
            raise ValueError(
                "to_nir exports SpikingNet networks (the paper's, or layers=...), built; got an unbuilt one"
            )
        modules = [m.module if isinstance(m, TimeDistributed) else m for m in [net.encoder, *net.layers]]
        graph = _graph(
            modules,
            net.input_shape,
            _time_steps(time_steps or net.time_steps, "time_steps"),
            net.arch.static,
            dtype,
            per_step=False,
            exported=exported,
        )
        return _checked(
            graph,
            f"at --dt {dt:g} in {np.dtype(dtype).name}: choose a dt for which tau x dt and 1/dt are "
            f"finite and positive, or --dtype float64",
        )
    modules = _sequential_layers(net)
    time_steps = time_steps or getattr(net, "time_steps", None)
    if input_shape is None or time_steps is None:
        raise ValueError(
            f"to_nir({type(net).__name__}): give input_shape (C, H, W) and time_steps (the network has no "
            f"'time_steps' attribute); python -m plifnet.export takes them from --config"
        )
    time_steps = _time_steps(time_steps, "time_steps")
    graph = _checked(
        _graph(modules, tuple(input_shape), time_steps, True, dtype, per_step=True, exported=exported),
        f"at --dt {dt:g} in {np.dtype(dtype).name}: choose a dt for which tau x dt and 1/dt are finite "
        f"and positive, or --dtype float64",
    )
    _check_reproduces(
        net,
        _graph(
            modules,
            tuple(input_shape),
            int(time_steps),
            True,
            np.float64,
            per_step=True,
            exported=("nir", TARGETS["nir"], 1.0),
        ),
    )
    return graph


def _time_steps(value, where: str) -> int:
    """T as a whole number from 1 to :data:`MAX_TIME_STEPS`, or ``ValueError`` naming ``where`` it came from."""
    try:
        steps = int(np.asarray(value).item())
    except (TypeError, ValueError, OverflowError):
        steps = None
    if steps is None or steps != np.asarray(value).item() or not 1 <= steps <= MAX_TIME_STEPS:
        shown = _text(np.asarray(value).item()) if np.asarray(value).size == 1 else repr(value)
        raise ValueError(
            f"{where} {shown} is not a number of time steps: give a whole number from 1 to {MAX_TIME_STEPS:,}"
        )
    return steps


def _checked(graph: nir.NIRGraph, fix: str) -> nir.NIRGraph:
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
                raise ValueError(f"node {name}: {key} holds {'NaN' if np.isnan(array).any() else 'an infinity'} {fix}")
            if key in ("tau", "r") and not np.all(array > 0):
                raise ValueError(f"node {name}: {key} holds {array.min():g}, not a positive number {fix}")
    return graph


def _declared_bytes(path) -> tuple[int, str]:
    """The bytes of all arrays an HDF5 (NIR) file declares, without reading them, and its largest array."""
    import h5py

    sizes = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: (
                sizes.__setitem__(f"{name} {item.shape}", item.size * item.dtype.itemsize)
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    return sum(sizes.values()), max(sizes, key=sizes.get, default="none")


def _node_types(path) -> set[str]:
    """The ``type`` of every node an HDF5 (NIR) file holds, read without building the nodes."""
    import h5py

    types = set()
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: (
                types.add(_text(item[()]))
                if name.endswith("type") and isinstance(item, h5py.Dataset) and item.shape == ()
                else None
            )
        )
    return types


def _subclasses(cls) -> list[type]:
    return [cls] + [sub for child in cls.__subclasses__() for sub in _subclasses(child)]


def _sequential_layers(net: nn.Module) -> list[nn.Module]:
    """The layers of a network that is one ``nn.Sequential``, or whose only child is one, flattened."""
    chain = net
    if not isinstance(net, nn.Sequential):
        children = list(net.named_children())
        if len(children) != 1 or not isinstance(children[0][1], nn.Sequential) or list(net.parameters(recurse=False)):
            raise ValueError(
                f"to_nir exports SpikingNet networks and networks whose layers form one nn.Sequential; "
                f"{type(net).__name__} runs {len(children)} modules "
                f"({', '.join(name for name, _ in children[:6])}) in a forward of its own, whose order "
                f"NIR export cannot see: write its layers as one nn.Sequential to export it"
            )
        chain = children[0][1]

    def flat(sequential):
        return [m for child in sequential for m in (flat(child) if isinstance(child, nn.Sequential) else [child])]

    layers = flat(chain)
    for position, module in enumerate(layers):
        first = next(i for i, other in enumerate(layers) if other is module)  # a stateless one (ReLU) may repeat
        if first != position and (next(module.parameters(), None) is not None or is_neuron(module)):
            raise ValueError(
                f"layers {first} and {position} of {type(net).__name__} are one {type(module).__name__} "
                f"object used twice: its weights or state are shared between the two, which a NIR graph "
                f"(one node per layer) cannot express; give each layer a module of its own"
            )
    return layers


def _check_reproduces(net: nn.Module, graph: nir.NIRGraph) -> None:
    """Refuse a graph whose plifnet rebuild (:func:`from_nir`) does not fire as ``net`` does on random images:
    in float64, spike for spike; where the network cannot run in float64 (snnTorch's spikes are float32
    whatever the input), in float32, where BatchNorm folded into the convolution may round a spike
    the other way at a tie (below 1 in 1000 here)."""
    shape = [int(n) for n in graph.nodes["input"].input_type["input"]]
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    differ, tolerance = 1.0, 0.0  # where the network runs in no dtype, nothing shows that the graph is right
    for dtype, tolerance in ((torch.float64, 0), (torch.float32, 1e-3)):
        reference = copy.deepcopy(net).to(dtype).eval()
        contract.reset_state(reference)
        try:
            with torch.no_grad():
                expected = reference(x.to(dtype))
                expected = expected[0] if isinstance(expected, (tuple, list)) else expected
                got = from_nir(graph).to(dtype).eval()(x.to(dtype))
                differ = (expected != got).double().mean().item() if expected.shape == got.shape else 1.0
            break
        except RuntimeError:  # a dtype the network does not run in
            continue
    if differ > tolerance:
        raise ValueError(
            f"the NIR graph of {type(net).__name__}'s layers does not fire as {type(net).__name__} does "
            f"on test images (its forward does more than run its nn.Sequential on the image at every "
            f"step), so it is not exported"
        )


def _graph(
    modules: list[nn.Module],
    input_shape,
    time_steps: int,
    static: bool,
    dtype,
    per_step: bool,
    exported: tuple[str, Target, float],
) -> nir.NIRGraph:
    """The chain of NIR nodes of ``modules``; ``per_step``: the modules run on one step ``[N, ...]``
    (a peer's chain), else on ``[T, N, ...]`` after the encoder (a SpikingNet); ``exported``: the
    target's name, its :class:`Target` and dt."""
    name, target, dt = exported
    graph = _GraphBuilder(dtype, input_shape)
    counts = {"conv": 0, "fc": 0, "pool": 0}
    last = "input"  # the name of the node that produced the current tensor
    position = 0
    while position < len(modules):
        module = modules[position]
        position += 1
        convolution = _conv_and_norm(module)
        if isinstance(module, nn.Conv2d) and position < len(modules) and isinstance(modules[position], nn.BatchNorm2d):
            convolution, position = (module, modules[position]), position + 1
        if convolution is not None:
            counts["conv"] += 1
            last = graph.add(f"conv{counts['conv']}", _folded_conv(*convolution, graph.shape, dtype))
        elif is_neuron(module):
            node = _neuron(module, last, graph.shape, dtype, exported)
            last = graph.add(f"{last}_{'if' if isinstance(node, nir.IF) else 'lif'}", node)
        elif isinstance(module, (MaxPool, nn.MaxPool2d)):
            if not graph.spikes:
                raise ValueError(
                    f"layer {type(module).__name__} after {last}: max-pooling exports as SumPool2d + "
                    f"Threshold only where its input is spikes"
                )
            kernel, stride = _pool_window(module)
            counts["pool"] += 1
            graph.add(
                f"pool{counts['pool']}",
                target.pool(kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array([0, 0])),
            )
            last = graph.add(
                f"pool{counts['pool']}_{target.pool_spike}", _pool_spike(target, graph.shape, kernel, dt, dtype)
            )
        elif isinstance(module, (SharedDropout, nn.Dropout)):
            continue  # the identity in eval mode
        elif isinstance(module, nn.Flatten):
            if module.start_dim != (1 if per_step else 2) or module.end_dim != -1:
                form = "Flatten(1) of a step's [N, ...]" if per_step else "Flatten(2) of [T, N, ...]"
                raise ValueError(
                    f"nn.Flatten({module.start_dim}, {module.end_dim}) after {last}: only {form} (all "
                    f"features of a sample) has a NIR form"
                )
            if target.flatten:
                last = graph.add(
                    "flatten", nir.Flatten(input_type={"input": np.array(graph.shape)}, start_dim=0, end_dim=-1)
                )
        elif isinstance(module, nn.Linear):
            counts["fc"] += 1
            bias = None if module.bias is None else module.bias.detach().double().numpy().astype(dtype)
            last = graph.add(
                f"fc{counts['fc']}", _dense(module.weight.detach().double().numpy().astype(dtype), bias, graph.shape)
            )
        elif isinstance(module, Vote):
            classes = graph.shape[0] // module.votes
            votes = np.kron(np.eye(classes), np.full((1, module.votes), 1 / module.votes)).astype(dtype)
            last = graph.add("vote", _dense(votes, None, graph.shape))
        else:
            raise ValueError(
                f"layer {type(module).__name__} after {last} has no NIR form; to_nir exports Conv2d(+BatchNorm2d), "
                f"PLIF/LIF/IF neurons, max-pooling of spikes, dropout, Flatten, Linear and the vote"
            )
    graph.add("output", nir.Output(output_type=np.array(graph.shape)))
    metadata = {
        "time_steps": time_steps,
        "input": "static" if static else "events",
        "dt": dt,
        "target": name,
        "producer": f"plifnet {plifnet.__version__}",
    }
    return nir.NIRGraph(nodes=graph.nodes, edges=graph.edges, metadata=metadata)


class _GraphBuilder:
    """A chain of NIR nodes, tracking the shape of one sample ``[C, H, W]`` or ``[F]`` and whether it is spikes."""

    def __init__(self, dtype, input_shape):
        self.dtype, self.shape, self.spikes = dtype, tuple(input_shape), False
        self.nodes = {"input": nir.Input(input_type={"input": np.array(input_shape)})}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, node) -> str:
        self.edges.append((list(self.nodes)[-1], name))
        self.nodes[name] = node
        output = node.output_type.get("output") if node.output_type else None
        if isinstance(node, (nir.SumPool2d, nir.AvgPool2d)):  # NIR leaves its output type to the graph's inference
            c, h, w = self.shape
            kernel, stride = node.kernel_size, node.stride
            output = (c, (h - kernel[0]) // stride[0] + 1, (w - kernel[1]) // stride[1] + 1)
        self.shape = tuple(int(n) for n in output) if output is not None else self.shape
        self.spikes = isinstance(node, (nir.LIF, nir.IF, nir.Threshold)) or (
            self.spikes and isinstance(node, nir.Flatten)
        )
        return name


def _conv_and_norm(module: nn.Module):
    """``(conv, batch_norm or None)`` for a Conv2d, or a Sequential of Conv2d then BatchNorm2d; else None."""
    if isinstance(module, nn.Conv2d):
        return module, None
    if (
        isinstance(module, nn.Sequential)
        and len(module) == 2
        and isinstance(module[0], nn.Conv2d)
        and isinstance(module[1], nn.BatchNorm2d)
    ):
        return module[0], module[1]
    return None


def _folded_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d | None, shape, dtype) -> nir.Conv2d:
    """BatchNorm (eval) folded into the convolution: ``w' = w g / sqrt(var + eps)``,
    ``b' = (b - mean) g / sqrt(var + eps) + beta``, computed in float64."""
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(weight.shape[0], dtype=torch.float64)
    if norm is not None:
        if norm.running_var is None:
            raise ValueError(
                "BatchNorm2d without running statistics (track_running_stats=False) cannot be folded into NIR"
            )
        gain = norm.weight.detach().double() if norm.weight is not None else torch.ones_like(bias)
        shift = norm.bias.detach().double() if norm.bias is not None else torch.zeros_like(bias)
        scale = gain / torch.sqrt(norm.running_var.double() + norm.eps)
        weight = weight * scale.view(-1, 1, 1, 1)
        bias = (bias - norm.running_mean.double()) * scale + shift
    return nir.Conv2d(
        input_shape=tuple(shape[1:]),
        weight=weight.numpy().astype(dtype),
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=bias.numpy().astype(dtype),
    )


def _neuron(neuron: nn.Module, name: str, shape, dtype, exported: tuple[str, Target, float]):
    """The NIR node of a neuron over one sample's ``shape``, from its step as the neuron contract gives it
    (plifnet's PLIF, LIF, IF; a peer library's through its adapter; see the module docstring), at the
    target's ``dt``: ``tau`` steps are NIR's ``tau x dt``, and IF charges ``v += dt r I`` with ``r = 1/dt``."""
    target_name, target, dt = exported
    try:
        step = contract.dynamics(neuron)
    except ValueError as error:
        raise ValueError(f"layer {name}: {error}") from None

    def full(value):
        return np.broadcast_to(np.asarray(value, dtype=np.float64), shape).astype(dtype)

    threshold, reset = full(step.v_threshold), full(step.v_reset)
    k = step.k.detach().double().cpu().numpy() if torch.is_tensor(step.k) else np.float64(step.k)
    is_if = not np.any(k) and not step.decay_input
    features = {
        "if": is_if,
        "decay_input=False": not is_if and not step.decay_input,
        "per_channel": bool(step.per_channel),
        "v_reset": bool(np.any(reset)),
    }
    for feature, present in features.items():
        if present and feature in target.refuses:
            raise ValueError(
                f"layer {name} ({feature}): --target {target_name}: {target.refuses[feature]}, so it "
                f"would run differently there; export with --target nir, or train without {feature}"
            )
    if is_if:
        return nir.IF(r=full(1 / dt), v_threshold=threshold, v_reset=reset)
    if step.per_channel:  # one tau per channel: dim 0 of a sample's [C, H, W] or [F]
        k = k.reshape(-1, *([1] * (len(shape) - 1)))
    steps = 1 / np.asarray(k, dtype=np.float64)  # tau in time steps
    return nir.LIF(
        tau=full(steps * dt),
        r=full(1.0 if step.decay_input else steps),
        v_leak=reset,
        v_threshold=threshold,
        v_reset=reset.copy(),
    )


def _pool_spike(target: Target, shape, kernel, dt: float, dtype):
    """The node after a pooling of spikes that fires where the window holds a spike: max-pooling, exactly.
    The pooled value is a count of spikes (an average: a count / window), so anything in (0, 1) / window
    separates none from one; IF and LIF reset to 0 when they fire and receive 0 when they do not, so their
    membrane is 0 at every step (LIF with tau = dt: ``v += (dt/tau)(0 - v + I)`` is ``v = I``)."""
    window = 1 if target.pool is nir.SumPool2d else kernel[0] * kernel[1]
    threshold = np.full(shape, POOL_THRESHOLD / window, dtype=dtype)
    zero = np.zeros(shape, dtype=dtype)
    if target.pool_spike == "threshold":
        return nir.Threshold(threshold=threshold)
    if target.pool_spike == "if":
        return nir.IF(r=np.full(shape, 1 / dt, dtype=dtype), v_threshold=threshold, v_reset=zero)
    return nir.LIF(
        tau=np.full(shape, dt, dtype=dtype),
        r=np.ones(shape, dtype=dtype),
        v_leak=zero,
        v_threshold=threshold,
        v_reset=zero.copy(),
    )


def _dense(weight: np.ndarray, bias: np.ndarray | None, shape):
    """A fully-connected layer over one sample of ``shape``: ``nir.Linear``/``nir.Affine`` on features, or, on
    a feature map ``[C, H, W]`` (for a target whose importer flattens the batch too), the equal ``nir.Conv2d``
    whose kernel is the whole map (output ``[F, 1, 1]``)."""
    if len(shape) == 1:
        return nir.Linear(weight=weight) if bias is None else nir.Affine(weight=weight, bias=bias)
    channels, height, width = shape
    return nir.Conv2d(
        input_shape=(height, width),
        weight=weight.reshape(len(weight), channels, height, width),
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=np.zeros(len(weight), weight.dtype) if bias is None else bias,
    )


def _pool_window(module: nn.Module) -> tuple[list[int], list[int]]:
    if isinstance(module, MaxPool):
        return [2, 2], [2, 2]
    pair = lambda v: list(v) if isinstance(v, (tuple, list)) else [v, v]  # noqa: E731
    if pair(module.padding) != [0, 0] or pair(module.dilation) != [1, 1] or module.ceil_mode:
        raise ValueError(f"{module}: only max-pooling without padding, dilation or ceil_mode has a NIR form")
    return pair(module.kernel_size), pair(module.stride if module.stride is not None else module.kernel_size)


def from_nir(graph: nir.NIRGraph | str | Path, dt: float | None = None, max_bytes: int = MAX_BYTES) -> SpikingNet:
    """A :class:`plifnet.models.SpikingNet` from a NIR graph (or file) of the form :func:`to_nir` writes,
    for any target, or another framework writes for such a chain.

    ``dt``: the time step the graph's time constants assume (NIR's tau / dt is tau in steps); default: the
    graph's metadata ``dt``, else 1 (NIR time in steps). SpikingJelly and snnTorch write at dt = 1e-4,
    Norse at 1e-3. Conv2d and Linear/Affine keep their weights and the file's precision (a Conv2d whose
    kernel covers its whole input map is the Linear it equals); ``LIF`` nodes become
    :class:`plifnet.neurons.PLIF` (tau learnable again, one per layer or per channel), ``IF`` nodes
    :class:`plifnet.neurons.IF`; a SumPool2d or AvgPool2d of spikes followed by a node that fires where
    the window holds a spike (:func:`_pool_spike`'s forms) becomes max-pooling, and a final ``Linear`` that
    averages groups of output neurons becomes the vote. ``time_steps`` and the kind of input come from the
    metadata. Anything else is refused with the node's name, and so is a file that declares more than
    ``max_bytes`` of arrays (before any is read: a small compressed file can declare gigabytes), a dt, T or
    time constant out of range, and any weight or parameter that is not a finite number.
    """
    if not isinstance(graph, nir.NIRGraph):
        declared, largest = _declared_bytes(graph)
        if declared > max_bytes:
            raise ValueError(
                f"NIR file {graph} declares {declared / 2**20:,.0f} MiB of arrays (the largest: {largest}), "
                f"over the limit of {max_bytes / 2**20:,.0f} MiB; if the file is right, raise the limit "
                f"(from_nir(path, max_bytes=...), --model.net.max_mib N)"
            )
        unknown = sorted(_node_types(graph) - {cls.__name__ for cls in _subclasses(nir.NIRNode)})
        if unknown:  # nir.read would fail on an assert with no message
            raise ValueError(
                f"NIR file {graph}: a node of unknown type {unknown[0]!r}, not one of NIR "
                f"{version('nir')}'s; plifnet reads Conv2d, LIF, IF, SumPool2d/AvgPool2d, Threshold, "
                f"Flatten and Linear/Affine"
            )
        graph = nir.read(graph)
    chain = _chain(graph)
    metadata = graph.metadata or {}
    if dt is not None:
        step = (float(dt), "given")
    elif "dt" in metadata:
        step = (float(np.asarray(metadata["dt"])), "the graph's metadata")
    else:
        step = (1.0, "the default: the graph's metadata has none")
    if not (np.isfinite(step[0]) and step[0] > 0):
        raise ValueError(
            f"dt = {step[0]:g} ({step[1]}) is not a positive time step; give the graph's dt "
            f"(from_nir(path, dt=...), --model.net.dt)"
        )
    time_steps = _time_steps(metadata.get("time_steps", 8), "the graph's metadata time_steps")
    _checked(graph, "in the graph; plifnet reads finite weights and positive time constants only")
    static = _text(metadata.get("input", "static")) == "static"
    input_shape = [int(n) for n in graph.nodes[chain[0]].input_type["input"]]
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"from_nir builds networks of square images or frames [C, H, H]; the input is {input_shape}")
    layers: list[nn.Module] = []
    leaks: list[tuple[PLIF, np.ndarray]] = []  # PLIF's w, set once the network has the file's precision
    names, position, spikes, flat = chain[1:-1], 0, False, False
    while position < len(names):
        name, node = names[position], graph.nodes[names[position]]
        following = graph.nodes[names[position + 1]] if position + 1 < len(names) else None
        position += 1
        dense = isinstance(node, (nir.Linear, nir.Affine)) or (
            isinstance(node, nir.Conv2d) and layers and _is_dense(node)
        )
        if dense:
            if not flat:  # a Linear written as a Conv2d over the whole map: the features of the map, flattened
                layers.append(nn.Flatten(2))
                flat = True
            weight = np.array(node.weight).reshape(len(node.weight), -1)
            votes = _votes(weight) if following is None else None
            layers.append(Vote(votes) if votes else _linear_from_nir(weight, getattr(node, "bias", None)))
        elif isinstance(node, nir.Conv2d):
            conv = _conv_from_nir(node)
            layers.append(conv if not layers else TimeDistributed(conv))
        elif isinstance(node, (nir.LIF, nir.IF)):
            neuron, w = _neuron_from_nir(node, name, step)
            layers.append(neuron)
            if w is not None:
                leaks.append((neuron, w))
        elif isinstance(node, (nir.SumPool2d, nir.AvgPool2d)) and spikes and following is not None:
            layers.append(_max_pool(node, following, name, step))
            position += 1  # the node after the pooling is part of the max-pooling: spikes stay spikes
            continue
        elif isinstance(node, nir.Flatten) and node.start_dim == 0 and node.end_dim == -1:
            layers.append(nn.Flatten(2))
            flat = True
            continue  # a flattened spike map is still spikes
        else:
            raise ValueError(
                f"node {name} ({type(node).__name__}) has no plifnet form here; from_nir reads chains of "
                f"Conv2d, LIF/IF, SumPool2d/AvgPool2d of spikes + a spike node, Flatten and "
                f"Linear/Affine, as to_nir writes them"
            )
        spikes = isinstance(layers[-1], (PLIF, IF))
    if not layers or not isinstance(layers[0], nn.Conv2d):
        raise ValueError("from_nir: the graph must start with a Conv2d (the encoder) after its input")
    classes = int(np.prod(graph.nodes[chain[-1]].output_type["output"]))
    dtype = layers[0].weight.dtype
    net = SpikingNet(_tokens(layers), classes=classes, static=static, time_steps=time_steps)
    net.build(input_shape[0], input_shape[1], modules=layers)
    net = net.to(dtype)
    for neuron, w in leaks:  # exactly -ln(tau - 1) in the file's precision, not rounded through float32
        neuron.w.data = torch.as_tensor(w, dtype=dtype).reshape(neuron.w.shape)
    return net


class NIRNet(SpikingNet):
    """A network read from a NIR file by :func:`from_nir`, for the command line and configs::

        plifnet test --config configs/mnist.yaml --model.net plifnet.export.NIRNet \\
            --model.net.path net.nir --model.net.dt 1e-4

    evaluates (or, with ``fit``, fine-tunes) a graph that plifnet or another framework wrote. The file is
    read again when a checkpoint of it is loaded, before its weights are put back.
    """

    def __init__(self, path: str, dt: float | None = None, max_mib: float = MAX_BYTES / 2**20):
        try:
            read = from_nir(path, dt, max_bytes=int(max_mib * 2**20))
        except (OSError, KeyError) as error:
            raise ValueError(f"--model.net.path {path}: not a readable NIR file ({error})") from None
        super().__init__(read.arch.layers, classes=read.classes, static=read.arch.static, time_steps=read.time_steps)
        self.build(read.arch.in_channels, read.arch.size, modules=[read.encoder, *read.layers])


def _tokens(layers: list[nn.Module]) -> str:
    """The layer tokens (:mod:`plifnet.models`) that describe modules read from a graph: its network's ``layers``."""
    tokens = []
    for module in layers:
        inner = module.module if isinstance(module, TimeDistributed) else module
        if isinstance(inner, nn.Conv2d):
            tokens.append(f"c{inner.out_channels}")
        elif isinstance(inner, (MaxPool, nn.MaxPool2d)):
            tokens.append("p")
        elif isinstance(inner, nn.Linear):
            tokens.append(f"f{inner.out_features}")
    return " ".join(tokens)


def _max_pool(pool, spike, name: str, step: tuple[float, str]) -> nn.Module:
    """Max-pooling from a SumPool2d or AvgPool2d of spikes and the node after it, in one of the forms of
    :func:`_pool_spike`: a Threshold, an IF charging ``v += I`` (r = 1/dt), or a LIF with tau = dt, resetting
    to 0, whose threshold separates no spike in the window from one."""
    kernel, stride = (tuple(int(n) for n in np.broadcast_to(v, (2,))) for v in (pool.kernel_size, pool.stride))
    window = 1 if isinstance(pool, nir.SumPool2d) else kernel[0] * kernel[1]
    kind = type(pool).__name__
    dt = step[0]
    if isinstance(spike, nir.Threshold):
        value = np.unique(spike.threshold)
    elif isinstance(spike, nir.IF) and np.allclose(np.asarray(spike.r) * dt, 1) and not np.any(spike.v_reset):
        value = np.unique(spike.v_threshold)
    elif (
        isinstance(spike, nir.LIF)
        and np.allclose(spike.tau, dt)
        and np.allclose(spike.r, 1)
        and not np.any(spike.v_reset)
        and not np.any(spike.v_leak)
    ):
        value = np.unique(spike.v_threshold)
    else:
        raise ValueError(
            f"node {name}: a {kind} of spikes is max-pooling only before a Threshold, an IF with r = 1/dt "
            f"or a LIF with tau = dt (both resetting to 0); the next node is {type(spike).__name__}"
            f" (dt = {dt:g}: {step[1]})"
        )
    if value.size != 1 or not 0 < value[0] * window < 1:
        raise ValueError(
            f"node {name}: a {kind} of spikes is max-pooling only with one threshold in (0, 1)"
            f"{' / ' + str(window) if window > 1 else ''}"
        )
    if np.any(np.asarray(pool.padding) != 0):
        raise ValueError(f"node {name}: {kind} with padding has no max-pooling form here")
    return MaxPool() if kernel == stride == (2, 2) else TimeDistributed(nn.MaxPool2d(kernel, stride))


def _is_dense(node: nir.Conv2d) -> bool:
    """A convolution whose kernel covers its whole input map, unpadded: a Linear of the map's features."""
    if node.input_type is None or node.input_type.get("input") is None:
        return False
    kernel, size = tuple(np.shape(node.weight)[2:]), tuple(int(n) for n in node.input_type["input"][1:])
    padding = node.padding if isinstance(node.padding, (str, bytes)) else np.asarray(node.padding)
    unpadded = _text(padding) == "valid" if isinstance(padding, (str, bytes)) else not np.any(padding)
    return kernel == size and unpadded


def _chain(graph: nir.NIRGraph) -> list[str]:
    """The node names from the Input to the Output, for a graph whose nodes form one chain."""
    following: dict[str, list[str]] = {}
    for source, target in graph.edges:
        following.setdefault(source, []).append(target)
    start = [name for name, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(start) != 1:
        raise ValueError(f"from_nir reads graphs with one Input node; this one has {len(start)}")
    chain = start
    while following.get(chain[-1]):
        if len(following[chain[-1]]) > 1 or following[chain[-1]][0] in chain:
            raise ValueError(
                f"node {chain[-1]} branches or loops back; from_nir reads chains (one path, input to output)"
            )
        chain.append(following[chain[-1]][0])
    if not isinstance(graph.nodes[chain[-1]], nir.Output) or len(chain) != len(graph.nodes):
        raise ValueError("from_nir reads chains from the Input to the Output that visit every node")
    return chain


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _conv_from_nir(node: nir.Conv2d) -> nn.Conv2d:
    weight = torch.from_numpy(np.array(node.weight))
    pair = lambda v: tuple(int(n) for n in np.broadcast_to(v, (2,)))  # noqa: E731
    padding = _text(node.padding) if isinstance(node.padding, (str, bytes)) else pair(node.padding)
    conv = nn.Conv2d(
        weight.shape[1] * int(node.groups),
        weight.shape[0],
        tuple(weight.shape[2:]),
        pair(node.stride),
        padding,
        pair(node.dilation),
        int(node.groups),
        bias=True,
        dtype=weight.dtype,
    )
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(torch.from_numpy(np.array(node.bias)))
    return conv


def _linear_from_nir(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    weight = torch.from_numpy(np.array(weight))
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype)
    linear.weight.data.copy_(weight)
    if bias is not None:
        linear.bias.data.copy_(torch.from_numpy(np.array(bias)))
    return linear


def _votes(weight: np.ndarray) -> int | None:
    """The group size when ``weight [classes, classes * votes]`` averages consecutive groups, else None."""
    classes, inputs = weight.shape
    if inputs % classes or inputs == classes:
        return None
    votes = inputs // classes
    average = np.kron(np.eye(classes), np.full((1, votes), 1 / votes))
    return votes if np.allclose(weight, average, rtol=1e-6, atol=0) else None


def _uniform(values: np.ndarray, what: str, name: str) -> float:
    unique = np.unique(values)
    if unique.size != 1:
        raise ValueError(f"node {name}: {what} differs between neurons; plifnet's neurons share one {what} per layer")
    return float(unique[0])


def _neuron_from_nir(node, name: str, step: tuple[float, str]) -> tuple[nn.Module, np.ndarray | None]:
    """The neuron of a LIF or IF node at time step ``step`` ``(dt, where dt came from)``, and for PLIF the
    values of its ``w`` (None for IF)."""
    dt, source = step
    other = (
        f"at dt = {dt:g} ({source}); a graph written for another time step (SpikingJelly, snnTorch: 1e-4; "
        f"Norse: 1e-3) is read with it: from_nir(path, dt=...), --model.net.dt"
    )
    threshold = _uniform(node.v_threshold, "v_threshold", name)
    reset = _uniform(node.v_reset, "v_reset", name)
    if isinstance(node, nir.IF):
        r = np.asarray(node.r, dtype=np.float64)
        if not np.allclose(r * dt, 1.0):
            raise ValueError(
                f"node {name}: IF with r = {_uniform(r, 'r', name):g} charges v += r dt I = "
                f"{_uniform(r, 'r', name) * dt:g} I, not plifnet's H = V + X (r = 1/dt), {other}"
            )
        return IF(v_threshold=threshold, v_reset=reset), None
    tau = np.asarray(node.tau, dtype=np.float64) / dt  # in time steps
    if not np.allclose(node.v_leak, node.v_reset):
        raise ValueError(f"node {name}: LIF with v_leak != v_reset has no plifnet form (plifnet leaks towards V_reset)")
    if np.allclose(node.r, 1.0):
        decay_input = True
    elif np.allclose(node.r, tau):
        decay_input = False
    else:
        raise ValueError(
            f"node {name}: LIF with r = {np.ravel(node.r)[0]:g}, neither 1 (decay_input=True) nor "
            f"tau / dt = {tau.ravel()[0]:g} (decay_input=False), {other}"
        )
    per_channel = np.unique(tau).size > 1
    if per_channel:  # one tau per channel (dim 0) is PLIF(per_channel); any other pattern is not a plifnet layer
        channel_tau = tau.reshape(tau.shape[0], -1)
        if not np.all(channel_tau == channel_tau[:, :1]):
            raise ValueError(
                f"node {name}: tau varies within a channel; plifnet's PLIF has one tau per layer or channel"
            )
        tau_values = channel_tau[:, 0]
    else:
        tau_values = tau.reshape(-1)[:1]
    if not np.all(tau_values > 1):
        raise ValueError(
            f"node {name}: tau / dt must be > 1 (the leak dt / tau in (0, 1)), got {tau_values.min():g} {other}"
        )
    neuron = PLIF(
        tau=float(tau_values[0]),
        v_threshold=threshold,
        v_reset=reset,
        decay_input=decay_input,
        per_channel=per_channel,
        channels=len(tau_values) if per_channel else None,
    )
    return neuron, -np.log(tau_values - 1)


def load_model(
    ckpt_path: str, configs: list[str] | None = None, allow_class_paths=(), options: list[str] = ()
) -> tuple[nn.Module, LightningDataModule | None]:
    """The trained network of a checkpoint, in eval mode, and the data module of ``configs`` (None without).

    The checkpoint decides the network: it is rebuilt from the hyperparameters the checkpoint recorded (its
    names of code checked first, :func:`plifnet.checkpoints.check_names`), never from a config, so that a
    run trained at T = 2 is exported at T = 2 whatever the config says. ``configs`` (``plifnet fit``'s
    ``--config`` files or names) and ``options`` (more of its arguments, ``--data.root DIR``) give the data
    module, and with it the input shape of a network that takes it from the data (``layers=...``), and the
    class paths they name are allowed, as for ``plifnet test``; a ``--model.*`` option among them would
    change nothing and is refused."""
    from lightning.pytorch.cli import instantiate_module

    from plifnet import checkpoints
    from plifnet.module import NoInputShape, SpikingClassifier

    given = sorted({arg.split("=")[0] for arg in map(str, options) if arg.startswith("--model.")})
    if given:
        raise ValueError(
            f"{given[0]}: the checkpoint's hyperparameters rebuild the network it was trained with, so a "
            f"--model option would not be applied; leave it out"
        )
    ckpt_path = str(checkpoints.fetch(ckpt_path)) if checkpoints.is_url(ckpt_path) else ckpt_path
    data, named = _data_module(configs, options) if configs else (None, set())
    try:  # what the configs name is this run's to allow, as for plifnet test
        model = SpikingClassifier.load_from_checkpoint(
            ckpt_path, map_location="cpu", allow_class_paths=[*allow_class_paths, *named]
        )
    except NoInputShape:  # a network built for the data's input: build it so, then put the weights back
        if data is None:
            raise ValueError(
                "the checkpoint's network takes its input shape from the data module, which a checkpoint "
                "does not hold: pass the run's config too, --config <run folder>/config.yaml (or the "
                "configs it was trained with)"
            ) from None
        checkpoint = checkpoints.read(ckpt_path)
        hyper_parameters = {k: v for k, v in checkpoint["hyper_parameters"].items() if k != "_instantiator"}
        model = instantiate_module(SpikingClassifier, hyper_parameters)  # names checked by load_from_checkpoint
        channels, height, _ = data.input_shape
        model.net.build(channels, height)
        model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), data


def _data_module(configs: list[str], options: list[str]):
    """The data module that ``plifnet fit --config CONFIGS OPTIONS`` would train on (read as fit reads them:
    after the recipe, and not this process's own arguments), and every string the configs give."""
    from argparse import ArgumentError

    from lightning.pytorch import LightningDataModule
    from lightning.pytorch.cli import LightningCLI

    from plifnet import checkpoints
    from plifnet.cli import RECIPE, shipped_config
    from plifnet.module import SpikingClassifier

    class ConfigReader(LightningCLI):
        def add_arguments_to_parser(self, parser):  # a run's config.yaml holds the options of `fit` itself too
            parser.add_argument("--ckpt_path", default=None)
            parser.add_argument("--weights_only", default=None)
            parser.add_argument("--drop_callbacks", default=[])  # plifnet fit's: callbacks do not matter here

    args = [arg for config in configs for arg in ("--config", shipped_config(config))] + list(options)
    try:
        with mock.patch.object(sys, "argv", sys.argv[:1]):
            cli = ConfigReader(
                SpikingClassifier,
                LightningDataModule,
                subclass_mode_data=True,
                run=False,
                args=args,
                save_config_callback=None,
                parser_kwargs={"exit_on_error": False, "default_config_files": [str(RECIPE)]},
            )
    except ArgumentError as error:
        raise ValueError(f"--config {' '.join(map(str, configs))}: {str(error).strip().splitlines()[0]}") from None
    return cli.datamodule, checkpoints.strings(cli.config)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="plifnet export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by plifnet fit")
    parser.add_argument("--out", required=True, type=Path, help="the NIR file to write (HDF5), e.g. mnist.nir")
    parser.add_argument(
        "--config",
        action="append",
        help="plifnet fit's config(s), where the checkpoint alone cannot rebuild the network (repeatable)",
    )
    parser.add_argument("--time_steps", type=int, help="T in the metadata (default: the network's)")
    parser.add_argument(
        "--allow_class_path",
        action="append",
        default=[],
        help="a class path the checkpoint names that is not plifnet's or an installed plug-in's, "
        "to be imported all the same (repeatable)",
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--target",
        choices=tuple(TARGETS),
        default="nir",
        help="the toolchain whose NIR importer will read the file: only what it maps, by exact "
        "rewrites (README's table); nir: the graph as NIR specifies it (default)",
    )
    parser.add_argument(
        "--dt",
        type=float,
        help="seconds per time step: NIR's tau is tau in steps x dt (default: the "
        "target's importer's: 1 for nir, 1e-4 SpikingJelly and snnTorch, "
        "1e-3 Norse)",
    )
    args = parser.parse_args(argv)
    from plifnet.checkpoints import CheckpointError
    from plifnet.files import WriteFailed, write_atomically, write_failure

    try:
        model, data = load_model(args.ckpt_path, args.config, args.allow_class_path)
        graph = to_nir(
            model,
            args.time_steps,
            np.dtype(args.dtype).type,
            getattr(data, "input_shape", None),
            target=args.target,
            dt=args.dt,
        )
    except (CheckpointError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.out, lambda path: nir.write(path, graph))
    except WriteFailed as error:
        raise SystemExit(write_failure(error, elsewhere="--out PATH")) from None
    neurons = sum(is_neuron(module) for module in model.modules())  # the graph has spike nodes for max-pooling too
    print(
        f"wrote {args.out}: {len(graph.nodes)} NIR nodes ({neurons} spiking layers), "
        f"T = {graph.metadata['time_steps']}, {graph.metadata['input']} input, for {args.target} at "
        f"dt = {graph.metadata['dt']:g}",
        file=sys.stderr,
    )
    return args.out


if __name__ == "__main__":
    main()
