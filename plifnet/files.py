"""Writing files so that a crash never leaves a half-written one where a later run would read it."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Callable


class WriteFailed(OSError):
    """A file of the run (checkpoint, log, plot, cache, results) could not be written."""


def temporary_name(path: Path) -> Path:
    """``.<stem>.<pid>.tmp<suffix>`` beside ``path``: hidden, unique per process (data loader workers
    do not collide), and keeping the suffix that writers such as ``savefig`` or ``np.save`` go by."""
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_atomically(path: Path, write: Callable[[Path], None], durable: bool = False) -> None:
    """Call ``write(tmp)`` on a temporary name in the same folder, then rename it over ``path``.

    The rename is one step within a filesystem, so ``path`` holds either the old or the new file,
    whatever kills the process. ``durable`` also flushes the file and the folder to disk (fsync)
    before and after the rename, so that a power loss cannot leave the new name with no data.
    A ``path`` that exists and is not a regular file (``/dev/null``, a folder) is refused, untouched.
    A failure of the write leaves ``path`` as it was; an ``OSError`` of it (a full disk, a read-only
    folder) is raised as :class:`WriteFailed` with the same errno, naming ``path`` (the temporary name
    would mean nothing to a user), also where torch.save turned it into a ``RuntimeError``.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a rename would replace a device (/dev/null), a folder or a pipe
        raise WriteFailed(
            errno.EEXIST,
            "it is not a regular file (a device, a folder or a pipe), which plifnet does "
            "not replace. Fix: give the path of a file",
            str(path),
        )
    tmp = temporary_name(path)
    try:
        write(tmp)
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync(path.parent)
    except (OSError, RuntimeError) as error:
        cause = error if isinstance(error, OSError) else error.__context__
        if not isinstance(cause, OSError) or cause.errno is None:
            raise
        raise WriteFailed(cause.errno, cause.strerror, str(path)) from error
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


def write_failure(error: OSError, elsewhere: str = "--trainer.default_root_dir DIR") -> str:
    """The line a user gets for a file that could not be written: which file, why, that the files
    written before are intact, and the fix (``elsewhere``: the option that moves the output)."""
    if error.errno is None and error.filename is None:  # re-raised by a data loader from a worker, as text
        found = re.search(r"\[Errno (\d+)\] (.+?)(?:: '(.+)')?$", str(error).strip().splitlines()[-1])
        error = OSError(int(found[1]), found[2], *[found[3]] * bool(found[3])) if found else error
    what = f"could not write {error.filename}: {error.strerror}" if error.filename else error.strerror or str(error)
    if "Fix:" in what:  # a message of its own (a checkpoint's names the file and the fix)
        return f"error: {what}"
    return (
        f"error: {what}. The files written before are intact; free disk space or make the folder writable, "
        f"or write elsewhere with {elsewhere}"
    )
