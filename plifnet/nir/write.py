"""Writing a trained network as a NIR graph (:func:`to_nir`), for the target toolchain's importer
(:data:`plifnet.nir.targets.TARGETS`); the mapping of layers to nodes is in :mod:`plifnet.nir`."""

from __future__ import annotations

import copy

import nir
import numpy as np
import torch
from torch import nn

import plifnet
from plifnet import contract
from plifnet.contract import is_neuron
from plifnet.errors import UserError
from plifnet.models import LayerNames, MaxPool, SharedDropout, SpikingNet, TimeDistributed, Vote
from plifnet.nir.read import from_nir
from plifnet.nir.targets import POOL_THRESHOLD, TARGETS, Target, checked_graph, checked_time_steps


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
        raise UserError(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
    spec = TARGETS[target]
    if "network" in spec.refuses:
        raise UserError(
            f"--target {target}: {spec.refuses['network']}; export with --target nir for a simulator "
            f"that reads NIR as specified"
        )
    dt = spec.dt if dt is None else float(dt)
    if not (np.isfinite(dt) and dt > 0):
        raise UserError(f"--dt {dt}: the time step must be a positive number of seconds (or 1: NIR time in steps)")
    if spec.fixed_dt and dt != spec.dt:
        raise UserError(
            f"--target {target} --dt {dt}: its importer assumes dt = {spec.dt:g} and has no option for "
            f"another; leave --dt out"
        )
    exported = (target, spec, dt)
    net = getattr(model, "net", model)
    if net.training:
        raise UserError(
            "to_nir exports a network in eval mode (BatchNorm's running statistics, no dropout): call .eval()"
        )
    if isinstance(net, SpikingNet):
        if not net.built:
            raise UserError(
                "to_nir exports SpikingNet networks (the paper's, or layers=...), built; got an unbuilt one"
            )
        modules = [m.module if isinstance(m, TimeDistributed) else m for m in [net.encoder, *net.layers]]
        graph = _graph(
            modules,
            net.input_shape,
            checked_time_steps(time_steps or net.time_steps, "time_steps"),
            net.arch.static,
            dtype,
            per_step=False,
            exported=exported,
        )
        return checked_graph(
            graph,
            f"at --dt {dt:g} in {np.dtype(dtype).name}: choose a dt for which tau x dt and 1/dt are "
            f"finite and positive, or --dtype float64",
        )
    modules = _sequential_layers(net)
    time_steps = time_steps or getattr(net, "time_steps", None)
    if input_shape is None or time_steps is None:
        raise UserError(
            f"to_nir({type(net).__name__}): give input_shape (C, H, W) and time_steps (the network has no "
            f"'time_steps' attribute); python -m plifnet.export takes them from --config"
        )
    time_steps = checked_time_steps(time_steps, "time_steps")
    graph = checked_graph(
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


def _sequential_layers(net: nn.Module) -> list[nn.Module]:
    """The layers of a network that is one ``nn.Sequential``, or whose only child is one, flattened."""
    chain = net
    if not isinstance(net, nn.Sequential):
        children = list(net.named_children())
        if len(children) != 1 or not isinstance(children[0][1], nn.Sequential) or list(net.parameters(recurse=False)):
            raise UserError(
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
            raise UserError(
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
        raise UserError(
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
    numbered = LayerNames()
    last = "input"  # the name of the node that produced the current tensor
    position = 0
    while position < len(modules):
        module = modules[position]
        position += 1
        convolution = _conv_and_norm(module)
        if isinstance(module, nn.Conv2d) and position < len(modules) and isinstance(modules[position], nn.BatchNorm2d):
            convolution, position = (module, modules[position]), position + 1
        if convolution is not None:
            last = graph.add(numbered("conv"), _folded_conv(*convolution, graph.shape, dtype))
        elif is_neuron(module):
            node = _neuron(module, last, graph.shape, dtype, exported)
            last = graph.add(f"{last}_{'if' if isinstance(node, nir.IF) else 'lif'}", node)
        elif isinstance(module, (MaxPool, nn.MaxPool2d)):
            if not graph.spikes:
                raise UserError(
                    f"layer {type(module).__name__} after {last}: max-pooling exports as SumPool2d + "
                    f"Threshold only where its input is spikes"
                )
            kernel, stride = _pool_window(module)
            pool = graph.add(
                numbered("pool"),
                target.pool(kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array([0, 0])),
            )
            last = graph.add(f"{pool}_{target.pool_spike}", _pool_spike(target, graph.shape, kernel, dt, dtype))
        elif isinstance(module, (SharedDropout, nn.Dropout)):
            continue  # the identity in eval mode
        elif isinstance(module, nn.Flatten):
            if module.start_dim != (1 if per_step else 2) or module.end_dim != -1:
                form = "Flatten(1) of a step's [N, ...]" if per_step else "Flatten(2) of [T, N, ...]"
                raise UserError(
                    f"nn.Flatten({module.start_dim}, {module.end_dim}) after {last}: only {form} (all "
                    f"features of a sample) has a NIR form"
                )
            if target.flatten:
                last = graph.add(
                    "flatten", nir.Flatten(input_type={"input": np.array(graph.shape)}, start_dim=0, end_dim=-1)
                )
        elif isinstance(module, nn.Linear):
            bias = None if module.bias is None else module.bias.detach().double().numpy().astype(dtype)
            last = graph.add(
                numbered("fc"), _dense(module.weight.detach().double().numpy().astype(dtype), bias, graph.shape)
            )
        elif isinstance(module, Vote):
            classes = graph.shape[0] // module.votes
            votes = np.kron(np.eye(classes), np.full((1, module.votes), 1 / module.votes)).astype(dtype)
            last = graph.add("vote", _dense(votes, None, graph.shape))
        else:
            raise UserError(
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
            raise UserError(
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
        raise UserError(f"layer {name}: {error}") from None

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
            raise UserError(
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
        raise UserError(f"{module}: only max-pooling without padding, dilation or ceil_mode has a NIR form")
    return pair(module.kernel_size), pair(module.stride if module.stride is not None else module.kernel_size)
