"""What every data module shares: the per-class validation split and the loaders.

Evaluation follows both protocols of the paper (docs/paper.md section 4). With ``val_fraction > 0`` each class
of the training set is split ``1 - val_fraction`` / ``val_fraction`` (85/15 by default) for model
selection (protocol B); with ``eval_test_every_epoch`` the test set is a second validation loader, so
that the best test accuracy over epochs (protocol A) can be read off the same run.
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset
from torchdata.stateful_dataloader import StatefulDataLoader

from plifnet.errors import UserError

UNLABELLED = -1  # the label of a time step without one (ECG): losses and accuracies per step leave it out


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


def time_first(batch):
    """Stack samples ``[T, ...]`` into a batch ``[T, N, ...]`` (time first, as the networks take it); labels
    into ``[N]``, or per-step labels ``[T]`` into ``[T, N]``."""
    samples, labels = zip(*batch)
    per_step = torch.is_tensor(labels[0]) and labels[0].dim() > 0
    return torch.stack(samples, dim=1), torch.stack(labels, dim=1) if per_step else torch.tensor(labels)


def _ignore_interrupts(worker_id: int) -> None:
    """Loader workers leave SIGINT and SIGTERM to the main process: Ctrl-C and a cluster's SIGTERM
    reach the whole process group, and a worker that died of them would end the run before it could
    save its state (see ``plifnet.callbacks.SaveOnInterrupt``). A worker still exits with its parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _mix(*numbers: int) -> int:
    """A seed from several integers (deterministic across processes, unlike ``hash``)."""
    seed = 0
    for n in numbers:
        seed = (seed * 1_000_003 + int(n)) % (1 << 62)
    return seed


class EpochSampler(Sampler):
    """The training order, drawn from ``(seed, epoch)`` alone, as ``(epoch, index)`` pairs.

    Together with :class:`SeededSamples` nothing the training data does draws from the global random
    stream, so a run resumed in the middle of an epoch gets the very same batches, augmentations
    included. Lightning calls :meth:`set_epoch` at the start of every epoch.
    """

    def __init__(self, size: int, seed: int, epoch: int = 0):
        self.size, self.seed, self.epoch = size, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        order = torch.randperm(self.size, generator=torch.Generator().manual_seed(_mix(self.seed, self.epoch)))
        return iter([(self.epoch, index) for index in order.tolist()])


class SeededSamples(Dataset):
    """Index a dataset with ``(epoch, index)``; its random transforms draw from torch's CPU generator
    (as torchvision's do) seeded by ``(seed, epoch, index)``, and the global random state is left as it
    was. Only the CPU generator: ``torch.manual_seed`` would also queue a seed for every accelerator
    with a formatted stack trace (a batch of 16 augmented MNIST images: 4.9 ms with it, 1.9 without)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(_mix(self.seed, epoch, index))
            return self.dataset[index]


class ClassificationDataModule(L.LightningDataModule):
    """Splits and loaders; subclasses build ``train_set``, ``eval_train_set`` and ``test_set`` in :meth:`load`,
    the one method a new dataset implements (and set ``input_shape`` where they know it).

    ``eval_train_set`` is the training data without augmentation: the validation split is cut from it.
    """

    collate_fn = None  # the DataLoader's default; event data stacks time first
    input_shape: tuple[int, int, int] | None = (
        None  # (C, H, W) of an image or frame: networks built for the data read it
    )

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
            raise UserError(f"--data.batch_size must be >= 1, got {batch_size}")
        if not 0 <= val_fraction < 1:
            raise UserError(f"--data.val_fraction must be in [0, 1), got {val_fraction}")
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.val_fraction, self.eval_test_every_epoch, self.split_seed = val_fraction, eval_test_every_epoch, split_seed
        self.train_set: Dataset | None = None
        self.seed = torch.initial_seed()  # the seed of the training order and augmentations; kept in checkpoints

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

    def example_input(self) -> torch.Tensor | None:
        """One sample shaped as a batch of one, as the network takes it (``[1, C, H, W]``)."""
        return None if self.input_shape is None else torch.zeros(1, *self.input_shape)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # labels bound for an accelerator are checked here, still on the CPU (there the check would
        # wait for the device); on the CPU the module's step checks them
        module = self.trainer.lightning_module if self.trainer else None
        check = getattr(module, "check_labels", None)
        if (
            check is not None
            and module.device.type != "cpu"
            and isinstance(batch, (list, tuple))
            and not self.trainer.predicting
        ):
            check(batch[1])
        return batch

    def state_dict(self) -> dict:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict) -> None:
        self.seed = state_dict["seed"]

    def _loader(self, dataset: Dataset, train: bool = False) -> DataLoader:
        # the training loader keeps its position in checkpoints (Lightning saves the state of loaders
        # that have one) and draws order and augmentations from (seed, epoch, index) only, so that a
        # run resumed mid-epoch sees the same batches
        if train:
            sampler = EpochSampler(len(dataset), self.seed, self._epoch())
            with warnings.catch_warnings():  # torchdata calls torch.set_vital, which torch >= 2.14 calls deprecated
                warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
                return StatefulDataLoader(
                    SeededSamples(dataset, self.seed), sampler=sampler, **self._loader_options(train)
                )
        return DataLoader(dataset, **self._loader_options(train))

    def _epoch(self) -> int:
        """The epoch that training starts in: Lightning sets it on the sampler only after it has made
        the loader's first iterator, so a resumed run would otherwise take its first epoch's batches
        in epoch 0's order. (The value that Lightning then passes to ``set_epoch``.)"""
        return self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else 0

    def _loader_options(self, train: bool) -> dict:
        return dict(
            # the workers' seeds come from the loader's own generator: drawn from the global stream, they
            # would shift dropout's random numbers by when each loader first starts (a resumed run skips
            # the sanity check, so its validation loaders start later than the uninterrupted run's)
            generator=torch.Generator().manual_seed(self.seed),
            batch_size=self.batch_size,
            drop_last=train,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn,
            worker_init_fn=_ignore_interrupts,
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
