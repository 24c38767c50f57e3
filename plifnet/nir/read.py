"""Reading a NIR graph into a plifnet network (:func:`from_nir`, :class:`NIRNet` for configs): chains of
Conv2d, LIF/IF, pooling of spikes, Flatten and Linear/Affine, as :func:`plifnet.nir.write.to_nir` writes them
and other frameworks do."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

from plifnet.errors import UserError
from plifnet.models import MaxPool, SpikingNet, TimeDistributed, Vote
from plifnet.neurons import IF, PLIF
from plifnet.nir.targets import MAX_BYTES, checked_graph, checked_time_steps, text


def _subclasses(cls) -> list[type]:
    return [cls] + [sub for child in cls.__subclasses__() for sub in _subclasses(child)]


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
                types.add(text(item[()]))
                if name.endswith("type") and isinstance(item, h5py.Dataset) and item.shape == ()
                else None
            )
        )
    return types


def read_file(path, max_bytes: int = MAX_BYTES) -> nir.NIRGraph:
    """The graph of a NIR file, once its declared arrays fit ``max_bytes`` (checked before any is read: a small
    compressed file can declare gigabytes) and its node types are NIR's."""
    declared, largest = _declared_bytes(path)
    if declared > max_bytes:
        raise UserError(
            f"NIR file {path} declares {declared / 2**20:,.0f} MiB of arrays (the largest: {largest}), "
            f"over the limit of {max_bytes / 2**20:,.0f} MiB; if the file is right, raise the limit "
            f"(from_nir(path, max_bytes=...), --model.net.max_mib N)"
        )
    unknown = sorted(_node_types(path) - {cls.__name__ for cls in _subclasses(nir.NIRNode)})
    if unknown:  # nir.read would fail on an assert with no message
        raise UserError(
            f"NIR file {path}: a node of unknown type {unknown[0]!r}, not one of NIR "
            f"{version('nir')}'s; plifnet reads Conv2d, LIF, LI, IF, SumPool2d/AvgPool2d, Threshold, "
            f"Flatten and Linear/Affine"
        )
    return nir.read(path)


def time_step(graph: nir.NIRGraph, dt: float | None) -> tuple[float, str]:
    """``(dt, where it came from)``: given, the graph's metadata, or 1 (NIR time in steps)."""
    metadata = graph.metadata or {}
    if dt is not None:
        step = (float(dt), "given")
    elif "dt" in metadata:
        step = (float(np.asarray(metadata["dt"])), "the graph's metadata")
    else:
        step = (1.0, "the default: the graph's metadata has none")
    if not (np.isfinite(step[0]) and step[0] > 0):
        raise UserError(
            f"dt = {step[0]:g} ({step[1]}) is not a positive time step; give the graph's dt "
            f"(from_nir(path, dt=...), --model.net.dt)"
        )
    return step


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
        graph = read_file(graph, max_bytes)
    chain = _chain(graph)
    metadata = graph.metadata or {}
    step = time_step(graph, dt)
    time_steps = checked_time_steps(metadata.get("time_steps", 8), "the graph's metadata time_steps")
    checked_graph(graph, "in the graph; plifnet reads finite weights and positive time constants only")
    static = text(metadata.get("input", "static")) == "static"
    input_shape = [int(n) for n in graph.nodes[chain[0]].input_type["input"]]
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise UserError(f"from_nir builds networks of square images or frames [C, H, H]; the input is {input_shape}")
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
            raise UserError(
                f"node {name} ({type(node).__name__}) has no plifnet form here; from_nir reads chains of "
                f"Conv2d, LIF/IF, SumPool2d/AvgPool2d of spikes + a spike node, Flatten and "
                f"Linear/Affine, as to_nir writes them"
            )
        spikes = isinstance(layers[-1], (PLIF, IF))
    if not layers or not isinstance(layers[0], nn.Conv2d):
        raise UserError("from_nir: the graph must start with a Conv2d (the encoder) after its input")
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
            raise UserError(f"--model.net.path {path}: not a readable NIR file ({error})") from None
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
        raise UserError(
            f"node {name}: a {kind} of spikes is max-pooling only before a Threshold, an IF with r = 1/dt "
            f"or a LIF with tau = dt (both resetting to 0); the next node is {type(spike).__name__}"
            f" (dt = {dt:g}: {step[1]})"
        )
    if value.size != 1 or not 0 < value[0] * window < 1:
        raise UserError(
            f"node {name}: a {kind} of spikes is max-pooling only with one threshold in (0, 1)"
            f"{' / ' + str(window) if window > 1 else ''}"
        )
    if np.any(np.asarray(pool.padding) != 0):
        raise UserError(f"node {name}: {kind} with padding has no max-pooling form here")
    return MaxPool() if kernel == stride == (2, 2) else TimeDistributed(nn.MaxPool2d(kernel, stride))


