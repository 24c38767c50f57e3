"""ECG wave segmentation (QT database), the sequence task of Yin, Corradi and Bohte (Nat. Mach. Intell. 2021):
a label at every one of 1301 steps.

The files are those of the authors' public repository: ``QTDB_train.mat`` (618 sequences) and
``QTDB_test.mat`` (141), MATLAB v5, with ``x`` ``[N, 1301, 4]`` (level-crossing spikes of two ECG leads, up
and down crossings: 1 where a crossing happened) and ``y`` ``[N, 1301, 6]`` (one-hot: P, PQ, QR, RS, ST, TP;
all zeros on the steps that carry no label). A sample is ``([1301, 4] float32, [1301] labels)``; a batch
``[T, N, 4]`` and ``[T, N]``, time first. Two readings of the files, said here:

- every sequence holds one -1, at its last step in its first channel: an end marker of the files, not a
  crossing (crossings are 1), so it is read as 0;
- a step without a label is :data:`UNLABELLED` (-1), which losses and per-step accuracy leave out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from plifnet.data.common import UNLABELLED, ClassificationDataModule, time_first
from plifnet.errors import MissingData, UserError

FILES = {"train": "QTDB_train.mat", "test": "QTDB_test.mat"}
CLASSES = ("P", "PQ", "QR", "RS", "ST", "TP")


def read(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [N, T, 4] float32 in {0, 1}, labels [N, T] int64 with UNLABELLED)`` of one file."""
    from scipy.io import loadmat  # scipy comes with the stack (lightning, torchmetrics); read on first use

    try:
        arrays = loadmat(str(path), variable_names=("x", "y"))
    except (OSError, ValueError) as error:
        raise UserError(f"{path} is not a readable ECG-QTDB file (MATLAB v5 with x and y): {error}") from None
    x, y = arrays.get("x"), arrays.get("y")
    if x is None or y is None or x.ndim != 3 or y.shape[:2] != x.shape[:2] or y.shape[2] != len(CLASSES):
        raise UserError(
            f"{path} does not hold ECG-QTDB's arrays: x [N, T, 4] and y [N, T, {len(CLASSES)}] (one-hot), "
            f"got x {None if x is None else x.shape} and y {None if y is None else y.shape}"
        )
    labels = np.where(y.any(-1), y.argmax(-1), UNLABELLED)
    return torch.from_numpy((x == 1).astype(np.float32)), torch.from_numpy(labels.astype(np.int64))


class Sequences(Dataset):
    def __init__(self, x: torch.Tensor, labels: torch.Tensor):
        self.x, self.labels = x, labels
        self.targets = [0] * len(x)  # one "class" per sequence: the validation split is a plain random one

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.labels[index]


class ECGDataModule(ClassificationDataModule):
    """ECG-QTDB from ``root`` (the folder holding ``QTDB_train.mat`` and ``QTDB_test.mat``).

    Args:
        root: the folder of the two files, as they come from the authors' repository.
        loader: ``batch_size``, ``num_workers``, ``val_fraction``, ``eval_test_every_epoch``, ``split_seed``,
            ``pin_memory`` of :class:`plifnet.data.common.ClassificationDataModule` (a plain random split of the sequences).
    """

    collate_fn = staticmethod(time_first)  # [T, N, 4] and labels [T, N]
    sequence_shape = (1301, 4)  # (T, F)

    def __init__(
        self,
        root: str = "data/ECG-QTDB",
        **loader,
    ):
        super().__init__(**loader)
        self.root = Path(root).expanduser()
        self.dataset = "ecg_qtdb"

    def load(self, stage):
        folder = self.root if (self.root / FILES["train"]).is_file() else self.root / "ECG-QTDB"
        missing = [name for name in FILES.values() if not (folder / name).is_file()]
        if missing:
            raise MissingData(
                f"ECG-QTDB was not found in {self.root.resolve()}: no {', '.join(missing)}. Fix: --data.root DIR, "
                f"the folder that holds QTDB_train.mat and QTDB_test.mat (or the folder above it)"
            )
        train, test = (Sequences(*read(folder / FILES[split])) for split in ("train", "test"))
        self.sequence_shape = tuple(train.x.shape[1:])
        return train, train, test

    def example_input(self) -> torch.Tensor:
        """One sequence as a batch of one, ``[T, 1, 4]``."""
        steps, features = self.sequence_shape
        return torch.zeros(steps, 1, features)
