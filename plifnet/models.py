"""The six networks of Fang et al., ICCV 2021 (SPEC section 2), built from one table, and your own
networks from the same layer tokens.

Each network is a string of layer tokens read left to right:

    c<n>  Conv2d(n, k3 s1 p1, bias=False) - BatchNorm2d - spiking neuron
    p     MaxPool2d(2, 2)
    d     Dropout(0.5) with one mask per sample for all time steps
    f<n>  Linear(n, bias=False) - spiking neuron (the first one flattens its input)

and the output ``f<10 * classes>`` is followed by the voting layer, which averages groups of 10
output neurons into one score per class. Every tensor between layers is ``[T, N, ...]``.

Static images ([N, C, H, W]) go through the first Conv+BN once; its output is the input current of
the first neuron at every one of ``time_steps`` steps, so the image-to-spike encoder is learned.
Event frames ([T, N, 2, H, W]) feed frame t at step t.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from plifnet import kernels
from plifnet.contract import is_neuron
from plifnet.neurons import BaseNode, neuron_factory


@dataclass(frozen=True)
class Arch:
    in_channels: int
    size: int  # input height = width
    classes: int
    time_steps: int  # the paper's T for this dataset (SPEC section 3)
    static: bool  # True: images encoded once; False: event frames, one per step
    layers: str  # the authors' code
    paper_layers: str | None = None  # the paper's Table, where it differs from the code


ARCHS = {
    "mnist": Arch(1, 28, 10, 8, True, "c128 p c128 p d f2048 d f100"),
    "fashion_mnist": Arch(1, 28, 10, 8, True, "c128 p c128 p d f2048 d f100"),
    "cifar10": Arch(
        3,
        32,
        10,
        8,
        True,
        "c256 c256 c256 p c256 c256 c256 p d f2048 f100",
        paper_layers="c256 c256 c256 p c256 c256 c256 p d f2048 d f100",
    ),
    "nmnist": Arch(2, 34, 10, 10, False, "c128 p c128 p d f2048 d f100"),
    "cifar10dvs": Arch(
        2,
        128,
        10,
        20,
        False,
        "c128 p c128 p c128 p c128 p d f2048 d f100",
        paper_layers="c128 p c128 p c128 p c128 p d f512 d f100",
    ),
    "dvs_gesture": Arch(2, 128, 11, 20, False, "c128 p c128 p c128 p c128 p c128 p d f512 d f110"),
}

VOTES_PER_CLASS = 10
MEMORY = ("store", "first_block", "checkpoint")  # what training keeps for backward: SpikingNet's ``memory``
CHANNEL_GROUP = 16  # channels of the first block recomputed at once in backward (memory first_block, checkpoint)


class TimeDistributed(nn.Module):
    """Apply a stateless module to ``[T, N, ...]`` as one batch of T*N samples."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return self.module(x_seq.flatten(0, 1)).unflatten(0, x_seq.shape[:2])


class MaxPool(nn.Module):
    """``MaxPool2d(2, 2)`` over ``[T, N, C, H, W]``; on the CPU a one-pass kernel that keeps one byte
    per output for backward (:func:`plifnet.kernels.max_pool2x2`), same values and gradients."""

    def __init__(self, backend: str = "auto"):
        super().__init__()
        self.backend = backend

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return kernels.max_pool2x2(x_seq, backend=self.backend)


class SharedDropout(nn.Module):
    """Dropout on ``[T, N, ...]`` with one mask per sample, drawn once and reused at every step.

    A fresh mask per step would let every neuron through at some step and blur the regularisation.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout p must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x_seq
        # uniform floats compared with p: 3x faster on the CPU than bernoulli_, and drawn in float32
        # whatever x's dtype (bfloat16 uniforms have 8 bits, too coarse for an arbitrary p)
        keep = torch.rand(x_seq.shape[1:], device=x_seq.device) >= self.p
        return x_seq * (keep.to(x_seq.dtype) / (1 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Vote(nn.Module):
    """``[T, N, classes * votes] -> [T, N, classes]``: the mean of each class's group of output neurons."""

    def __init__(self, votes: int = VOTES_PER_CLASS):
        super().__init__()
        self.votes = votes

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        return x_seq.unflatten(-1, (-1, self.votes)).mean(-1)


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


def _conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def nonempty_layers(tokens: list[str]) -> list[str]:
    if not tokens:
        raise ValueError(
            "layers is empty: give the network as tokens, e.g. layers='c128 p c128 p d f2048 d f100' "
            "(c<n> convolution, p max-pooling, d dropout, f<n> linear; 10 output neurons per class)"
        )
    return tokens


