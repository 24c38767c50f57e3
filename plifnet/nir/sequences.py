"""NIR export and import of networks for sequences (:class:`plifnet.sequences.SequenceNet`) whose neurons NIR has
(plifnet's PLIF, LIF, IF with the hard reset), feed-forward or recurrent, with either readout NIR expresses::

    input [F] -> fc1 (Affine: W_in, b) -> lif1 (LIF) -> fc2 -> lif2 -> ...        feed-forward layers
    lif1 -> rec1 (Linear: W_rec) -> lif1                                          a recurrent layer: lif1 sums
                                                                                  fc1 and rec1 (a cycle: S[t-1])
    ... -> out (Affine) -> readout (LI: tau per class, r = 1, v_leak = 0) -> output   max, mean, last, step
    ... -> out (Affine) -> readout (LIF) -> output                                     rate

At dt = 1 NIR's LI, ``tau dv/dt = (v_leak - v) + r I``, is the leaky readout ``U <- U + k (Y - U)`` with
``tau = 1/k``; its LIF is plifnet's step (:mod:`plifnet.nir`). NIR has no node for the reduction over time, so
the metadata says it (``readout``: max, mean, last, step), with ``input: sequence`` and ``dt``. ALIF and adLIF
(an adapting neuron has no NIR node) and the soft reset are refused in one line, as for any network.
"""

from __future__ import annotations

import nir
import numpy as np
import torch
from torch import nn

import plifnet
from plifnet.errors import UserError
from plifnet.nir.read import _linear_from_nir, _neuron_from_nir
from plifnet.nir.targets import TARGETS, checked_graph, text
from plifnet.nir.write import _dense, _neuron
from plifnet.sequences import LeakyReadout, Recurrent, SequenceNet


def is_sequence(graph: nir.NIRGraph) -> bool:
    """Whether the graph is a network for sequences (its metadata says so)."""
    return text((graph.metadata or {}).get("input", "")) == "sequence"


def sequence_to_nir(net: SequenceNet, dtype=np.float32, target: str = "nir", dt: float = 1.0) -> nir.NIRGraph:
    """The NIR graph of ``net`` (in eval mode), for a simulator that reads NIR as specified (``target`` nir)."""
    if target != "nir":
        raise UserError(
            f"--target {target}: the importers of the toolchains read chains of layers; a network for sequences "
            f"exports with --target nir"
        )
    exported = (target, TARGETS[target], float(dt))
    nodes = {"input": nir.Input(input_type={"input": np.array([net.inputs])})}
    edges, last = [], "input"
    for index, layer in enumerate(net.layers, start=1):
        linear, neuron = (layer.input, layer.neuron) if isinstance(layer, Recurrent) else (layer[0], layer[1])
        width = (linear.out_features,)
        nodes[f"fc{index}"] = _affine(linear, dtype)
        nodes[f"lif{index}"] = _neuron(neuron, f"lif{index}", width, dtype, exported)
        edges += [(last, f"fc{index}"), (f"fc{index}", f"lif{index}")]
        if isinstance(layer, Recurrent):
            nodes[f"rec{index}"] = nir.Linear(weight=layer.recurrent.weight.detach().double().numpy().astype(dtype))
            edges += [(f"lif{index}", f"rec{index}"), (f"rec{index}", f"lif{index}")]
        last = f"lif{index}"
    classes = (net.classes,)
    if isinstance(net.output, LeakyReadout):
        nodes["out"] = _affine(net.output.linear, dtype)
        zero = np.zeros(classes, dtype=dtype)
        tau = (1 / torch.sigmoid(net.output.w.detach().double())).numpy() * dt
        nodes["readout"] = nir.LI(tau=tau.astype(dtype), r=np.ones(classes, dtype=dtype), v_leak=zero)
    else:
        nodes["out"] = _affine(net.output[0], dtype)
        nodes["readout"] = _neuron(net.output[1], "readout", classes, dtype, exported)
    nodes["output"] = nir.Output(output_type={"output": np.array(classes)})
    edges += [(last, "out"), ("out", "readout"), ("readout", "output")]
    metadata = {
        "input": "sequence",
        "readout": net.readout,
        "dt": float(dt),
        "target": target,
        "producer": f"plifnet {plifnet.__version__}",
    }
    return checked_graph(
        nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata),
        f"at --dt {dt:g}: choose a dt for which tau x dt is finite and positive",
    )