def _is_dense(node: nir.Conv2d) -> bool:
    """A convolution whose kernel covers its whole input map, unpadded: a Linear of the map's features."""
    if node.input_type is None or node.input_type.get("input") is None:
        return False
    kernel, size = tuple(np.shape(node.weight)[2:]), tuple(int(n) for n in node.input_type["input"][1:])
    padding = node.padding if isinstance(node.padding, (str, bytes)) else np.asarray(node.padding)
    unpadded = text(padding) == "valid" if isinstance(padding, (str, bytes)) else not np.any(padding)
    return kernel == size and unpadded


def _chain(graph: nir.NIRGraph) -> list[str]:
    """The node names from the Input to the Output, for a graph whose nodes form one chain."""
    following: dict[str, list[str]] = {}
    for source, target in graph.edges:
        following.setdefault(source, []).append(target)
    start = [name for name, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(start) != 1:
        raise UserError(f"from_nir reads graphs with one Input node; this one has {len(start)}")
    chain = start
    while following.get(chain[-1]):
        if len(following[chain[-1]]) > 1 or following[chain[-1]][0] in chain:
            raise UserError(
                f"node {chain[-1]} branches or loops back; from_nir reads chains (one path, input to output)"
            )
        chain.append(following[chain[-1]][0])
    if not isinstance(graph.nodes[chain[-1]], nir.Output) or len(chain) != len(graph.nodes):
        raise UserError("from_nir reads chains from the Input to the Output that visit every node")
    return chain


def _conv_from_nir(node: nir.Conv2d) -> nn.Conv2d:
    weight = torch.from_numpy(np.array(node.weight))
    pair = lambda v: tuple(int(n) for n in np.broadcast_to(v, (2,)))  # noqa: E731
    padding = text(node.padding) if isinstance(node.padding, (str, bytes)) else pair(node.padding)
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
        raise UserError(f"node {name}: {what} differs between neurons; plifnet's neurons share one {what} per layer")
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
            raise UserError(
                f"node {name}: IF with r = {_uniform(r, 'r', name):g} charges v += r dt I = "
                f"{_uniform(r, 'r', name) * dt:g} I, not plifnet's H = V + X (r = 1/dt), {other}"
            )
        return IF(v_threshold=threshold, v_reset=reset), None
    tau = np.asarray(node.tau, dtype=np.float64) / dt  # in time steps
    if not np.allclose(node.v_leak, node.v_reset):
        raise UserError(f"node {name}: LIF with v_leak != v_reset has no plifnet form (plifnet leaks towards V_reset)")
    if np.allclose(node.r, 1.0):
        decay_input = True
    elif np.allclose(node.r, tau):
        decay_input = False
    else:
        raise UserError(
            f"node {name}: LIF with r = {np.ravel(node.r)[0]:g}, neither 1 (decay_input=True) nor "
            f"tau / dt = {tau.ravel()[0]:g} (decay_input=False), {other}"
        )
    per_channel = np.unique(tau).size > 1
    if per_channel:  # one tau per channel (dim 0) is PLIF(per_channel); any other pattern is not a plifnet layer
        channel_tau = tau.reshape(tau.shape[0], -1)
        if not np.all(channel_tau == channel_tau[:, :1]):
            raise UserError(
                f"node {name}: tau varies within a channel; plifnet's PLIF has one tau per layer or channel"
            )
        tau_values = channel_tau[:, 0]
    else:
        tau_values = tau.reshape(-1)[:1]
    if not np.all(tau_values > 1):
        raise UserError(
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
