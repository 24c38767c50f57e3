"""The Spiking Heidelberg Digits (SHD, 20 classes) and Spiking Speech Commands (SSC, 35 classes), Cramer et al.
2020, from local copies of their published HDF5 files: ``shd_{train,test}.h5``, ``ssc_{train,valid,test}.h5``,
each with ``spikes/times`` (seconds, one array per sample), ``spikes/units`` (the input channel of each spike,
0-699) and ``labels``.

A sample's spikes are binned into ``time_steps`` frames of ``dt`` seconds, ``[T, 700]`` spike counts: spike k
goes to frame ``floor(times[k] / dt)``; spikes at or after ``time_steps x dt`` are left out (the default 150
frames of 10 ms hold the longest SHD recording, 1.4 s). Batches are ``[T, N, 700]``, time first. SSC's own
validation file is its validation set; SHD has none, so its validation split is cut from the training file.
The files are read where ``root`` holds them, as they are (tonic's classes insist on downloading); with
``download`` the missing ones are fetched from ``url``, where the authors publish them gzipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from plifnet.data.common import ClassificationDataModule, time_first
from plifnet.errors import MissingData, UserError
from plifnet.files import write_atomically

CHANNELS = 700
DATASETS = {"shd": ("train", "test"), "ssc": ("train", "valid", "test")}  # the files of each release
URL = "https://zenkelab.org/datasets"  # the authors' site: shd_train.h5.gz, ...


def frames(times: np.ndarray, units: np.ndarray, time_steps: int, dt: float) -> np.ndarray:
    """Spike counts ``[time_steps, 700]`` (float32) of one sample's spikes."""
    bins = np.floor(np.asarray(times, dtype=np.float64) / dt).astype(np.int64)
    kept = (bins >= 0) & (bins < time_steps)
    counts = np.zeros((time_steps, CHANNELS), dtype=np.float32)
    np.add.at(counts, (bins[kept], np.asarray(units, dtype=np.int64)[kept]), 1)
    return counts


class SpikeFile(Dataset):
    """One HDF5 file's samples as frames; the file is opened in each process on first use (loader workers)."""

    def __init__(self, path: Path, time_steps: int, dt: float):
        import h5py  # comes with nir

        self.path, self.time_steps, self.dt, self._file = path, time_steps, dt, None
        try:
            with h5py.File(path, "r") as file:
                self.targets = [int(label) for label in file["labels"][()]]
                if len(file["spikes/times"]) != len(self.targets) or len(file["spikes/units"]) != len(self.targets):
                    raise KeyError("spikes/times, spikes/units and labels differ in length")
        except (OSError, KeyError) as error:
            raise UserError(
                f"{path} is not a spike file in the published layout (spikes/times, spikes/units, labels): {error}"
            ) from None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        spikes = self._file["spikes"]
        counts = frames(spikes["times"][index], spikes["units"][index], self.time_steps, self.dt)
        return torch.from_numpy(counts), self.targets[index]

    def __getstate__(self):  # a worker opens its own handle
        return {**self.__dict__, "_file": None}


class SpeechDataModule(ClassificationDataModule):
    """SHD or SSC from local HDF5 files.

    Args:
        dataset: ``shd`` or ``ssc``.
        root: the folder holding the files (or a folder ``SHD``/``SSC`` below it).
        time_steps, dt: the frames: ``time_steps`` bins of ``dt`` seconds.
        download: fetch the files that ``root`` lacks from ``url`` (gzipped, as published) into ``root``.
        url: where the release's ``<name>.h5.gz`` files are (a mirror, or the authors' site).
        loader: ``batch_size``, ``num_workers``, ``val_fraction``, ``eval_test_every_epoch``, ``split_seed``,
            ``pin_memory`` of :class:`plifnet.data.common.ClassificationDataModule` (SSC: its own validation file instead of
            ``val_fraction``'s split; ``val_fraction 0`` leaves validation out).
    """

    collate_fn = staticmethod(time_first)  # [T, N, 700]

    def __init__(
        self,
        dataset: Literal["shd", "ssc"] = "shd",
        root: str = "data",
        time_steps: int = 150,
        dt: float = 0.01,
        download: bool = False,
        url: str = URL,
        **loader,
    ):
        super().__init__(**loader)
        if dataset not in DATASETS:
            raise UserError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
        if time_steps < 1 or not dt > 0:
            raise UserError(f"--data.time_steps must be >= 1 and --data.dt > 0 (seconds), got {time_steps} and {dt}")
        self.dataset, self.root, self.time_steps, self.dt = dataset, Path(root).expanduser(), time_steps, dt
        self.sequence_shape = (time_steps, CHANNELS)  # (T, F)
        self.download, self.url = download, url.rstrip("/")

    def prepare_data(self) -> None:
        """With ``download``, fetch each file of the release that ``root`` lacks (on one process per machine)."""
        if not self.download:
            return
        for split in DATASETS[self.dataset]:
            name = f"{self.dataset}_{split}.h5"
            if not any(path.is_file() for path in (self.root / name, self.root / self.dataset.upper() / name)):
                fetch(f"{self.url}/{name}.gz", self.root / name)

    def files(self) -> dict[str, Path]:
        """The release's files by split, found in ``root`` or in ``root/SHD`` (``SSC``); a missing one is named."""
        for folder in (self.root, self.root / self.dataset.upper()):
            found = {split: folder / f"{self.dataset}_{split}.h5" for split in DATASETS[self.dataset]}
            if all(path.is_file() for path in found.values()):
                return found
        names = ", ".join(f"{self.dataset}_{split}.h5" for split in DATASETS[self.dataset])
        raise MissingData(
            f"{self.dataset.upper()} was not found in {self.root.resolve()}: it needs {names}. Fix: --data.root DIR, "
            f"the folder that holds them (or the folder above a {self.dataset.upper()} folder), or --data.download "
            f"true to fetch them from {self.url}"
        )

    def splits(self) -> dict[str, SpikeFile]:
        return {split: SpikeFile(path, self.time_steps, self.dt) for split, path in self.files().items()}

    def load(self, stage):
        sets = self.splits()
        return sets["train"], sets["train"], sets["test"]

    def setup(self, stage: str | None = None) -> None:
        if self.dataset == "shd" or self.train_set is not None:
            return super().setup(stage)
        sets = self.splits()  # SSC: the release's own validation file, read once with the others
        self.train_set, self.test_set = sets["train"], sets["test"]
        self.val_set = sets["valid"] if self.val_fraction > 0 else None

    def example_input(self) -> torch.Tensor:
        """One sample as a batch of one, ``[T, 1, 700]``."""
        return torch.zeros(self.time_steps, 1, CHANNELS)


def fetch(url: str, path: Path) -> None:
    """Download the gzipped file at ``url`` into ``path``, decompressed, through a temporary name renamed at the
    end: an interrupted download leaves no file that looks whole. A failure is one line naming the address."""
    import gzip
    import shutil
    import urllib.request

    path.parent.mkdir(parents=True, exist_ok=True)

    def write(part: Path) -> None:
        try:
            with urllib.request.urlopen(url, timeout=60) as response, gzip.GzipFile(fileobj=response) as unzipped:
                with open(part, "wb") as out:
                    shutil.copyfileobj(unzipped, out, 1 << 20)
        except (OSError, EOFError) as error:  # URLError, HTTPError, a bad or cut-off gzip stream
            raise MissingData(
                f"could not download {url} ({error}). Fix: download it by hand into {path.parent.resolve()} (or "
                f"give --data.url a mirror)"
            ) from None

    write_atomically(path, write)
