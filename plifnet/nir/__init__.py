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
``events``: frame t at step t), ``dt`` and ``target``. A network for sequences (:mod:`plifnet.nir.sequences`)
is a graph of its own form, recurrent loops included, with ``input: sequence``.

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

Command line (:mod:`plifnet.export`): ``plifnet export --ckpt_path CKPT --out FILE.nir [--target T] [--dt DT]`` (``--config`` as
for plifnet fit when the checkpoint alone cannot rebuild the network).
"""

import nir
import numpy as np

from plifnet.errors import UserError
from plifnet.nir import read, write
from plifnet.nir.read import NIRNet
from plifnet.nir.sequences import is_sequence, sequence_from_nir, sequence_to_nir
from plifnet.nir.targets import MAX_BYTES, TARGETS, Target
from plifnet.sequences import SequenceNet


def to_nir(model, time_steps=None, dtype=np.float32, input_shape=None, target: str = "nir", dt: float | None = None):
    """The NIR graph of a network: a network for sequences through :func:`plifnet.nir.sequences.sequence_to_nir`,
    any other through :func:`plifnet.nir.write.to_nir` (whose docstring says the arguments)."""
    net = getattr(model, "net", model)
    if isinstance(net, SequenceNet):
        if net.training:
            raise UserError("to_nir exports a network in eval mode: call .eval()")
        if time_steps is not None or input_shape is not None:
            raise UserError(
                "a network for sequences takes its steps and features from its input: give neither time_steps nor "
                "input_shape (--time_steps)"
            )
        return sequence_to_nir(net, dtype, target, TARGETS["nir"].dt if dt is None else dt)
    return write.to_nir(model, time_steps, dtype, input_shape, target, dt)


def from_nir(graph, dt: float | None = None, max_bytes: int = MAX_BYTES):
    """A plifnet network from a NIR graph or file: a network for sequences where the graph's metadata says
    ``input: sequence`` (:func:`plifnet.nir.sequences.sequence_from_nir`), else a chain of layers
    (:func:`plifnet.nir.read.from_nir`, whose docstring says the arguments and the checks)."""
    graph = graph if isinstance(graph, nir.NIRGraph) else read.read_file(graph, max_bytes)
    if is_sequence(graph):
        return sequence_from_nir(graph, read.time_step(graph, dt))
    return read.from_nir(graph, dt, max_bytes)


__all__ = ["NIRNet", "TARGETS", "Target", "from_nir", "to_nir"]