def sequence_from_nir(graph: nir.NIRGraph, step: tuple[float, str]) -> SequenceNet:
    """A :class:`SequenceNet` from a graph of the form :func:`sequence_to_nir` writes, at time step ``step``
    ``(dt, where it came from)``: its layers all feed-forward or all recurrent, as a SequenceNet's are."""
    checked_graph(graph, "in the graph; plifnet reads finite weights and positive time constants only")
    following: dict[str, list[str]] = {}
    for source, target in graph.edges:
        following.setdefault(source, []).append(target)
    readout = text(graph.metadata.get("readout", "step"))
    inputs = [name for name, node in graph.nodes.items() if isinstance(node, nir.Input)]
    if len(inputs) != 1:
        raise UserError(f"from_nir reads sequence graphs with one Input node; this one has {len(inputs)}")
    layers, dense = [], _only(following, inputs[0], "an Affine or Linear")
    while True:
        after = _only(following, dense, "a neuron")
        if isinstance(graph.nodes[after], nir.Output):
            raise UserError(f"node {dense} leads to the output with no readout node; from_nir reads LI or LIF there")
        successors = [name for name in following.get(after, []) if name != dense]
        loops = [name for name in successors if following.get(name) == [after]]
        onward = [name for name in successors if name not in loops]
        if len(onward) == 1 and isinstance(graph.nodes[onward[0]], nir.Output):
            return _build(graph, layers, (dense, after), readout, step)
        if len(loops) > 1 or len(onward) != 1:
            raise UserError(f"node {after} branches; from_nir reads layers in one chain, each with at most one loop")
        layers.append((dense, after, loops[0] if loops else None))
        dense = onward[0]


def _only(following: dict, name: str, what: str) -> str:
    nodes = following.get(name, [])
    if len(nodes) != 1:
        raise UserError(f"node {name} feeds {len(nodes)} nodes; from_nir expects one, {what}")
    return nodes[0]


def _build(graph, layers, output, readout, step) -> SequenceNet:
    nodes = graph.nodes
    recurrent = {loop is not None for _, _, loop in layers}
    if len(recurrent) > 1:
        raise UserError("the graph mixes recurrent and feed-forward layers; a SequenceNet's are all one or the other")
    weights = [np.asarray(nodes[dense].weight) for dense, _, _ in layers]
    classes = np.asarray(nodes[output[0]].weight).shape[0]
    spiking_readout = not isinstance(nodes[output[1]], nir.LI)
    net = SequenceNet(
        weights[0].shape[1] if weights else np.asarray(nodes[output[0]].weight).shape[1],
        classes,
        hidden=[w.shape[0] for w in weights],
        recurrent=recurrent == {True},
        readout="rate" if spiking_readout else readout,
    )
    dtype = torch.from_numpy(np.array(nodes[output[0]].weight)).dtype
    leaks = []  # (parameter, w in float64): set once the network has the file's precision, not rounded before
    for layer, (dense, spiking, loop) in zip(net.layers, layers):
        linear = _linear_from_nir(nodes[dense].weight, getattr(nodes[dense], "bias", None))
        neuron = _leaky_neuron(nodes[spiking], spiking, step, leaks)
        if loop is not None:
            layer.input, layer.neuron = linear, neuron
            layer.recurrent = _linear_from_nir(nodes[loop].weight, None)
        else:
            layer[0], layer[1] = linear, neuron
    out = _linear_from_nir(nodes[output[0]].weight, getattr(nodes[output[0]], "bias", None))
    if spiking_readout:
        net.output = nn.Sequential(out, _leaky_neuron(nodes[output[1]], output[1], step, leaks))
    else:
        li = nodes[output[1]]
        if not (np.allclose(li.r, 1) and not np.any(li.v_leak)):
            raise UserError(f"node {output[1]}: an LI readout with r = 1 and v_leak = 0 is plifnet's; this one is not")
        net.output.linear = out
        leaks.append((net.output.w, -np.log(np.asarray(li.tau, dtype=np.float64) / step[0] - 1)))
    net = net.to(dtype)
    for parameter, w in leaks:
        parameter.data = torch.as_tensor(w, dtype=dtype).reshape(parameter.shape)
    return net


def _leaky_neuron(node, name: str, step, leaks: list):
    """The neuron of a LIF or IF node (its ``w`` added to ``leaks``, for a LIF: per neuron where it varies)."""
    if not isinstance(node, (nir.LIF, nir.IF)):
        raise UserError(f"node {name} ({type(node).__name__}) has no plifnet form here; from_nir reads LIF and IF")
    neuron, w = _neuron_from_nir(node, name, step)
    if w is not None:
        leaks.append((neuron.w, w))
    return neuron


def _affine(linear: nn.Linear, dtype):
    """The layer as write.py's fully-connected node over features (``nir.Affine``, or ``nir.Linear`` without bias)."""
    bias = None if linear.bias is None else linear.bias.detach().double().numpy().astype(dtype)
    return _dense(linear.weight.detach().double().numpy().astype(dtype), bias, (linear.in_features,))
