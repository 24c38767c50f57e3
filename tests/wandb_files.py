"""Offline wandb runs read from their ``run-*.wandb`` files, independently of wandb's own reader: wandb's
7-byte file header (":W&B", magic, version), then a LevelDB log (github.com/google/leveldb,
doc/log_format.md: 32 KiB blocks of chunks, each with a 7-byte header: crc32, uint16 length, uint8 type,
FULL = 1, FIRST = 2, MIDDLE = 3, LAST = 4) whose records are wandb's own ``wandb_internal_pb2.Record``.

wandb's service writes the file after the client: ``wandb.finish()`` and even the process's exit can come
before the history is in (seen on CI's loaded machine), and a killed run's service writes on after the
kill. So a test waits for a run's ``exit`` record (:func:`wait_for`) before it reads what the run logged."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Callable


def records(run_file: Path, kind: str = "history") -> list:
    """The records of one kind (``history``, ``run``, ``config``, ``exit``) in the file as it is now."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    if not data:  # a run killed before wandb wrote anything
        return []
    assert data[:4] == b":W&B"
    position, pending, found = 7, b"", []
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        length, chunk = struct.unpack("<HB", data[position + 4 : position + 7])
        if position + 7 + length > len(data):  # a chunk not written yet, or cut short by a killed writer
            break
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if chunk in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == kind:
                found.append(getattr(record, kind))
    return found


def history(run_file: Path) -> list[dict]:
    """The logged rows, ``{key: value}``."""
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.item}
        for record in records(run_file, "history")
    ]


def wait_for(
    run_files: Callable[[], list[Path]], done: Callable[[Path], bool] = lambda path: True, timeout: float = 120.0
) -> Path:
    """The one run file, of those ``run_files()`` lists, that holds an exit record and satisfies ``done``,
    once it does (the files are read again every half second until then)."""
    deadline = time.monotonic() + timeout
    while True:
        files = sorted({path.resolve() for path in run_files()})  # wandb's latest-run link names one twice
        finished = [path for path in files if records(path, "exit") and done(path)]
        if len(finished) == 1:
            return finished[0]
        assert len(finished) < 2, f"more than one finished run: {finished}"
        assert time.monotonic() < deadline, f"no finished wandb run after {timeout} s among {files}"
        time.sleep(0.5)
