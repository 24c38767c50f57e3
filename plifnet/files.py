"""Writing files so that a crash never leaves a half-written one where a later run would read it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def temporary_name(path: Path) -> Path:
    """``.<stem>.<pid>.tmp<suffix>`` beside ``path``: hidden, unique per process (data loader workers
    do not collide), and keeping the suffix that writers such as ``savefig`` or ``np.save`` go by."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_atomically(path: Path, write: Callable[[Path], None], durable: bool = False) -> None:
    """Call ``write(tmp)`` on a temporary name in the same folder, then rename it over ``path``.

    The rename is one step within a filesystem, so ``path`` holds either the old or the new file,
    whatever kills the process. ``durable`` also flushes the file and the folder to disk (fsync)
    before and after the rename, so that a power loss cannot leave the new name with no data.
    A failure of the write leaves ``path`` as it was and is raised as it is.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_orphans(folder: Path) -> None:
    """Remove the temporary files (:func:`temporary_name`) that writers which no longer run (killed
    mid-write) left in ``folder``."""
    for path in Path(folder).glob(".*.tmp*"):
        pid = path.name.rsplit(".tmp", 1)[0].rsplit(".", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
