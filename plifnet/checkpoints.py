"""Checkpoints: written atomically beside their final name, read without running code, found for resume.

Every checkpoint plifnet trains from or tests arrives through here, whichever way it is named:

* :class:`AtomicCheckpointIO`, the trainer's checkpoint plugin (``configs/trainer/default.yaml``),
  writes each checkpoint to a hidden temporary file in the checkpoint's own folder, flushes it to
  disk and renames it into place. Lightning's default writes the temporary file in ``$TMPDIR``;
  where that is another filesystem (tmpfs ``/tmp``, cluster scratch) its "move" is a copy onto the
  old checkpoint, and a kill during the copy leaves a truncated one. A failed write (disk full, no
  permission) stops the run with the path and the reason, and leaves the old file as it was.
* :func:`read` loads with ``weights_only=True`` (tensors and plain Python values only: a crafted
  file cannot run code) and turns every way a file can be wrong into one line naming it.
* :func:`fetch` downloads an ``http(s)://`` checkpoint once into a cache keyed by the whole URL, so
  two URLs ending in the same file name are two files (torch.hub keys by the file name alone).
* :func:`newest` finds the newest *readable* checkpoint for ``--ckpt_path last``, naming the
  unreadable ones it passes over, and removes the temporary files of killed writes.
* :func:`check_names` refuses a checkpoint whose hyperparameters name code (a neuron, a surrogate, a
  network's or any ``class_path``) that is not built in, not a registered or installed plug-in and not
  given by the user in this run: a file of plain tensors and strings must not make plifnet import a
  module or call a function it names (``neuron: tempfile.mkdtemp``).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from plifnet.files import WriteFailed, remove_orphans, write_atomically

NAMING_KEYS = ("neuron", "surrogate", "class_path", "_class_path")  # hyperparameters whose strings name code
PLUGIN_GROUPS = ("plifnet.neurons", "plifnet.surrogates", "plifnet.adapters")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message names the file, what is wrong and what to do."""


def is_url(path) -> bool:
    return urlparse(str(path)).scheme in ("http", "https")


def cache_dir() -> Path:
    """Where downloaded checkpoints are kept: ``<torch hub dir>/plifnet_checkpoints`` (``$TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "plifnet_checkpoints"


def fetch(url: str) -> Path:
    """The local copy of the checkpoint at ``url``, downloaded on first use (to a temporary name, then
    renamed) into :func:`cache_dir` under a name that hashes the whole URL."""
    name = Path(urlparse(url).path).name or "checkpoint.ckpt"
    path = cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{name}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as error:  # urllib's HTTPError, URLError, timeouts: all say why in their text
            raise CheckpointError(f"could not download checkpoint {url}: {error}. Check the URL and the network, "
                                  f"or download it yourself and pass the file's path") from error
    return path


def read(path, map_location="cpu", mmap: bool = False) -> dict:
    """Load a Lightning checkpoint with ``weights_only=True``, or raise :class:`CheckpointError`.

    ``mmap=True`` maps the tensors instead of reading them: a cheap check that a file is usable.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .ckpt file, or --ckpt_path last")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {path} is truncated or is not a checkpoint (no zip directory at its end); "
                              f"pass another one, e.g. an epoch*.ckpt or step*.ckpt in the same folder")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} holds Python objects that would run code when loaded, and plifnet "
                              f"reads checkpoints with weights_only=True ({reason}); use a checkpoint written by "
                              f"plifnet fit or Trainer.save_checkpoint") from None
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} is a zip archive but not a PyTorch checkpoint "
                              f"({str(error).strip().splitlines()[0][:200]}); pass a .ckpt written by plifnet fit") from None
    if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint or "state_dict" not in checkpoint:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"checkpoint {path} is a PyTorch file but not a Lightning checkpoint (it holds {keys}, "
                              f"no 'pytorch-lightning_version' and 'state_dict'); pass a .ckpt written by plifnet fit "
                              f"or Trainer.save_checkpoint")
    return checkpoint


def named_code(tree, prefix: str = "") -> list[tuple[str, str]]:
    """``(hyperparameter, value)`` for every string of a hyperparameter tree that names code: under a key of
    :data:`NAMING_KEYS`, at any depth (``net.init_args.neuron``, ``neuron.class_path``)."""
    found = []
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, (list, tuple)) else ()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, str) and key in NAMING_KEYS:
            found.append((name, value))
        elif isinstance(value, (dict, list, tuple)):
            found += named_code(value, f"{name}.")
    return found


