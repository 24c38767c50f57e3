"""Looking inside a network on one batch: what the probe figures are drawn from (:func:`plifnet.plots.probe_page`,
:class:`plifnet.callbacks.Probe` during training, ``plifnet inspect`` for a checkpoint).

:func:`probe` runs one batch through the network with a forward hook on every spiking layer that the neuron contract
finds (plifnet's, plug-ins', peers'), and keeps per layer only small summaries, never a layer's activations:

- ``raster [T, K]``: the spikes of the batch's first sample for K neurons of the layer, drawn once from the layer's
  name (the same neurons every time, whatever the run's random state);
- ``rates [M]``: each of the layer's M neurons (per sample) its firing rate over the batch and the time steps;
- ``heat [T, C]``: the firing rate per time step and channel (dim 2 of ``[T, N, C, ...]``; a dense layer's neurons);
- ``trace [T, J]``: the membrane of J of the K neurons for the first sample, where the family exposes it
  (:func:`plifnet.contract.membrane`; ``meaning`` says which moment of the step it is, ``threshold`` where to draw
  the line);
- ``grad [T]``: the mean ``|dL/dX[t]|`` at the layer's input, the gradient that reached the layer through its
  surrogate at each step (one value where the input has no time axis: a static image given at every step);
- ``time_constants``: every time constant of the layer in time steps (``tau``, ``tau_adapt``, ...), flattened.

A neuron's output is ``[T, N, ...]`` when it is called once per forward and ``[N, ...]`` per step when it is called
at every step (snnTorch's, Norse's cells, single-step mode): the calls are then stacked in time.
Nothing of the run changes: the network runs in eval mode, its state is reset before and after, the gradients are
taken with ``torch.autograd.grad`` with respect to the layers' inputs (no parameter's ``.grad`` is touched), other
forward hooks (the monitors') are held off, and the random state of torch, numpy and ``random`` is put back.
"""

from __future__ import annotations

import contextlib
import random
import warnings
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from plifnet import compat, contract


@dataclass
class LayerProbe:
    """One spiking layer on the probe batch (shapes in the module's docstring)."""

    raster: torch.Tensor
    rates: torch.Tensor
    heat: torch.Tensor
    trace: torch.Tensor | None = None
    threshold: float = 0.0
    meaning: str = ""
    grad: torch.Tensor | None = None
    time_constants: dict[str, torch.Tensor] = field(default_factory=dict)
    channels: bool = False  # whether heat's rows are channels of a [T, N, C, ...] layer (else a dense layer's neurons)

    @property
    def dead(self) -> float:
        """The fraction of neurons that never fired on the batch."""
        return (self.rates == 0).float().mean().item()

    @property
    def saturated(self) -> float:
        """The fraction of neurons that fired at every step of every sample."""
        return (self.rates == 1).float().mean().item()


@contextlib.contextmanager
def random_state_kept():
    """Within it, draw as you like: torch's (CPU and CUDA), numpy's and ``random``'s states are put back after."""
    python, numpy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


def shown_neurons(name: str, neurons: int, count: int) -> torch.Tensor:
    """``count`` of a layer's ``neurons`` indices, sorted, drawn from a generator seeded by the layer's name."""
    generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    return torch.randperm(neurons, generator=generator)[:count].sort().values


def time_first(calls: list[torch.Tensor], samples: int) -> torch.Tensor:
    """One layer's tensors of one forward as ``[T, N, ...]``: the calls stacked in time where it was called per step,
    the one call's output where it took the whole sequence (``[N, ...]`` alone: one step)."""
    if len(calls) > 1:
        return torch.stack(calls)
    (values,) = calls
    whole = values.dim() >= 2 and values.shape[1] == samples
    if whole and values.shape[0] == samples:  # [T, N, ...] with T = N, or one step [N, C, ...] with C = N
        warnings.warn(
            f"probe: a layer called once returned {tuple(values.shape)} for {samples} samples, read as [T, N, ...]; "
            f"where it is one step [N, C, ...], probe another number of samples (Probe(samples=...), --samples)",
            RuntimeWarning,
        )
    return values if whole else values.unsqueeze(0)


