"""Writers of small event files in each original format (docs/paper.md section 5), for the tests."""

from pathlib import Path

import numpy as np


def write_nmnist(path: Path, x, y, t, p) -> Path:
    """5 bytes per event: x, y, then 24 bits big-endian: polarity (bit 23) | timestamp (bits 22..0)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    word = (np.asarray(p, np.uint32) << 23) | np.asarray(t, np.uint32)
    raw = np.stack(
        [
            np.asarray(x, np.uint8),
            np.asarray(y, np.uint8),
            (word >> 16).astype(np.uint8),
            (word >> 8).astype(np.uint8),
            word.astype(np.uint8),
        ],
        axis=1,
    )
    path.write_bytes(raw.tobytes())
    return path


def write_aedat2(path: Path, x, y, t, p) -> Path:
    """AEDAT 2.0 of a DVS128, encoding the (x, y, p) that SpikingJelly's mapping decodes back:
    x = 127 - yr, y = 127 - xr, p = 1 - pr, address = yr << 8 | xr << 1 | pr."""
    path.parent.mkdir(parents=True, exist_ok=True)
    xr, yr, pr = 127 - np.asarray(y), 127 - np.asarray(x), 1 - np.asarray(p)
    events = np.empty(len(xr), np.dtype([("a", ">u4"), ("t", ">u4")]))
    events["a"], events["t"] = (yr << 8) | (xr << 1) | pr, t
    path.write_bytes(b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n# created by a test\r\n" + events.tobytes())
    return path


def aedat31_packet(x, y, t, p, overflow=0, kind=1, valid=None) -> bytes:
    """One AEDAT 3.1 packet: 28-byte header, then 8-byte polarity events (data, timestamp)."""
    n = len(t)
    valid = np.ones(n, np.uint32) if valid is None else np.asarray(valid, np.uint32)
    events = np.empty(n, np.dtype([("d", "<u4"), ("t", "<u4")]))
    events["d"] = (
        (np.asarray(x, np.uint32) << 17) | (np.asarray(y, np.uint32) << 2) | (np.asarray(p, np.uint32) << 1) | valid
    )
    events["t"] = t
    header = np.array([(kind, 1, 8, 4, overflow, n, n, int(valid.sum()))], "<u2,<u2,<i4,<i4,<i4,<i4,<i4,<i4")
    return header.tobytes() + events.tobytes()


def write_aedat31(path: Path, packets: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n" + b"".join(packets))
    return path


def write_aedat4(path: Path, x, y, t, p) -> Path:
    """AEDAT 4 through dv-processing's writer (tonic's re-packaged CIFAR10-DVS format)."""
    import dv_processing as dv

    path.parent.mkdir(parents=True, exist_ok=True)
    store = dv.EventStore()
    for xi, yi, ti, pi in zip(x, y, t, p):
        store.push_back(int(ti), int(xi), int(yi), bool(pi))
    writer = dv.io.MonoCameraWriter(str(path), dv.io.MonoCameraWriter.EventOnlyConfig("DVS128_test", (128, 128)))
    writer.writeEvents(store)
    del writer  # closes the file
    return path


def random_events(n, size, seed, t0=0):
    rng = np.random.default_rng(seed)
    t = t0 + np.sort(rng.integers(0, 300_000, n))
    return rng.integers(0, size, n), rng.integers(0, size, n), t, rng.integers(0, 2, n)


def hand_frames(x, y, t, p, time_steps, size):
    """The paper's split by number, one event at a time (the slow, obvious way)."""
    frames = np.zeros((time_steps, 2, size, size), np.float32)
    n = len(t)
    d = n // time_steps
    for j in range(time_steps):
        start = j * d
        end = n if j == time_steps - 1 else (j + 1) * d
        for i in range(start, end):
            frames[j, p[i], y[i], x[i]] += 1
    return frames
