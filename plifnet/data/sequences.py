"""MNIST as sequences, the tasks where a neuron must remember: one pixel per step (sequential MNIST, T = 784,
one input), one row per step (T = 28, 28 inputs), or the pixels in a fixed permutation (permuted sequential
MNIST, T = 784), all read from the MNIST files that :class:`plifnet.data.StaticDataModule` reads.

A sample is ``[T, F]``, a batch ``[T, N, F]`` (time first); the label is the digit. The images are normalised
as the paper's MNIST (no augmentation: a shifted digit is another sequence). The permutation is drawn from
``permutation_seed`` alone, so the seed in a run's config (and in its checkpoint's data record, which a resumed
run must match: :func:`plifnet.module.data_identity`) gives the very permutation it trained with.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch.utils.data import Dataset

from plifnet.data.common import time_first
from plifnet.data.static import StaticDataModule
from plifnet.errors import UserError

ORDERS = ("pixel", "row", "permuted")
SIDE = 28  # MNIST's images are SIDE x SIDE


def permutation(seed: int) -> torch.Tensor:
    """The order of the 784 pixels of permuted sequential MNIST for ``seed`` (the same on every machine)."""
    return torch.randperm(SIDE * SIDE, generator=torch.Generator().manual_seed(seed))


class ImageSequences(Dataset):
    """An image dataset's samples ``[1, 28, 28]`` as sequences ``[T, F]``: rows (``[28, 28]``), or pixels in
    reading order or in ``order`` (``[784, 1]``)."""

    def __init__(self, images: Dataset, rows: bool, order: torch.Tensor | None = None):
        self.images, self.rows, self.order = images, rows, order

    @property
    def targets(self):
        return self.images.targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, label = self.images[index]
        if self.rows:
            return image[0], label
        pixels = image.reshape(-1)
        return (pixels if self.order is None else pixels[self.order]).unsqueeze(-1), label


class SequentialMNISTDataModule(StaticDataModule):
    """Sequential, row-wise or permuted sequential MNIST.

    Args:
        order: ``pixel`` (T = 784, 1 input per step), ``row`` (T = 28, 28 inputs) or ``permuted`` (T = 784,
            the pixels in the order of :func:`permutation` of ``permutation_seed``).
        permutation_seed: the seed of the permutation (``permuted`` only).
        root, download: where MNIST is (torchvision's layout or an image folder), as for
            :class:`plifnet.data.StaticDataModule`.
        loader: ``batch_size``, ``num_workers``, ``val_fraction``, ``eval_test_every_epoch``, ``split_seed``,
            ``pin_memory`` of :class:`plifnet.data.common.ClassificationDataModule`.
    """

    collate_fn = staticmethod(time_first)  # [T, N, F]

    def __init__(
        self,
        order: Literal["pixel", "row", "permuted"] = "pixel",
        permutation_seed: int = 2020,
        root: str = "data",
        download: bool = False,
        **loader,
    ):
        super().__init__("mnist", root, download, augment=False, **loader)
        if order not in ORDERS:
            raise UserError(f"--data.order must be one of {', '.join(ORDERS)}, got {order!r}")
        self.order, self.permutation_seed = order, permutation_seed
        self.input_shape = None  # not an image: a network for sequences reads sequence_shape
        self.sequence_shape = (SIDE, SIDE) if order == "row" else (SIDE * SIDE, 1)  # (T, F)

    def load(self, stage):
        order = permutation(self.permutation_seed) if self.order == "permuted" else None
        return tuple(ImageSequences(images, self.order == "row", order) for images in super().load(stage))

    def example_input(self) -> torch.Tensor:
        """One sequence as a batch of one, ``[T, 1, F]``."""
        steps, features = self.sequence_shape
        return torch.zeros(steps, 1, features)
