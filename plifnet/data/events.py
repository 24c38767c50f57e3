"""Event-camera data as frames: N-MNIST, CIFAR10-DVS and DVS128 Gesture (docs/paper.md sections 3 and 5).

Each recording (read by :mod:`plifnet.data.recordings`, which also finds the layouts under ``root``)
is a stream of events ``(x, y, t, p)``; the network sees ``T`` frames ``[2, H, W]`` (one channel per
polarity, value = event count).

Frames are cached as ``.npy`` under ``cache_dir/<key>/`` where the key hashes everything that changes
them, and each file is written to a temporary name and renamed, so a crash never leaves a half file.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from plifnet.data.common import ClassificationDataModule, time_first
from plifnet.data.recordings import EVENT_DATASETS, CorruptRecording, Recording
from plifnet.errors import MissingData, UserError
from plifnet.files import WriteFailed, write_atomically

CACHE_FORMAT = 1  # bump when the frame computation changes, so old caches are not served


def to_frames(
    events: np.ndarray, time_steps: int, sensor_size: tuple[int, int], split_by: Literal["number", "time"] = "number"
) -> np.ndarray:
    """Integrate events into ``[T, 2, H, W]`` float32 counts (channel 0: OFF, p <= 0; channel 1: ON, p > 0).

    ``split_by="number"`` (the paper's): with N events, ``d = N // T``; frame j holds events
    ``[j*d, (j+1)*d)`` and the last frame runs to N (so with N < T every event is in the last frame).
    tonic's ``ToFrame(n_event_bins=T)`` differs: it drops the remainder (10 events into 3 frames
    gives 3 + 3 + 3) and returns empty frames when N < T, hence this function.
    ``split_by="time"``: T equal spans of ``(t_last - t_first) // T`` microseconds, the last one
    running to the end.
    """
    height, width = sensor_size
    frames = np.zeros((time_steps, 2, height, width), np.float32)
    n = len(events)
    if n == 0:
        return frames
    if split_by == "number":
        d = n // time_steps
        frame = np.minimum(np.arange(n) // d, time_steps - 1) if d else np.full(n, time_steps - 1)
    elif split_by == "time":
        t = events["t"] - events["t"].min()
        dt = int(t.max()) // time_steps
        frame = np.minimum(t // dt, time_steps - 1) if dt else np.full(n, time_steps - 1)
    else:
        raise UserError(f"split_by must be 'number' or 'time', got {split_by!r}")
    x, y = events["x"].astype(np.int64), events["y"].astype(np.int64)
    p = (events["p"] > 0).astype(np.int64)  # ON (p > 0) is channel 1, OFF channel 0, however a reader codes them
    if x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height:
        raise CorruptRecording(f"events outside the {width} x {height} sensor (x up to {x.max()}, y up to {y.max()})")
    flat = ((frame * 2 + p) * height + y) * width + x
    frames.reshape(-1)[:] = np.bincount(flat, minlength=frames.size)
    return frames


# --- datasets --------------------------------------------------------------------------------------


class EventFrames(Dataset):
    """Recordings as ``(frames [T, 2, H, W], label)``, cached on disk when ``cache_dir`` is given."""

    def __init__(
        self,
        recordings: list[Recording],
        read: Callable[[Path], np.ndarray],
        time_steps: int,
        sensor_size: tuple[int, int],
        split_by: str,
        cache_dir: Path | None,
        cache_key: dict,
    ):
        self.recordings, self.read = recordings, read
        self.time_steps, self.sensor_size, self.split_by = time_steps, sensor_size, split_by
        self.targets = [r.label for r in recordings]
        self.cache = None
        if cache_dir is not None:
            key = dict(
                cache_key, time_steps=time_steps, split_by=split_by, sensor_size=list(sensor_size), format=CACHE_FORMAT
            )
            digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            self.cache = Path(cache_dir) / f"{cache_key['dataset']}-{digest}"
            self.cache.mkdir(parents=True, exist_ok=True)
            (self.cache / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True))

    def __len__(self) -> int:
        return len(self.recordings)

    def _cache_file(self, recording: Recording) -> Path:
        stat = recording.path.stat()
        identity = f"{recording.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{recording.window}"
        return self.cache / f"{hashlib.sha1(identity.encode()).hexdigest()[:20]}.npy"

    def frames(self, index: int) -> np.ndarray:
        recording = self.recordings[index]
        cached = self._cache_file(recording) if self.cache else None
        if cached is not None and cached.exists():
            frames = self._load_cached(cached, recording)
            if frames is not None:
                return frames
        events = self.read(recording.path)
        if recording.window is not None:
            start, end = recording.window
            events = events[(events["t"] >= start) & (events["t"] < end)]
        if len(events) == 0:
            raise CorruptRecording(f"{recording.path}{f' {recording.window}' if recording.window else ''}: no events")
        try:
            frames = to_frames(events, self.time_steps, self.sensor_size, self.split_by)
        except CorruptRecording as error:
            raise CorruptRecording(f"{recording.path}: {error}") from None
        if cached is not None:
            try:
                write_atomically(cached, lambda tmp: np.save(tmp, frames))
            except WriteFailed as error:  # the fix is a data option, not the run folder's
                raise WriteFailed(
                    error.errno,
                    f"could not write the frame cache file {cached}: {error.strerror}. The "
                    f"files cached before are intact. Fix: free disk space or make {self.cache} writable, "
                    f"cache elsewhere with --data.cache_dir DIR, or not at all with --data.cache false",
                ) from None
        return frames

    def _load_cached(self, cached: Path, recording: Recording) -> np.ndarray | None:
        """The cached frames, or None (the file removed, to be rebuilt from the recording) when the
        cache file is damaged: a cache is derived data, so damage there is repaired, not fatal."""
        shape = (self.time_steps, 2, *self.sensor_size)
        try:
            frames = np.load(cached)
            if frames.shape == shape:
                return frames
            problem = f"frames of shape {frames.shape} instead of {shape}"
        except (ValueError, OSError, EOFError) as error:
            problem = str(error) or type(error).__name__
        warnings.warn(
            f"damaged frames cache file {cached} ({problem}) of {recording.path}: rebuilt from the recording",
            RuntimeWarning,
        )
        cached.unlink(missing_ok=True)
        return None

    def __getitem__(self, index: int):
        return torch.from_numpy(self.frames(index)), self.targets[index]


class EventDataModule(ClassificationDataModule):
    """N-MNIST, CIFAR10-DVS or DVS128 Gesture as ``[T, N, 2, H, W]`` frames.

    Args:
        dataset: ``nmnist``, ``cifar10dvs`` or ``dvs_gesture``.
        root: the folder holding the recordings (the layouts of the module docstring are detected).
        time_steps: T, the number of frames per sample (the paper: 10, 20, 20).
        split_by: ``number`` (the paper's) or ``time``.
        download: fetch the data with tonic's downloader into ``root`` when no layout is found.
        cache_dir: where frames are cached (None: ``root/frames_cache``); ``cache: false`` disables it.
        on_error: ``raise`` (default) stops at a corrupt recording, naming it; ``skip`` checks every
            recording at setup, leaves out the bad ones with one warning that counts them.
        loader: ``batch_size``, ``num_workers``, ``val_fraction``, ``eval_test_every_epoch``, ``split_seed``,
            ``pin_memory`` of :class:`plifnet.data.common.ClassificationDataModule`.
    """

    def __init__(
        self,
        dataset: Literal["nmnist", "cifar10dvs", "dvs_gesture"] = "nmnist",
        root: str = "data",
        time_steps: int = 10,
        split_by: Literal["number", "time"] = "number",
        download: bool = False,
        cache: bool = True,
        cache_dir: str | None = None,
        on_error: Literal["raise", "skip"] = "raise",
        **loader,
    ):
        super().__init__(**loader)
        if dataset not in EVENT_DATASETS:
            raise UserError(f"unknown dataset {dataset!r}; choose one of {sorted(EVENT_DATASETS)}")
        if time_steps < 1:
            raise UserError(f"time_steps must be >= 1, got {time_steps}")
        if split_by not in ("number", "time"):
            raise UserError(f"split_by must be 'number' or 'time', got {split_by!r}")
        if on_error not in ("raise", "skip"):
            raise UserError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.dataset, self.spec = dataset, EVENT_DATASETS[dataset]
        self.input_shape = (2, *self.spec.sensor_size)  # one frame: a channel per polarity
        self.root, self.time_steps, self.split_by = Path(root).expanduser(), time_steps, split_by
        self.download, self.on_error = download, on_error
        self.cache_dir = (Path(cache_dir).expanduser() if cache_dir else self.root / "frames_cache") if cache else None
        self.skipped: list[str] = []

    collate_fn = staticmethod(time_first)  # frames [T, N, 2, H, W]

    def example_input(self) -> torch.Tensor:
        """One sample as a batch of one, time first: ``[T, 1, 2, H, W]``."""
        return torch.zeros(self.time_steps, 1, *self.input_shape)

    def _find(self) -> Path | None:
        """The folder holding a known layout: ``root``, or ``root/<tonic class>`` where tonic keeps it."""
        for root in (self.root, self.root / self.spec.tonic_class):
            if any((self.spec.layout(root, train) or ([],))[0] for train in (True, False)):
                return root
        return None

    def prepare_data(self) -> None:
        if self.download and self._find() is None:
            import tonic.datasets

            try:
                for train in (True, False):
                    getattr(tonic.datasets, self.spec.tonic_class)(str(self.root), train=train)
            except Exception as error:
                raise MissingData(
                    f"could not download {self.dataset} into {self.root}: {error}. " + self._missing_message()
                ) from error

    def _frames(self, train: bool) -> EventFrames:
        root = self._find()
        if root is None:
            raise MissingData(self._missing_message())
        recordings, read = self.spec.layout(root, train) or ([], None)
        key = dict(dataset=self.dataset, split="train" if train else "test", reader=getattr(read, "__name__", None))
        frames = EventFrames(
            recordings, read, self.time_steps, self.spec.sensor_size, self.split_by, self.cache_dir, key
        )
        if self.on_error == "skip":
            frames = self._without_corrupt(frames)
        return frames

    def _without_corrupt(self, frames: EventFrames) -> EventFrames:
        """Decode every recording once (filling the cache) and keep the good ones."""
        good = []
        for i, recording in enumerate(frames.recordings):
            try:
                frames.frames(i)
                good.append(recording)
            except CorruptRecording as error:
                self.skipped.append(str(error))
        if frames.recordings and not good:
            raise CorruptRecording(
                f"{self.dataset}: all {len(frames.recordings)} recordings of a split are corrupt, so "
                f"there is nothing to load; e.g. {self.skipped[-1]}. Fix: "
                f"check or download the files again (--data.on_error skip leaves out some, not all)"
            )
        if len(good) < len(frames.recordings):
            warnings.warn(
                f"{self.dataset}: skipped {len(frames.recordings) - len(good)} corrupt recording(s) "
                f"of {len(frames.recordings)}, e.g. {self.skipped[-1]}",
                RuntimeWarning,
            )
        frames.recordings, frames.targets = good, [r.label for r in good]
        return frames

    def load(self, stage):
        train, test = self._frames(True), self._frames(False)
        return train, train, test

    def _missing_message(self) -> str:
        return (
            f"{self.dataset} was not found in {self.root.resolve()} (nor in {self.root / self.spec.tonic_class}). "
            f"Expected {self.spec.layouts}. Fix: --data.root DIR pointing at your copy, or --data.download true "
            f"(tonic's downloader; needs network). The recordings are published at {self.spec.source}."
        )