def torch_optim_names() -> set[str]:
    """The class paths of torch's optimizers and learning-rate schedulers (``torch.optim.Adam``,
    ``torch.optim.lr_scheduler.CosineAnnealingLR``, and their defining modules' paths)."""
    import inspect

    import torch

    schedulers = (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    names = set()
    for module in (torch.optim, torch.optim.lr_scheduler):
        for name, cls in vars(module).items():
            if inspect.isclass(cls) and issubclass(cls, (torch.optim.Optimizer, *schedulers)):
                names |= {f"{module.__name__}.{name}", f"{cls.__module__}.{cls.__qualname__}"}
    return names


def known_names() -> set[str]:
    """Names a checkpoint may use without the user naming them: the registered neurons and surrogates,
    the entry points of installed plug-ins (their names and their ``module.Class`` paths; listed, not
    imported), and every class path inside plifnet (importing plifnet's modules runs nothing)."""
    from importlib.metadata import entry_points

    from plifnet.neurons import NEURONS
    from plifnet.surrogates import SURROGATES

    names = set(NEURONS) | set(SURROGATES) | torch_optim_names()
    for group in PLUGIN_GROUPS:
        for ep in entry_points(group=group):
            names |= {ep.name, ep.value.replace(":", ".")}
    return names


def check_names(hyper_parameters: dict, allowed, how_to_allow: str, source="the checkpoint") -> None:
    """Raise :class:`CheckpointError` for the first string of ``hyper_parameters`` that names code which is
    neither :func:`known_names`, a ``plifnet.`` class path, nor in ``allowed`` (the strings this run's user
    gave); before anything imports it. ``how_to_allow`` completes the message."""
    known = known_names()
    for key, value in named_code(hyper_parameters):
        if value in known or value in allowed or value.startswith("plifnet."):
            continue
        raise CheckpointError(f"{source} names code this run did not: hyperparameter {key} = {value!r} is neither "
                              f"built in, a registered plug-in, an installed package's entry point, nor given in "
                              f"this run, so plifnet does not import it; {how_to_allow}")


def strings(tree) -> set[str]:
    """Every string in a tree of mappings, namespaces and sequences (what a user gave: a parsed config)."""
    if isinstance(tree, str):
        return {tree}
    if hasattr(tree, "items"):
        return set().union(*(strings(value) for _, value in tree.items())) if tree else set()
    if isinstance(tree, (list, tuple, set)):
        return set().union(*(strings(value) for value in tree)) if tree else set()
    return set()


def resumable(checkpoint: dict) -> bool:
    """Whether a checkpoint holds a run's whole state (optimizer, schedule, loops, callbacks), not only
    the weights that ``ModelCheckpoint(save_weights_only=True)`` keeps (the best epoch's)."""
    return "optimizer_states" in checkpoint and "loops" in checkpoint


def newest(folders, root=None) -> tuple[Path | None, list[str]]:
    """The newest readable checkpoint that a run resumes from (:func:`resumable`) in
    ``<folder>/*/checkpoints/`` of the given run folders, or among the ``hpc_ckpt_<n>.ckpt`` that
    Lightning's SLURM requeue saves in ``root`` (by modification time), and a line for each newer file
    that could not be read and was passed over (weights-only files are passed over without one). The
    temporary files that killed writes left in those run folders and their checkpoint folders are
    removed on the way."""
    for run in (run for folder in folders for run in Path(folder).glob("*/")):
        for folder in (run, run / "checkpoints"):  # checkpoints, and tau.csv, plots and the like beside them
            remove_orphans(folder)
    found = [path for folder in folders for path in Path(folder).glob("*/checkpoints/*.ckpt")
             if not path.name.startswith(".")]  # hidden: a temporary file of a write in progress or killed
    found += list(Path(root).glob("hpc_ckpt_*.ckpt")) if root is not None else []
    skipped = []
    for path in sorted(found, key=lambda path: path.stat().st_mtime, reverse=True):
        try:
            if resumable(read(path, mmap=True)):
                return path, skipped
        except CheckpointError as error:
            skipped.append(str(error))
    return None, skipped


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO``, with local checkpoints written atomically in their own folder
    and every checkpoint (path or URL) read with ``weights_only=True`` (see the module docstring)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):  # object stores: Lightning's way
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, functools.partial(_save, checkpoint), durable=True)
        except OSError as error:
            raise WriteFailed(error.errno, f"could not save checkpoint {path}: {error.strerror or error}. The previous "
                              f"file there (if any) is unchanged. Fix: free disk space or make {path.parent} writable, "
                              f"or write the run elsewhere with --trainer.default_root_dir DIR") from error
        remove_orphans(path.parent)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        # weights_only is always True here: Lightning's default for URLs (False) would unpickle code
        return read(fetch(str(path)) if is_url(path) else path, map_location)


def _save(checkpoint: dict, path: Path) -> None:
    with open(path, "wb") as f:  # opened here, a failure is an OSError (torch's own open raises RuntimeError)
        torch.save(checkpoint, f)  # a full disk: a RuntimeError, which write_atomically turns back into its OSError
