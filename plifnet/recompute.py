"""What training keeps for backward: a policy over a network's stages (``SpikingNet(memory=...)``).

A network made of stages (stage 0 the encoder, then its layers) and blocks (a block runs from one
convolution or linear layer to the next) is run by one of :data:`MEMORY`:

- ``store``: every layer's saved tensors (plain autograd).
- ``first_block``: the first block (the encoder's convolution and BatchNorm, the first neuron and
  pooling: the largest activations, and the cheapest to recompute) is recomputed in backward, in groups
  of :data:`CHANNEL_GROUP` channels, so that backward holds one group's activations at a time; the rest
  is stored, the spikes that enter a block as bytes (:func:`spikes_kept_as_bytes`).
- ``checkpoint``: every block recomputed (only its input kept), the first in groups of channels: the
  fewest bytes kept, one more forward pass.

Either recomputing policy gives the stored path's spikes and running statistics bit for bit, and its
gradients to float32 rounding where the first block is split (a layer-wide tau's gradient is summed group
by group), else bit for bit. A first block that may mix channels (an encoder of one's own, a neuron with
hooks of its own) is recomputed whole, with a warning that says why.

The network provides ``blocks`` (``[(start, stop)]`` of stages), ``run_stages(x, start, stop, modules)``
and ``channelwise_stages()`` (the first block's stages that treat every channel alone, or why there are none).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from plifnet import kernels

MEMORY = ("store", "first_block", "checkpoint")
CHANNEL_GROUP = 16  # channels of the first block recomputed at once in backward (memory first_block, checkpoint)


def run(net: nn.Module, x: torch.Tensor, memory: str) -> torch.Tensor:
    """``net``'s forward through its blocks, keeping for backward what ``memory`` says (while grad is enabled)."""
    recompute = memory != "store" and torch.is_grad_enabled()
    for start, stop in net.blocks:
        if recompute and start == 0:
            x = _first_block_recomputed(net, x, stop, memory)
        elif recompute and memory == "checkpoint":
            x = _recomputed(net, net.run_stages, x, start, stop)
        elif recompute:  # first_block: the later blocks stored, their input spikes as bytes
            with spikes_kept_as_bytes(x):
                x = net.run_stages(x, start, stop)
        else:
            x = net.run_stages(x, start, stop)
    return x


def _recomputed(net: nn.Module, function: Callable, *args) -> torch.Tensor:
    """``function(*args)``, its saved tensors recomputed in backward (torch.utils.checkpoint)."""
    return checkpoint(
        function, *args, use_reentrant=False, context_fn=lambda: (nullcontext(), running_statistics_kept(net))
    )


def _first_block_recomputed(net: nn.Module, x: torch.Tensor, stop: int, memory: str) -> torch.Tensor:
    """The first block, recomputed in backward: its stages that treat every channel alone (Conv2d +
    BatchNorm2d, a neuron with the built-in step, max-pooling) one group of channels at a time, each
    group its own recomputation, so that backward holds a group's activations, not the block's."""
    modules, channels, reason = net.channelwise_stages()
    if reason:  # recomputed whole: less kept, but the backward's peak is the block's, as with store
        warnings.warn(
            f"memory {memory!r}: the first block is recomputed whole, not {CHANNEL_GROUP} channels "
            f"at a time, because {reason}; its backward peak stays that of memory 'store'",
            stacklevel=4,
        )
    if reason or channels <= CHANNEL_GROUP:  # nothing to split: the block recomputed whole
        return _recomputed(net, net.run_stages, x, 0, stop)
    before = [{name: b.clone() for name, b in m.named_buffers() if not b.dim()} for m in modules]

    def run_group(x: torch.Tensor, group: slice) -> torch.Tensor:
        parts = [_with_tensors(m, _channel_slice(m, channels, group, kept)) for m, kept in zip(modules, before)]
        return net.run_stages(x, 0, len(modules), parts)

    groups = [slice(start, start + CHANNEL_GROUP) for start in range(0, channels, CHANNEL_GROUP)]
    x = torch.cat([_recomputed(net, run_group, x, group) for group in groups], dim=2)  # [T, N, C, ...]
    return net.run_stages(x, len(modules), stop)


@contextmanager
def running_statistics_kept(net: nn.Module):
    """Recomputation runs each BatchNorm's training forward a second time, which would move its running
    statistics twice per batch: they are put back as the first forward left them."""
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    kept = [[buffer.clone() for buffer in (m.running_mean, m.running_var, m.num_batches_tracked)] for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (mean, var, count) in zip(norms, kept):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


@contextmanager
def spikes_kept_as_bytes(spikes: torch.Tensor):
    """Within it, a tensor that autograd saves for backward and that is ``spikes`` (or a view of all of
    it, as a convolution's flattened input) is kept as uint8, a quarter of float32's bytes, and given
    back in its dtype: where every value is 0 or 1, checked as it is packed (else it is kept as it is)."""
    # what identifies the spikes, not the tensor: every saved tensor keeps these hooks, and a reference
    # to the spikes from here would keep their float bytes too
    identity = (spikes.data_ptr(), spikes.numel(), spikes.dtype)

    def pack(tensor: torch.Tensor):
        if (tensor.data_ptr(), tensor.numel(), tensor.dtype) == identity:
            packed = kernels.binary_as_bytes(tensor.detach())
            if packed is not None:
                return packed, tensor.dtype
        return tensor, None

    def unpack(packed):
        tensor, dtype = packed
        return tensor if dtype is None else tensor.to(dtype)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield


def _channel_slice(module: nn.Module, channels: int, group: slice, before: dict) -> dict:
    """The parameters and buffers of ``module`` for ``functional_call`` on the channels ``group`` of a
    layer of ``channels``: those with one row per channel cut to the group's rows, the others whole.
    A counter such as BatchNorm's ``num_batches_tracked`` moves in the first group only: the others
    get a copy of its value in ``before``, so that it moves once per call, as without groups."""
    tensors = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return {
        name: tensor[group]
        if tensor.dim() and tensor.shape[0] == channels
        else tensor
        if group.start == 0 or name not in before
        else before[name].clone()
        for name, tensor in tensors.items()
    }


def _with_tensors(module: nn.Module, tensors: dict) -> Callable:
    """``module`` as a function that runs with ``tensors`` in place of its parameters and buffers."""
    return lambda *args, **kwargs: functional_call(module, tensors, args, kwargs)