def probe(
    net: nn.Module,
    x,
    layers: dict[str, nn.Module],
    *,
    loss=None,
    samples: int | None = None,
    neurons: int = 64,
    traces: int = 3,
) -> dict[str, LayerProbe]:
    """Each of ``net``'s spiking ``layers`` (by name: :func:`plifnet.callbacks.spiking_layers`) on the batch ``x``.

    ``loss``: a function of ``net(x)`` giving the loss whose gradient ``grad`` shows (None: no ``grad``);
    ``samples``: the batch size (default ``len(x)``; give it where x is time first, ``[T, N, ...]``);
    ``neurons``: K, the neurons of each raster; ``traces``: J, the membranes drawn."""
    samples = len(x) if samples is None else samples
    calls: dict[str, list] = {name: [] for name in layers}

    def hook(name):
        def keep(module, args, output):
            given = args[0] if args and torch.is_tensor(args[0]) else None
            calls[name].append((contract.spikes(module, output).detach(), contract.membrane(module, output), given))

        return keep

    was_training = net.training
    with contextlib.ExitStack() as stack:
        stack.enter_context(random_state_kept())
        stack.enter_context(torch.inference_mode(False))
        stack.enter_context(torch.enable_grad() if loss is not None else torch.no_grad())
        stack.enter_context(compat.forward_hooks_off(net))  # the monitors must not count the probe
        stack.enter_context(contract.eager())  # a compiled network would compile the hooks in
        stack.callback(net.train, was_training)
        stack.callback(contract.reset_state, net)
        for module in layers.values():
            stack.enter_context(contract.recording(module))
        handles = [module.register_forward_hook(hook(name)) for name, module in layers.items()]
        stack.callback(lambda: [handle.remove() for handle in handles])
        net.eval()
        contract.reset_state(net)
        output = net(x)
        inputs = [given for name in layers for _, _, given in calls[name] if given is not None and given.requires_grad]
        grads = (
            dict(zip(map(id, inputs), torch.autograd.grad(loss(output), inputs, allow_unused=True)))
            if (loss is not None and inputs)
            else {}
        )
    return {
        name: _summary(name, module, calls[name], grads, samples, neurons, traces)
        for name, module in layers.items()
        if calls[name]
    }


def _summary(name, module, calls, grads, samples, neurons, traces) -> LayerProbe:
    spikes = time_first([spike for spike, _, _ in calls], samples).float()
    flat = spikes.reshape(spikes.shape[0], spikes.shape[1], -1)  # [T, N, M]
    shown = shown_neurons(name, flat.shape[2], neurons).to(flat.device)
    heat = spikes.mean(1) if spikes.dim() <= 3 else spikes.mean(1).flatten(2).mean(2)  # [T, C]
    summary = LayerProbe(
        raster=flat[:, 0, shown].bool().cpu(), rates=flat.mean((0, 1)).cpu(), heat=heat.cpu(), channels=spikes.dim() > 3
    )
    membranes = [membrane for _, membrane, _ in calls]
    if all(membrane is not None for membrane in membranes):
        values = time_first([membrane.values for membrane in membranes], samples).float()
        summary.trace = values.reshape(values.shape[0], values.shape[1], -1)[:, 0, shown[:traces]].cpu()
        summary.threshold, summary.meaning = membranes[0].threshold, membranes[0].meaning
    given = [grads.get(id(x)) if x is not None else None for _, _, x in calls]
    given = [g.float() if g is not None else None for g in given]  # a bf16 run's gradients: drawn in float32
    if given and all(g is not None for g in given):
        if len(given) > 1:
            summary.grad = torch.stack([g.abs().mean() for g in given]).cpu()
        else:
            g = given[0]
            per_step = g.shape == spikes.shape and spikes.shape[0] > 1
            summary.grad = (g.abs().flatten(1).mean(1) if per_step else g.abs().mean().reshape(1)).cpu()
    summary.time_constants = {
        constant: torch.as_tensor(value.steps).detach().float().flatten().cpu()
        for constant, value in contract.time_constants(module).items()
    }
    return summary
