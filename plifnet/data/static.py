"""Static image data: MNIST, Fashion-MNIST and CIFAR-10 with the paper's augmentations (docs/paper.md section 3).

Two on-disk layouts are served from ``root``:

* torchvision's (``root/MNIST/raw``, ``root/FashionMNIST/raw``, ``root/cifar-10-batches-py``), which
  ``download=True`` fetches;
* an image folder, ``root/train/<class>/*`` and ``root/test/<class>/*`` (any local copy, e.g. a JPEG
  export of CIFAR-10), picked automatically when ``root/train`` and ``root/test`` exist. Class folders
  are sorted by name, which is the standard class order for CIFAR-10 and for digit names.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Literal

import torch
from PIL import Image
from torchvision import datasets
from torchvision.datasets.utils import check_integrity
from torchvision.transforms import v2 as T

from plifnet.data.common import ClassificationDataModule
from plifnet.errors import MissingData, UserError


@dataclass(frozen=True)
class ImageDataset:
    torchvision_class: type
    torchvision_folder: str  # where torchvision's layout lives under root
    channels: int
    size: int  # height = width
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Callable[[], list] = list  # training-only transforms, before normalisation


CLASSES = 10  # all three datasets

DATASETS = {
    "mnist": ImageDataset(
        datasets.MNIST,
        "MNIST",
        1,
        28,
        (0.1307,),
        (0.3081,),
        augment=lambda: [T.RandomAffine(degrees=30, translate=(0.15, 0.15), scale=(0.85, 1.11))],
    ),
    "fashion_mnist": ImageDataset(datasets.FashionMNIST, "FashionMNIST", 1, 28, (0.2860,), (0.3530,)),
    "cifar10": ImageDataset(
        datasets.CIFAR10,
        "cifar-10-batches-py",
        3,
        32,
        (0.4914, 0.4822, 0.4465),
        (0.2023, 0.1994, 0.2010),
        augment=lambda: [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()],
    ),
}


IDX_ITEM_BYTES = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}  # by the IDX type code


def idx_size_problem(path: Path) -> str | None:
    """Check an IDX file (LeCun's format of the MNIST files: 0, 0, type code, number of dimensions,
    one big-endian uint32 per dimension, then the data) against the size its header announces."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_ITEM_BYTES:
            return f"is not an IDX file ({size} bytes, header {head.hex() or 'missing'})"
        dims = f.read(4 * head[3])
    if len(dims) < 4 * head[3]:
        return f"is {size} bytes, shorter than its own header"
    shape = struct.unpack(f">{head[3]}I", dims)
    expected = 4 + 4 * head[3] + math.prod(shape) * IDX_ITEM_BYTES[head[2]]
    if size != expected:
        return f"is {size} bytes, but its header announces {'x'.join(map(str, shape))} items ({expected} bytes): truncated or damaged"
    return None


def _open_image(path: str, mode: str) -> Image.Image:
    with Image.open(path) as image:
        return image.convert(mode)


class StaticDataModule(ClassificationDataModule):
    """MNIST, Fashion-MNIST or CIFAR-10 from torchvision's layout or an image folder.

    Args:
        dataset: ``mnist``, ``fashion_mnist`` or ``cifar10``.
        root: the folder holding the data (either layout, see the module docstring).
        download: fetch torchvision's copy into ``root`` when it is missing.
        augment: apply the paper's training augmentation (normalisation is always applied).
        loader: ``batch_size``, ``num_workers``, ``val_fraction``, ``eval_test_every_epoch``, ``split_seed``,
            ``pin_memory`` of :class:`plifnet.data.common.ClassificationDataModule`.
    """

    def __init__(
        self,
        dataset: Literal["mnist", "fashion_mnist", "cifar10"] = "mnist",
        root: str = "data",
        download: bool = False,
        augment: bool = True,
        **loader,
    ):
        super().__init__(**loader)
        if dataset not in DATASETS:
            raise UserError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
        self.dataset, self.spec = dataset, DATASETS[dataset]
        self.input_shape = (self.spec.channels, self.spec.size, self.spec.size)
        self.root, self.download, self.augment = Path(root).expanduser(), download, augment

    @property
    def is_image_folder(self) -> bool:
        return (self.root / "train").is_dir() and (self.root / "test").is_dir()

    def transform(self, train: bool) -> T.Compose:
        to_tensor = [T.ToImage(), T.ToDtype(torch.float32, scale=True)]
        augment = self.spec.augment() if train and self.augment else []
        return T.Compose(augment + to_tensor + [T.Normalize(self.spec.mean, self.spec.std)])

    def prepare_data(self) -> None:
        if self.download and not self.is_image_folder:
            self._torchvision(train=True, transform=None, download=True)
            self._torchvision(train=False, transform=None, download=True)

    def load(self, stage):
        if self.is_image_folder:
            make = self._image_folder
        else:
            make = self._torchvision
        return make(True, self.transform(True)), make(True, self.transform(False)), make(False, self.transform(False))

    def _torchvision(self, train: bool, transform, download: bool = False):
        try:
            return self.spec.torchvision_class(str(self.root), train=train, transform=transform, download=download)
        except RuntimeError as error:  # torchvision: "Dataset not found or corrupted", or a size mismatch
            damaged = self._damaged_file()
            if damaged:
                raise UserError(
                    f"{self.dataset}: {damaged}. Fix: delete it and pass --data.download true (needs "
                    f"network), or copy it again from your source"
                ) from error
            raise MissingData(self._missing_message()) from error
        except OSError as error:  # no network, host down, disk full while downloading
            raise MissingData(
                f"could not download {self.dataset} into {self.root}: {error}. " + self._missing_message()
            ) from error

    def _damaged_file(self) -> str | None:
        """What is wrong with the first damaged file of torchvision's layout, if one is: CIFAR-10's
        against the checksums that torchvision publishes, the MNIST family's (IDX files) against the
        size that their own header announces."""
        folder = self.root / self.spec.torchvision_folder
        published = getattr(self.spec.torchvision_class, "train_list", []) + getattr(
            self.spec.torchvision_class, "test_list", []
        )
        for name, md5 in published:
            if (folder / name).is_file() and not check_integrity(str(folder / name), md5):
                return f"{folder / name} does not match its published checksum (md5 {md5}): truncated or damaged"
        for path in sorted((folder / "raw").glob("*-ubyte")):
            problem = idx_size_problem(path)
            if problem:
                return f"{path} {problem}"
        return None

    def _image_folder(self, train: bool, transform):
        mode = "L" if self.spec.channels == 1 else "RGB"
        folder = self.root / ("train" if train else "test")
        dataset = datasets.ImageFolder(str(folder), transform=transform, loader=partial(_open_image, mode=mode))
        if len(dataset.classes) != CLASSES:
            raise UserError(
                f"{folder} has {len(dataset.classes)} class folders ({', '.join(dataset.classes[:12])}), "
                f"but {self.dataset} has {CLASSES} classes"
            )
        return dataset

    def _missing_message(self) -> str:
        return (
            f"{self.dataset} was not found in {self.root.resolve()}. Expected either torchvision's layout "
            f"({self.root / self.spec.torchvision_folder}) or an image folder ({self.root}/train/<class>/* and "
            f"{self.root}/test/<class>/*). Fix: pass --data.download true (needs network) to fetch it, or "
            f"--data.root DIR to point at a copy you have."
        )