class SpikingNet(nn.Module):
    """A network of layer tokens: one of the paper's, ``SpikingNet("cifar10", neuron=neuron_factory("lif", tau=16))``,
    or your own, ``SpikingNet(layers="c64 p c64 p d f100", in_channels=2, size=34, classes=10)``.

    Args:
        arch: a key of :data:`ARCHS` (its layers, input shape, classes and T); or None with ``layers``.
        neuron: ``make(channels) -> neuron``, called once per spiking layer, or a neuron name for
            :func:`plifnet.neurons.neuron_factory` (default: PLIF, tau0 = 2).
        variant: ``"code"`` (the authors' released code, which produced the published numbers) or
            ``"paper"`` (the paper's table), where the two differ (CIFAR-10, CIFAR10-DVS).
        dropout: the dropout probability of every ``d`` layer.
        time_steps: T for static images (default: the paper's, or 8); event data brings its own T.
        backend: ``auto``, ``reference`` or a fused kernel, for the max-pooling layers (the neurons
            take theirs from ``neuron``).
        memory: what training keeps for backward (:data:`MEMORY`). ``store``: every layer's saved
            tensors. ``first_block``: the first block (the encoder's convolution and BatchNorm, the
            first neuron and pooling: the largest activations, and the cheapest to recompute) is
            recomputed in backward, in groups of :data:`CHANNEL_GROUP` channels, so that backward
            holds one group's activations at a time; the rest is stored, the spikes that enter a block
            as bytes (:func:`spikes_kept_as_bytes`). ``checkpoint``: every block
            recomputed (a block runs from one convolution or linear layer to the next; only its input
            kept), the first in groups of channels: the fewest bytes kept, one more forward pass.
            Either gives the stored path's spikes and running statistics bit for bit, and its gradients
            to float32 rounding where the first block is split (a layer-wide tau's gradient is summed
            group by group), else bit for bit. A first block that may mix channels (an encoder of one's
            own, a neuron with hooks of its own) is recomputed whole, with a warning that says why.
        layers, in_channels, size, classes, static: a network of your own (with ``arch=None``): the
            tokens above; the input's channels and height = width (None: the data module's
            ``input_shape``, when trained by :class:`plifnet.module.SpikingClassifier`); the classes
            (default: the output layer's width / 10); whether the input is images (True) or event frames.

    Input: images ``[N, C, H, W]`` or event frames ``[T, N, C, H, W]``. Output: class scores
    ``[T, N, classes]`` (the firing rate of each class's vote group at each step).
    """

    def __init__(
        self,
        arch: str | None = None,
        neuron: Callable[[int], nn.Module] | str | None = None,
        variant: str = "code",
        dropout: float = 0.5,
        time_steps: int | None = None,
        backend: str = "auto",
        memory: str = "store",
        layers: str | None = None,
        in_channels: int | None = None,
        size: int | None = None,
        classes: int | None = None,
        static: bool = False,
    ):
        super().__init__()
        if (arch is None) == (layers is None):
            raise ValueError("give either arch (one of the paper's networks) or layers (your own), not both")
        if arch is not None and arch not in ARCHS:
            raise ValueError(f"unknown network {arch!r}; choose one of {sorted(ARCHS)}, or give layers")
        if variant not in ("code", "paper"):
            raise ValueError(f"variant must be 'code' or 'paper', got {variant!r}")
        if memory not in MEMORY:
            raise ValueError(f"memory must be one of {', '.join(MEMORY)}, got {memory!r}")
        self.memory = memory
        if arch is None and classes is None:  # from the output layer: 10 neurons per class
            last = nonempty_layers(layers.split())[-1]
            classes = int(last[1:]) // VOTES_PER_CLASS if last[:1] == "f" and last[1:].isdigit() else None
        if arch is None:
            spec = Arch(in_channels or 0, size or 0, classes or 0, 8, static, layers)
        else:
            spec = ARCHS[arch]
        self.arch_name, self.arch = arch or "custom", spec
        self.classes = spec.classes
        self.time_steps = spec.time_steps if time_steps is None else int(time_steps)
        if self.time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        neuron = neuron_factory(neuron or "plif") if neuron is None or isinstance(neuron, str) else neuron
        self._build_options = (
            neuron,
            ((variant == "paper" and spec.paper_layers) or spec.layers).split(),
            dropout,
            backend,
        )
        if spec.in_channels and spec.size:
            self.build(spec.in_channels, spec.size)

    @property
    def built(self) -> bool:
        return hasattr(self, "encoder")

    def build(self, in_channels: int, size: int) -> None:
        """Build the layers for inputs of ``in_channels`` x ``size`` x ``size``. A network given by
        ``layers`` without ``in_channels`` and ``size`` is built this way by
        :class:`plifnet.module.SpikingClassifier` from its data module's ``input_shape``."""
        neuron, tokens, dropout, backend = self._build_options
        nonempty_layers(tokens)
        self.arch = dataclasses.replace(self.arch, in_channels=in_channels, size=size)
        channels, features = in_channels, None
        layers: list[nn.Module] = []
        for token in tokens:
            kind, width = token[0], token[1:]
            if kind not in "cpdf" or (kind in "cf") != width.isdigit():
                raise ValueError(f"bad layer token {token!r} in {' '.join(tokens)!r}: use c<n>, p, d or f<n>")
            width = int(width or 0)
            if kind in "cp" and features is not None:  # the first d or f flattened the maps
                raise ValueError(
                    f"layer token {token!r} in {' '.join(tokens)!r} comes after the maps were flattened "
                    f"(by the first d or f): put every c<n> and p before the first d or f"
                )
            if kind == "p" and size < 2:
                raise ValueError(
                    f"layer token 'p' in {' '.join(tokens)!r} halves a {size} x {size} map to nothing "
                    f"(input {in_channels} x {self.arch.size} x {self.arch.size}): use fewer p"
                )
            if kind in "cf" and width < 1:
                raise ValueError(
                    f"layer token {token!r} in {' '.join(tokens)!r} has no neurons: use c<n> or f<n> with n >= 1"
                )
            if kind == "c":
                layers += [TimeDistributed(_conv_bn(channels, width)), neuron(width)]
                channels = width
            elif kind == "p":
                layers.append(MaxPool(backend))
                size //= 2
            elif features is None:
                layers.append(nn.Flatten(2))
                features = channels * size * size
            if kind == "d":
                layers.append(SharedDropout(dropout))
            elif kind == "f":
                layers += [nn.Linear(features, width, bias=False), neuron(width)]
                features = width
        if not isinstance(layers[0], TimeDistributed):
            raise ValueError(f"{self.arch_name}: the first layer must be a convolution (c<n>), the learned encoder")
        if not self.classes or features != self.classes * VOTES_PER_CLASS:
            raise ValueError(
                f"{self.arch_name}: the last layer must be f<10 x classes> (10 neurons per class), "
                f"got {features} neurons for {self.classes} classes"
            )
        layers.append(Vote())
        self._set_layers(layers)

    @classmethod
    def assemble(
        cls, layers: list[nn.Module], in_channels: int, size: int, classes: int, time_steps: int, static: bool
    ) -> "SpikingNet":
        """A network of ready modules, in the order the tokens would build them: the encoder (any module
        mapping ``[N, C, H, W]``), then modules on ``[T, N, ...]``. :func:`plifnet.export.from_nir` builds
        networks this way."""
        net = cls(layers="", classes=classes, time_steps=time_steps, static=static)
        net.arch = dataclasses.replace(net.arch, in_channels=in_channels, size=size)
        net._set_layers(layers)
        return net

    def _set_layers(self, layers: list[nn.Module]) -> None:
        # The first Conv+BN is the encoder: once per image for static data, per frame for events.
        self.encoder = layers[0].module if isinstance(layers[0], TimeDistributed) else layers[0]
        self.layers = nn.Sequential(*layers[1:])
        # a neuron that takes a constant input once (time_steps=T) is spared the [T, N, ...] copy
        self._constant_input = "time_steps" in inspect.signature(self.layers[0].forward).parameters
        # stage 0 is the encoder, stage i the layer i - 1; a block starts at each weight layer
        starts = [0] + [i + 1 for i, layer in enumerate(self.layers) if isinstance(layer, (TimeDistributed, nn.Linear))]
        self._blocks = list(zip(starts, starts[1:] + [len(self.layers) + 1]))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.arch.in_channels, self.arch.size, self.arch.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = "[N, C, H, W] images" if self.arch.static else "[T, N, C, H, W] event frames"
        if x.dim() != (4 if self.arch.static else 5) or tuple(x.shape[-3:]) != self.input_shape:
            c, h, w = self.input_shape
            raise ValueError(
                f"the {self.arch_name} network takes {expected} with C, H, W = {c}, {h}, {w}; "
                f"got shape {tuple(x.shape)}. Check that the data module matches the network (--model.arch)."
            )
        recompute = self.memory != "store" and torch.is_grad_enabled()
        for start, stop in self._blocks:
            if recompute and start == 0:
                x = self._first_block_recomputed(x, stop)
            elif recompute and self.memory == "checkpoint":
                x = self._recomputed(self._run_stages, x, start, stop)
            elif recompute:  # first_block: the later blocks stored, their input spikes as bytes
                with spikes_kept_as_bytes(x):
                    x = self._run_stages(x, start, stop)
            else:
                x = self._run_stages(x, start, stop)
        return x

    def _recomputed(self, function: Callable, *args) -> torch.Tensor:
        """``function(*args)``, its saved tensors recomputed in backward (torch.utils.checkpoint)."""
        return checkpoint(
            function, *args, use_reentrant=False, context_fn=lambda: (nullcontext(), running_statistics_kept(self))
        )

    def _first_block_recomputed(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """The first block, recomputed in backward: its stages that treat every channel alone (Conv2d +
        BatchNorm2d, a neuron with the built-in step, max-pooling) one group of channels at a time, each
        group its own recomputation, so that backward holds a group's activations, not the block's."""
        reason = self._why_not_split()
        if reason:  # recomputed whole: less kept, but the backward's peak is the block's, as with store
            warnings.warn(
                f"memory {self.memory!r}: the first block is recomputed whole, not {CHANNEL_GROUP} channels "
                f"at a time, because {reason}; its backward peak stays that of memory 'store'",
                stacklevel=3,
            )
        channels = 0 if reason else self.encoder[0].out_channels
        if channels <= CHANNEL_GROUP:  # nothing to split: the block recomputed whole
            return self._recomputed(self._run_stages, x, 0, stop)
        stages = 3 if len(self.layers) > 1 and isinstance(self.layers[1], MaxPool) else 2
        modules = [self.encoder, *self.layers[: stages - 1]]
        before = [{name: b.clone() for name, b in m.named_buffers() if not b.dim()} for m in modules]

        def run_group(x: torch.Tensor, group: slice) -> torch.Tensor:
            parts = [_with_tensors(m, _channel_slice(m, channels, group, kept)) for m, kept in zip(modules, before)]
            return self._run_stages(x, 0, stages, parts)

        groups = [slice(start, start + CHANNEL_GROUP) for start in range(0, channels, CHANNEL_GROUP)]
        x = torch.cat([self._recomputed(run_group, x, group) for group in groups], dim=2)  # [T, N, C, ...]
        return self._run_stages(x, stages, stop)

    def _why_not_split(self) -> str | None:
        """Why the first block's stages may not compute each channel from that channel alone (None: they do)."""
        encoder, neuron = self.encoder, self.layers[0]
        if not (
            isinstance(encoder, nn.Sequential)
            and [type(m) for m in encoder] == [nn.Conv2d, nn.BatchNorm2d]
            and encoder[0].groups == 1
        ):
            return "its encoder is not plifnet's Conv2d + BatchNorm2d"
        if not isinstance(neuron, BaseNode):
            return f"its first neuron, {type(neuron).__name__}, is not a plifnet neuron"
        if neuron.own_hooks:
            return (
                f"its first neuron, {type(neuron).__name__}, has hooks of its own ({', '.join(neuron.own_hooks)}), "
                f"which may mix channels"
            )
        return None

    def _run_stages(self, x: torch.Tensor, start: int, stop: int, modules: list | None = None) -> torch.Tensor:
        """Stages ``start`` to ``stop`` (0: the encoder, i: layer i - 1); ``modules`` stands in for the first ones."""
        modules = modules or [self.encoder, *self.layers]
        for stage in range(start, stop):
            module = modules[stage]
            if stage == 0 and self.arch.static:  # one current per image [N, ...], the same at every step
                x = module(x)
            elif stage == 0:
                x = module(x.flatten(0, 1)).unflatten(0, x.shape[:2])
            elif stage == 1 and self.arch.static:  # the first neuron takes the constant current once
                x = (
                    module(x, time_steps=self.time_steps)
                    if self._constant_input
                    else module(x.expand(self.time_steps, *x.shape))
                )
            else:
                x = module(x)
        return x

    def spiking_layers(self) -> dict[str, nn.Module]:
        """The neurons by a readable name: ``conv1``, ``conv2``, ..., ``fc1``, ``fc2`` (the output)."""
        names, counts = {}, {"conv": 0, "fc": 0}
        previous = None
        for module in [self.encoder, *self.layers]:
            if is_neuron(module):
                kind = "fc" if isinstance(previous, nn.Linear) else "conv"
                counts[kind] += 1
                names[f"{kind}{counts[kind]}"] = module
            previous = module
        return names
