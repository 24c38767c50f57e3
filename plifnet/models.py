"""The six networks of Fang et al., ICCV 2021 (docs/paper.md section 2), built from one table, and your own
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
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import nn

from plifnet import kernels, recompute
from plifnet.contract import is_neuron
from plifnet.errors import UserError
from plifnet.factory import neuron_layers
from plifnet.neurons import BaseNode
from plifnet.options import NeuronOptions


@dataclass(frozen=True)
class Arch:
    in_channels: int
    size: int  # input height = width
    classes: int
    time_steps: int  # the paper's T for this dataset (docs/paper.md section 3)
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
            raise UserError(f"dropout p must be in [0, 1), got {p}")
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


def _conv_bn(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


def nonempty_layers(tokens: list[str]) -> list[str]:
    if not tokens:
        raise UserError(
            "layers is empty: give the network as tokens, e.g. layers='c128 p c128 p d f2048 d f100' "
            "(c<n> convolution, p max-pooling, d dropout, f<n> linear; 10 output neurons per class)"
        )
    return tokens


class SpikingNet(nn.Module):
    """A network of layer tokens: your own, ``SpikingNet("c64 p c64 p d f100", in_channels=2, size=34)``, or one
    of the paper's, ``SpikingNet.paper("cifar10", neuron="lif", options=NeuronOptions(tau=16))``.

    Args:
        layers: the layer tokens above (the output layer ``f<10 x classes>`` last).
        in_channels, size: the input's channels and height = width (None: the data module's ``input_shape``,
            when trained by :class:`plifnet.module.SpikingClassifier`, which calls :meth:`build`).
        classes: the classes (default: the output layer's width / 10).
        static: whether the input is images (True) or event frames (False).
        time_steps: T for static images; event data brings its own T.
        neuron: ``plif``, ``lif``, ``if``, a plug-in's name or class path, a config's ``class_path`` with
            ``init_args`` (a factory of no arguments), or the result of :func:`plifnet.factory.neuron_factory`;
            one fresh neuron per spiking layer.
        options: the neurons' :class:`~plifnet.options.NeuronOptions` (tau, threshold, reset, surrogate,
            backend); its ``backend`` runs the max-pooling layers too.
        dropout: the dropout probability of every ``d`` layer.
        memory: what training keeps for backward, one of :data:`plifnet.recompute.MEMORY` (``store``,
            ``first_block``, ``checkpoint``): see :mod:`plifnet.recompute`.

    Input: images ``[N, C, H, W]`` or event frames ``[T, N, C, H, W]``. Output: class scores
    ``[T, N, classes]`` (the firing rate of each class's vote group at each step).
    """

    def __init__(
        self,
        layers: str,
        in_channels: int | None = None,
        size: int | None = None,
        classes: int | None = None,
        static: bool = False,
        time_steps: int = 8,
        neuron: str | Callable[[], nn.Module] = "plif",
        options: NeuronOptions = NeuronOptions(),
        dropout: float = 0.5,
        memory: Literal["store", "first_block", "checkpoint"] = "store",
    ):
        super().__init__()
        tokens = nonempty_layers(layers.split())
        if memory not in recompute.MEMORY:
            raise UserError(f"memory must be one of {', '.join(recompute.MEMORY)}, got {memory!r}")
        if classes is None:  # from the output layer: 10 neurons per class
            last = tokens[-1]
            classes = int(last[1:]) // VOTES_PER_CLASS if last[:1] == "f" and last[1:].isdigit() else 0
        self.memory = memory
        self.arch = Arch(in_channels or 0, size or 0, classes, int(time_steps), static, layers)
        self.arch_name = "custom"
        self.classes = classes
        self.time_steps = int(time_steps)
        if self.time_steps < 1:
            raise UserError(f"time_steps must be >= 1, got {time_steps}")
        self.make_neuron = neuron_layers(neuron, options)
        self.dropout = dropout
        if in_channels and size:
            self.build(in_channels, size)

    @classmethod
    def paper(
        cls,
        arch: str,
        variant: Literal["code", "paper"] = "code",
        time_steps: int | None = None,
        neuron: str | Callable[[], nn.Module] = "plif",
        options: NeuronOptions = NeuronOptions(),
        dropout: float = 0.5,
        memory: Literal["store", "first_block", "checkpoint"] = "store",
    ) -> SpikingNet:
        """One of the paper's six networks by name (a key of :data:`ARCHS`): its layers, input, classes and T.
        ``variant``: ``code`` (the authors' released code, which produced the published numbers) or ``paper``
        (the paper's table), where the two differ (CIFAR-10, CIFAR10-DVS). The other arguments as above."""
        if arch not in ARCHS:
            raise UserError(f"unknown network {arch!r}; choose one of {sorted(ARCHS)}, or give SpikingNet layers")
        if variant not in ("code", "paper"):
            raise UserError(f"variant must be 'code' or 'paper', got {variant!r}")
        spec = ARCHS[arch]
        net = cls(
            (variant == "paper" and spec.paper_layers) or spec.layers,
            in_channels=spec.in_channels,
            size=spec.size,
            classes=spec.classes,
            static=spec.static,
            time_steps=spec.time_steps if time_steps is None else time_steps,
            neuron=neuron,
            options=options,
            dropout=dropout,
            memory=memory,
        )
        net.arch_name = arch
        return net

    @property
    def built(self) -> bool:
        return hasattr(self, "encoder")

    def build(self, in_channels: int, size: int, modules: list[nn.Module] | None = None) -> None:
        """Build the layers for inputs of ``in_channels`` x ``size`` x ``size`` from the tokens, or take the ready
        ``modules`` (the encoder, then modules on ``[T, N, ...]``) that the tokens describe: how
        :func:`plifnet.nir.from_nir` gives a graph's layers their network."""
        self.arch = dataclasses.replace(self.arch, in_channels=in_channels, size=size)
        layers = modules or make_layers(
            self.arch.layers.split(),
            in_channels,
            size,
            self.make_neuron,
            self.dropout,
            self.make_neuron.options.backend,
        )
        if not modules:
            outputs = layers[-2].out_features  # the output layer's Linear, before its neuron
            if not self.classes or outputs != self.classes * VOTES_PER_CLASS:
                raise UserError(
                    f"{self.arch_name}: the last layer must be f<10 x classes> (10 neurons per class), "
                    f"got {outputs} neurons for {self.classes} classes"
                )
            layers.append(Vote())
        # The first Conv+BN is the encoder: once per image for static data, per frame for events.
        self.encoder = layers[0].module if isinstance(layers[0], TimeDistributed) else layers[0]
        self.layers = nn.Sequential(*layers[1:])
        # a neuron that takes a constant input once (time_steps=T) is spared the [T, N, ...] copy
        self._constant_input = "time_steps" in inspect.signature(self.layers[0].forward).parameters
        # stage 0 is the encoder, stage i the layer i - 1; a block starts at each weight layer
        starts = [0] + [i + 1 for i, layer in enumerate(self.layers) if isinstance(layer, (TimeDistributed, nn.Linear))]
        self.blocks = list(zip(starts, starts[1:] + [len(self.layers) + 1]))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.arch.in_channels, self.arch.size, self.arch.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = "[N, C, H, W] images" if self.arch.static else "[T, N, C, H, W] event frames"
        if x.dim() != (4 if self.arch.static else 5) or tuple(x.shape[-3:]) != self.input_shape:
            c, h, w = self.input_shape
            raise UserError(
                f"the {self.arch_name} network takes {expected} with C, H, W = {c}, {h}, {w}; "
                f"got shape {tuple(x.shape)}. Check that the data module matches the network (--model.net)."
            )
        return recompute.run(self, x, self.memory)

    def run_stages(self, x: torch.Tensor, start: int, stop: int, modules: list | None = None) -> torch.Tensor:
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

    def channelwise_stages(self) -> tuple[list[nn.Module], int, str | None]:
        """The first block's stages that compute each channel from that channel alone (the encoder's Conv2d +
        BatchNorm2d, the first neuron, its max-pooling), their channels, and None; or why they may mix channels."""
        encoder, neuron = self.encoder, self.layers[0]
        if not (
            isinstance(encoder, nn.Sequential)
            and [type(m) for m in encoder] == [nn.Conv2d, nn.BatchNorm2d]
            and encoder[0].groups == 1
        ):
            return [], 0, "its encoder is not plifnet's Conv2d + BatchNorm2d"
        if not isinstance(neuron, BaseNode):
            return [], 0, f"its first neuron, {type(neuron).__name__}, is not a plifnet neuron"
        if neuron.own_hooks:
            hooks = ", ".join(neuron.own_hooks)
            return (
                [],
                0,
                f"its first neuron, {type(neuron).__name__}, has hooks of its own ({hooks}), which may mix channels",
            )
        stages = 3 if len(self.layers) > 1 and isinstance(self.layers[1], MaxPool) else 2
        return [encoder, *self.layers[: stages - 1]], encoder[0].out_channels, None

    def spiking_layers(self) -> dict[str, nn.Module]:
        """The neurons by a readable name: ``conv1``, ``conv2``, ..., ``fc1``, ``fc2`` (the output)."""
        names, name, previous = {}, LayerNames(), None
        for module in [self.encoder, *self.layers]:
            if is_neuron(module):
                names[name("fc" if isinstance(previous, nn.Linear) else "conv")] = module
            previous = module
        return names


class LayerNames:
    """Readable layer names, numbered by kind in the order asked (``conv1``, ``conv2``, ``fc1``, ``pool1``): the
    one naming that tau, firing rates, synaptic operations and NIR nodes share, so that ``conv2`` is the same
    layer in tau.csv, energy.csv and an exported graph."""

    def __init__(self):
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return f"{kind}{self.counts[kind]}"


def make_layers(
    tokens: list[str], in_channels: int, size: int, neuron: Callable[[int], nn.Module], dropout: float, backend: str
) -> list[nn.Module]:
    """The modules of ``tokens`` for inputs of ``in_channels`` x ``size`` x ``size``, up to the output layer's
    neuron (the vote follows): the first a ``TimeDistributed(Conv2d + BatchNorm2d)``."""
    shape = f"input {in_channels} x {size} x {size}"
    channels, features = in_channels, None
    layers: list[nn.Module] = []
    for index, token in enumerate(tokens):
        kind, width = token[0], token[1:]
        if kind not in "cpdf" or (kind in "cf") != width.isdigit():
            raise UserError(f"bad layer token {token!r} in {' '.join(tokens)!r}: use c<n>, p, d or f<n>")
        width = int(width or 0)
        if kind in "cp" and features is not None:  # the first d or f flattened the maps
            raise UserError(
                f"layer token {token!r} in {' '.join(tokens)!r} comes after the maps were flattened "
                f"(by the first d or f): put every c<n> and p before the first d or f"
            )
        if kind == "p" and size < 2:
            raise UserError(
                f"layer token 'p' in {' '.join(tokens)!r} halves a {size} x {size} map to nothing ({shape}): use fewer p"
            )
        if kind in "cf" and width < 1:
            raise UserError(
                f"layer token {token!r} in {' '.join(tokens)!r} has no neurons: use c<n> or f<n> with n >= 1"
            )
        if index == 0 and kind != "c":
            raise UserError(f"{' '.join(tokens)!r}: the first layer must be a convolution (c<n>), the learned encoder")
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
    if tokens[-1][:1] != "f":
        raise UserError(f"{' '.join(tokens)!r}: the last layer must be f<10 x classes> (10 neurons per class)")
    return layers
