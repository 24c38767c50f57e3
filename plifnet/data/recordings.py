"""Event-camera recordings on disk: the readers of their five file formats (one recording -> events
``(x, y, t, p)``) and the layouts of the three releases (docs/paper.md section 5) that :mod:`plifnet.data.events`
turns into frames:

* N-MNIST: ``Train|Test/<digit>/<id>.bin`` (the original release), read by tonic's reader.
* CIFAR10-DVS: ``<class>/*.aedat`` (the original AEDAT 2.0 release) or ``<class>/*.aedat4`` (tonic's
  re-packaging); per class, recordings 0-899 train and 900-999 test.
* DVS128 Gesture: ``userNN_<lighting>.aedat`` (AEDAT 3.1) with ``userNN_<lighting>_labels.csv`` and
  ``trials_to_train.txt`` / ``trials_to_test.txt`` (the original release), or tonic's
  ``ibmGestureTrain|ibmGestureTest/userNN_<lighting>/<label>.npy``.

A folder holding a subset of a dataset loads as it is: nothing insists on the full file count.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from plifnet.errors import UserError

EVENTS = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])


class CorruptRecording(UserError):
    """A recording that cannot be decoded: the message names the file and what is wrong with it."""


# --- readers: one recording -> events ------------------------------------------------------------


def _events(x, y, t, p) -> np.ndarray:
    events = np.empty(len(t), EVENTS)
    events["x"], events["y"], events["t"], events["p"] = x, y, t, p
    return events


def read_nmnist(path: Path) -> np.ndarray:
    """N-MNIST ``.bin``: 5 bytes per event (x, y, then 24 bits: polarity bit 23, timestamp bits 22..0)."""
    import tonic.io

    size = path.stat().st_size
    if size == 0 or size % 5:
        raise CorruptRecording(f"{path}: {size} bytes is not a whole number of 5-byte N-MNIST events (truncated?)")
    raw = tonic.io.read_mnist_file(str(path), dtype=EVENTS)
    return _events(raw["x"], raw["y"], raw["t"], raw["p"])


def read_aedat2_dvs128(path: Path) -> np.ndarray:
    """AEDAT 2.0 of a DVS128 (CIFAR10-DVS): ``#`` header lines, then 8-byte big-endian events
    (address, timestamp), mapped to x = 127 - yr, y = 127 - xr, p = 1 - pr as in SpikingJelly."""
    import tonic.io

    with open(path, "rb") as f:
        if f.read(1) != b"#":
            raise CorruptRecording(f"{path}: no AEDAT header (the file should start with '#!AER-DAT2.0')")
    version, start, _ = tonic.io.read_aedat_header_from_file(str(path))
    if not 2 <= version < 3:
        raise CorruptRecording(f"{path}: AEDAT version {version}, expected 2.x")
    if (path.stat().st_size - start) % 8:
        raise CorruptRecording(f"{path}: the event data is not a whole number of 8-byte events (truncated?)")
    raw = tonic.io.get_aer_events_from_file(str(path), version, start)
    address = raw["address"].astype(np.int64)
    xr, yr, pr = (address >> 1) & 0x7F, (address >> 8) & 0x7F, address & 1
    return _events(127 - yr, 127 - xr, raw["timeStamp"], 1 - pr)


def read_aedat4(path: Path) -> np.ndarray:
    """AEDAT 4 (tonic's re-packaged CIFAR10-DVS), decoded by tonic's reader (the ``aedat`` package)."""
    import tonic.io

    try:
        raw = tonic.io.read_aedat4(str(path))
    except Exception as error:  # the decoder raises bare Exceptions and Rust panics for bad files
        raise CorruptRecording(f"{path}: cannot decode AEDAT 4 ({error})") from error
    return _events(raw["x"], raw["y"], raw["t"], raw["on"])


@lru_cache(maxsize=2)  # the samples of one gesture file are read one after another
def read_aedat31_polarity(path: Path) -> np.ndarray:
    """AEDAT 3.1 (DVS128 Gesture): packets of a 28-byte header (type, source, size, ts offset,
    ts overflow, capacity, number, valid) and ``number`` events of ``size`` bytes. Only polarity
    packets (type 1) are read: 32-bit data (x bits 17-31, y bits 2-16, polarity bit 1) and a
    32-bit timestamp extended by the packet's overflow counter.

    Written here rather than taken from tonic, whose reader treats every packet as polarity events
    and drops the timestamp overflow.
    """
    data = path.read_bytes()
    start = 0
    while data.startswith(b"#", start):
        end = data.find(b"\r\n", start)
        if end < 0:
            raise CorruptRecording(f"{path}: the AEDAT header never ends")
        start = end + 2
    chunks, position = [], start
    while position < len(data):
        if position + 28 > len(data):
            raise CorruptRecording(f"{path}: a packet header is cut off at byte {position} (truncated?)")
        kind, _, size, _, overflow, _, number, _ = np.frombuffer(data, "<u2,<u2,<i4,<i4,<i4,<i4,<i4,<i4", 1, position)[
            0
        ]
        body, position = position + 28, position + 28 + size * number
        if position > len(data):
            raise CorruptRecording(f"{path}: a packet of {number} events runs past the end of the file (truncated?)")
        if kind == 1:
            events = np.frombuffer(data, np.dtype([("data", "<u4"), ("t", "<u4")]), number, body)
            valid = events[events["data"] & 1 == 1]
            chunks.append(
                _events(
                    (valid["data"] >> 17) & 0x7FFF,
                    (valid["data"] >> 2) & 0x7FFF,
                    valid["t"].astype(np.int64) | (int(overflow) << 31),
                    (valid["data"] >> 1) & 1,
                )
            )
    return np.concatenate(chunks) if chunks else np.empty(0, EVENTS)


def read_gesture_npy(path: Path) -> np.ndarray:
    """tonic's DVS128 Gesture ``.npy``: rows of (x, y, p, t in milliseconds)."""
    try:
        raw = np.load(path)
    except (ValueError, OSError) as error:
        raise CorruptRecording(f"{path}: cannot load ({error})") from error
    if raw.ndim != 2 or raw.shape[1] != 4:
        raise CorruptRecording(f"{path}: expected an [N, 4] array of (x, y, p, t), got shape {raw.shape}")
    return _events(raw[:, 0], raw[:, 1], raw[:, 3].astype(np.int64) * 1000, raw[:, 2])


# --- frames ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    path: Path
    label: int
    window: tuple[int, int] | None = None  # [start, end) microseconds within the file (DVS128 Gesture)


# --- layouts ---------------------------------------------------------------------------------------

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _trailing_number(path: Path) -> int:
    match = re.search(r"(\d+)$", path.stem)
    return int(match.group(1)) if match else -1


def nmnist_layout(root: Path, train: bool):
    folder = root / ("Train" if train else "Test")
    if not folder.is_dir():
        return None
    recordings = [Recording(path, int(path.parent.name)) for path in sorted(folder.glob("[0-9]/*.bin"))]
    return recordings, read_nmnist


def cifar10dvs_layout(root: Path, train: bool):
    for suffix, read in ((".aedat", read_aedat2_dvs128), (".aedat4", read_aedat4)):
        recordings = []
        for label, name in enumerate(CIFAR10_CLASSES):
            for path in sorted((root / name).glob(f"*{suffix}"), key=_trailing_number):
                if (_trailing_number(path) < 900) == train:
                    recordings.append(Recording(path, label))
        if recordings:
            return recordings, read
    return None


def dvs_gesture_layout(root: Path, train: bool):
    trials = root / ("trials_to_train.txt" if train else "trials_to_test.txt")
    if trials.is_file():
        recordings = []
        for name in trials.read_text().split():
            path = root / name
            labels = path.with_name(path.stem + "_labels.csv")
            if not path.is_file() or not labels.is_file():
                continue  # a subset of the release: the trial list names more files than are here
            with open(labels, newline="") as f:
                for row in csv.DictReader(f, skipinitialspace=True):
                    row = list(row.values())
                    recordings.append(Recording(path, int(row[0]) - 1, (int(row[1]), int(row[2]))))
        return recordings, read_aedat31_polarity
    folder = root / ("ibmGestureTrain" if train else "ibmGestureTest")
    if folder.is_dir():
        return [Recording(p, int(p.stem)) for p in sorted(folder.glob("user*/*.npy"))], read_gesture_npy
    return None


@dataclass(frozen=True)
class EventDataset:
    layout: Callable
    sensor_size: tuple[int, int]  # (H, W)
    classes: int
    layouts: str  # for error messages
    tonic_class: str | None  # tonic.datasets class that downloads it
    source: str


EVENT_DATASETS = {
    "nmnist": EventDataset(
        nmnist_layout,
        (34, 34),
        10,
        "Train/<digit>/*.bin and Test/<digit>/*.bin",
        "NMNIST",
        "https://www.garrickorchard.com/datasets/n-mnist",
    ),
    "cifar10dvs": EventDataset(
        cifar10dvs_layout,
        (128, 128),
        10,
        "<class>/*.aedat (AEDAT 2.0) or <class>/*.aedat4",
        "CIFAR10DVS",
        "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671",
    ),
    "dvs_gesture": EventDataset(
        dvs_gesture_layout,
        (128, 128),
        11,
        "userNN_<lighting>.aedat + _labels.csv + trials_to_train.txt/trials_to_test.txt, or ibmGestureTrain|Test/userNN_<lighting>/<label>.npy",
        "DVSGesture",
        "https://research.ibm.com/interactive/dvsgesture/",
    ),
}
