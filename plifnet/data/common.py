"""What every data module shares: the per-class validation split and the loaders.

Evaluation follows both protocols of the paper (SPEC section 4). With ``val_fraction > 0`` each class
of the training set is split ``1 - val_fraction`` / ``val_fraction`` (85/15 by default) for model
selection (protocol B); with ``eval_test_every_epoch`` the test set is a second validation loader, so
that the best test accuracy over epochs (protocol A) can be read off the same run.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchdata.stateful_dataloader import StatefulDataLoader


def stratified_split(targets: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split indices per class: a shuffled ``val_fraction`` of each class (rounded) goes to validation."""
    targets = torch.as_tensor(list(targets) if not torch.is_tensor(targets) else targets)
    generator = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in torch.unique(targets).tolist():
        members = torch.nonzero(targets == c).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        n_val = round(len(members) * val_fraction)
        val += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return sorted(train), sorted(val)


class ClassificationDataModule(L.LightningDataModule):
    """Splits and loaders; subclasses build ``train_set``, ``eval_train_set`` and ``test_set`` in :meth:`load`.

    ``eval_train_set`` is the training data without augmentation: the validation split is cut from it.
    """

    collate_fn = None  # the DataLoader's default; event data stacks time first

    def __init__(
        self,
        batch_size: int = 16,
        num_workers: int = 2,
        val_fraction: float = 0.15,
        eval_test_every_epoch: bool = True,
        split_seed: int = 2020,
        pin_memory: bool = False,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.val_fraction, self.eval_test_every_epoch, self.split_seed = val_fraction, eval_test_every_epoch, split_seed
        self.train_set: Dataset | None = None

    def load(self, stage: str | None) -> tuple[Dataset, Dataset, Dataset]:
        """Return ``(train_set, eval_train_set, test_set)``; ``train_set`` and ``eval_train_set``
        index the same samples with their own transforms."""
        raise NotImplementedError

    @staticmethod
    def targets(dataset: Dataset) -> Sequence[int]:
        return dataset.targets

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train_set, eval_train_set, self.test_set = self.load(stage)
        if self.val_fraction > 0:
            train_idx, val_idx = stratified_split(self.targets(train_set), self.val_fraction, self.split_seed)
            self.train_set, self.val_set = Subset(train_set, train_idx), Subset(eval_train_set, val_idx)
        else:
            self.train_set, self.val_set = train_set, None

    @property
    def val_loader_names(self) -> list[str]:
        """What each validation loader holds, in order; the LightningModule logs under these names."""
        if self.val_fraction == 0:
            return ["test"]
        return ["val", "test"] if self.eval_test_every_epoch else ["val"]

    def _loader(self, dataset: Dataset, train: bool = False) -> DataLoader:
        # the training loader keeps its position and shuffling state in checkpoints (Lightning saves
        # the state of loaders that have one), so that a run resumed mid-epoch sees the same batches
        loader_class = StatefulDataLoader if train else DataLoader
        return loader_class(
            dataset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> list[DataLoader]:
        sets = {"val": self.val_set, "test": self.test_set}
        return [self._loader(sets[name]) for name in self.val_loader_names]

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)
