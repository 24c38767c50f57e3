"""Spiking networks for sequences: layers of Linear -> neuron, feed-forward or recurrent, and a readout.

Every tensor between layers is ``[T, N, F]``: T time steps of N samples of F features (sequential MNIST
``[784, N, 1]``, ECG ``[1301, N, 4]``, SHD ``[T, N, 700]``).

A recurrent layer (:class:`Recurrent`) adds to each step's input current the previous step's spikes
through its own weights::

    I[t] = W_in X[t] + b + W_rec S[t-1]          S[-1] = 0

The readout (``readout=``) says what the network answers:

- ``rate``: a spiking output layer, one neuron per class; the classifier takes each class's firing rate
  (the time average) and trains it with the paper's ``rate_mse`` (or ``cross_entropy``).
- ``max``, ``mean``, ``last``: a leaky integrator per class, which does not spike
  (``U[t] = U[t-1] + k (Y[t] - U[t-1])``, ``Y = W_out S + b``, its ``k = 1/tau`` learnt per class, starting at
  the options' ``tau``); its membrane at its maximum over time, averaged over time or at the last step are the
  class scores ``[N, classes]`` for ``cross_entropy`` (the standard of SHD and SSC).
- ``step``: the same integrator's membrane at every step, ``[T, N, classes]``: a prediction per time step,
  for labels per step (ECG wave segmentation; unlabelled steps, -1, are left out of loss and accuracy).
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
from torch import nn

from plifnet import time_constants
from plifnet.errors import UserError
from plifnet.factory import neuron_layers
from plifnet.kernels.compiled import run_steps
from plifnet.neurons import BaseNode
from plifnet.options import NeuronOptions

READOUTS = ("rate", "max", "mean", "last", "step")
LOGITS = ("max", "mean", "last", "step")  # readouts whose scores are a membrane: trained with cross-entropy


class Recurrent(nn.Module):
    """A recurrent spiking layer: ``I[t] = W_in X[t] + b + W_rec S[t-1]`` into ``neuron``; ``[T, N, inputs]`` to
    spikes ``[T, N, outputs]``. The neuron must be plifnet's (a :class:`~plifnet.neurons.BaseNode`: plif, lif,
    if, alif, adlif or a plug-in derived from it), which runs the step loop with the recurrent connection."""

    def __init__(self, inputs: int, outputs: int, neuron: nn.Module):
        super().__init__()
        if not isinstance(neuron, BaseNode):
            raise UserError(
                f"a recurrent layer needs a plifnet neuron (plif, lif, if, alif, adlif or a BaseNode subclass), "
                f"got {type(neuron).__name__}: give recurrent false to use it in feed-forward layers"
            )
        if neuron.options.backend not in ("auto", "reference"):  # the feed-forward kernels have no feedback
            raise UserError(
                f"backend {neuron.options.backend!r}: a recurrent layer runs its own fused kernel (backend 'auto') "
                f"or its neuron's step loop in PyTorch (backend 'reference'); give one of those"
            )
        self.input = nn.Linear(inputs, outputs)
        self.recurrent = nn.Linear(outputs, outputs, bias=False)
        self.neuron = neuron

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.neuron(self.input(x), feedback=self.recurrent)


class LeakyReadout(nn.Module):
    """``Y = W_out S + b`` into a leaky integrator per class that does not spike; its membrane ``U [T, N, C]``
    reduced by ``reduce`` (``max``, ``mean``, ``last`` over time: ``[N, C]``; ``step``: ``[T, N, C]``)."""

    def __init__(self, inputs: int, classes: int, reduce: str, tau: float = 2.0):
        super().__init__()
        self.linear = nn.Linear(inputs, classes)
        self.w = nn.Parameter(time_constants.parameter(torch.full((classes,), float(tau))).float())
        self.reduce = reduce

    @property
    def tau(self) -> torch.Tensor:
        """The integrators' time constants ``[C]`` in time steps, detached."""
        return 1 / torch.sigmoid(self.w.detach())

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        y, k = self.linear(spikes), torch.sigmoid(self.w)

        def step(u, y_t):
            u = u + k * (y_t - u)
            return u, u

        # the neurons' loop over time: iterating unbinds (a backward linear in T), and a whole network compiled
        # leaves a long sequence's loop out of its graph instead of unrolling it
        u_seq = run_steps(y, torch.zeros_like(y[0]), step)
        if self.reduce == "max":
            return u_seq.max(0).values
        if self.reduce == "mean":
            return u_seq.mean(0)
        return u_seq[-1] if self.reduce == "last" else u_seq


class SequenceNet(nn.Module):
    """Layers of Linear -> neuron over ``x [T, N, inputs]``, feed-forward or recurrent, and a readout.

    Args:
        inputs: features per step (1 for sequential MNIST, 28 row-wise, 4 for ECG, 700 for SHD/SSC).
        classes: the number of classes.
        hidden: the widths of the spiking layers.
        recurrent: recurrent layers (:class:`Recurrent`) or feed-forward ones (Linear -> neuron).
        neuron: the neurons' name (``plif``, ``lif``, ``if``, ``alif``, ``adlif``, a plug-in's), class or
            factory (as :func:`plifnet.factory.neuron_factory` takes it); a peer's neuron in feed-forward layers.
        options: the neurons' :class:`~plifnet.options.NeuronOptions` (``per_channel``: a tau per neuron).
        readout: ``rate``, ``max``, ``mean``, ``last`` or ``step`` (the module's docstring says each).
    """

    ann_runs_every_step = True  # its ANN counterpart in energy reports is an RNN: one pass per time step

    def __init__(
        self,
        inputs: int,
        classes: int,
        hidden: Sequence[int] = (256, 256),
        recurrent: bool = True,
        neuron: str | type | Callable = "plif",
        options: NeuronOptions = NeuronOptions(),
        readout: Literal["rate", "max", "mean", "last", "step"] = "max",
    ):
        super().__init__()
        if readout not in READOUTS:
            raise UserError(f"readout must be one of {READOUTS}, got {readout!r}")
        if not hidden or min(hidden) < 1:
            raise UserError(f"hidden must list one width >= 1 per spiking layer, got {list(hidden)}")
        make = neuron_layers(neuron, options)
        self.inputs, self.classes, self.readout, self.recurrent = inputs, classes, readout, recurrent
        widths = [inputs, *hidden]
        self.layers = nn.ModuleList(
            Recurrent(n_in, n_out, make(n_out)) if recurrent else nn.Sequential(nn.Linear(n_in, n_out), make(n_out))
            for n_in, n_out in zip(widths, widths[1:])
        )
        if readout == "rate":
            self.output = nn.Sequential(nn.Linear(widths[-1], classes), make(classes))
        else:
            self.output = LeakyReadout(widths[-1], classes, readout, tau=make.options.tau)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [T, N, inputs]`` to class scores: ``[T, N, classes]`` (``rate``: spikes; ``step``: membranes) or
        ``[N, classes]`` (``max``, ``mean``, ``last``)."""
        if x.dim() != 3:
            raise UserError(f"SequenceNet takes a sequence x [T, N, features], got shape {tuple(x.shape)}")
        if x.shape[-1] != self.inputs:
            raise UserError(
                f"the data gives {x.shape[-1]} features per step, and the network takes {self.inputs}: give "
                f"--model.net.inputs {x.shape[-1]}"
            )
        for layer in self.layers:
            x = layer(x)
        return self.output(x)
