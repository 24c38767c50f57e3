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
* :func:`check_names` refuses a checkpoint whose hyperparameters name code (under any key, at any
  depth: wherever the type jsonargparse parses a value with could take a class or a callable) that is
  not built in, not a registered or installed plug-in and not given by the user in this run: a file
  of plain tensors and strings must not make plifnet import a module or call a function it names
  (``net: spymod.EvilNet``, ``lr_scheduler.init_args.lr_lambda: os.umask``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import functools
import hashlib
import importlib
import pickle
import types
import typing
import zipfile
from importlib.metadata import version
from pathlib import Path, PurePath
from typing import Any, Literal, Union
from urllib.parse import urlparse

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from plifnet.errors import UserError
from plifnet.files import WriteFailed, remove_orphans, write_atomically

INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"  # what LightningCLI records to rebuild the model with
PLUGIN_GROUPS = ("plifnet.neurons", "plifnet.surrogates", "plifnet.adapters")


class CheckpointError(UserError):
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
            raise CheckpointError(
                f"could not download checkpoint {url}: {error}. Check the URL and the network, "
                f"or download it yourself and pass the file's path"
            ) from error
    return path


def read(path, map_location="cpu", mmap: bool = False) -> dict:
    """Load a Lightning checkpoint with ``weights_only=True``, or raise :class:`CheckpointError`.

    ``mmap=True`` maps the tensors instead of reading them: a cheap check that a file is usable.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder; pass the path of a .ckpt file in it (e.g. "
            f"{path}/checkpoints/last.ckpt), or --ckpt_path last for the newest under the run folders"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the path of a .ckpt file, or --ckpt_path last")
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {path} is truncated or is not a checkpoint (no zip directory at its end); "
            f"pass another one, e.g. an epoch*.ckpt or step*.ckpt in the same folder"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        reason = str(error).strip().splitlines()[0]
        raise CheckpointError(
            f"checkpoint {path} holds Python objects that would run code when loaded, and plifnet "
            f"reads checkpoints with weights_only=True ({reason}); use a checkpoint written by "
            f"plifnet fit or Trainer.save_checkpoint"
        ) from None
    except RuntimeError as error:
        raise CheckpointError(
            f"checkpoint {path} is a zip archive but not a PyTorch checkpoint "
            f"({str(error).strip().splitlines()[0][:200]}); pass a .ckpt written by plifnet fit"
        ) from None
    if (
        not isinstance(checkpoint, dict)
        or "pytorch-lightning_version" not in checkpoint
        or "state_dict" not in checkpoint
    ):
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"checkpoint {path} is a PyTorch file but not a Lightning checkpoint (it holds {keys}, "
            f"no 'pytorch-lightning_version' and 'state_dict'); pass a .ckpt written by plifnet fit "
            f"or Trainer.save_checkpoint"
        )
    return checkpoint


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

    from plifnet.factory import NEURONS
    from plifnet.surrogates import SURROGATES

    names = set(NEURONS) | set(SURROGATES) | torch_optim_names() | {INSTANTIATOR}
    for group in PLUGIN_GROUPS:
        for ep in entry_points(group=group):
            names |= {ep.name, ep.value.replace(":", ".")}
    return names


def check_names(
    hyper_parameters: dict, allowed, how_to_allow: str, source="the checkpoint", model: type | None = None
) -> None:
    """Raise :class:`CheckpointError` for the first string of ``hyper_parameters`` that jsonargparse could
    resolve to code (import it, then build or call it) and that is neither :func:`known_names`, a
    class or function of plifnet's, nor in ``allowed`` (the strings this run's user gave); before anything imports it.

    Which strings could be code is read from the types that jsonargparse parses the values with, the
    signature of ``model`` (the LightningModule) and, below a ``class_path`` that is allowed, of that
    class: a string where the type is plain data (``str``, numbers, ``Literal``, paths, and lists,
    tuples, dicts and unions of them) is data; a string anywhere else (a class or callable type, a
    union holding one, ``Any``, an unannotated or unknown key, ``**kwargs``, any nesting below them) is
    a name, whatever its key: ``net: "pkg.Net"``, ``optimizer: "pkg.f"``, a ``class_path``,
    ``lr_scheduler.init_args.lr_lambda: "os.umask"``. ``how_to_allow`` completes the message."""
    refuse_old_layout(hyper_parameters, source)
    ok = known_names() | set(allowed)
    hints = _hints(model) if model is not None else {}
    for key, value in hyper_parameters.items():
        if key == "_class_path":  # LightningCLI's model of a subclass: its arguments follow its own signature
            _check(value, Any, key, ok, source, how_to_allow)
            hints = _hints(imported(value))
    for key, value in hyper_parameters.items():
        if key != "_class_path":
            _check(value, hints.get(key, Any), key, ok, source, how_to_allow)


def _check(value, annotation, key: str, ok: set[str], source: str, how_to_allow: str) -> None:
    if _plain(annotation):
        return
    if isinstance(value, str):
        if value not in ok and not _defined_in_plifnet(value):
            raise CheckpointError(
                f"{source} names code this run did not: hyperparameter {key} = {value!r} is neither "
                f"built in, a registered plug-in, an installed package's entry point, nor given in "
                f"this run, so plifnet does not import it; {how_to_allow}"
            )
    elif isinstance(value, dict):
        class_path = value.get("class_path")
        if class_path is not None:
            _check(class_path, Any, f"{key}.class_path", ok, source, how_to_allow)
        hints = _hints(imported(class_path)) if isinstance(class_path, str) else {}
        fields = _hints(_dataclass(annotation)) if class_path is None and _dataclass(annotation) else None
        for name, item in value.items():
            if name in ("init_args", "dict_kwargs") and isinstance(item, dict) and class_path is not None:
                for argument, given in item.items():
                    _check(given, hints.get(argument, Any), f"{key}.{name}.{argument}", ok, source, how_to_allow)
            elif fields is not None:  # a dataclass's fields (NeuronOptions), typed by the dataclass
                _check(item, fields.get(name, Any), f"{key}.{name}", ok, source, how_to_allow)
            elif name != "class_path":
                _check(item, _item_type(annotation, 1), f"{key}.{name}", ok, source, how_to_allow)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check(item, _item_type(annotation, 0), f"{key}.{index}", ok, source, how_to_allow)


PLAIN_TYPES = (str, bytes, int, float, complex, bool, type(None), PurePath, enum.Enum)


def _plain(annotation) -> bool:
    """Whether jsonargparse parses a value of this type as data alone (never importing a name in it)."""
    if isinstance(annotation, type) and issubclass(annotation, PLAIN_TYPES):
        return True
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return True
    if (
        origin
        in (
            Union,
            types.UnionType,
            list,
            tuple,
            dict,
            set,
            frozenset,
            collections.abc.Sequence,
            collections.abc.Mapping,
        )
        and arguments
    ):
        return all(_plain(argument) for argument in arguments if argument is not Ellipsis)
    return False  # a class, a callable, Any, a bare container, a type it cannot read


def _dataclass(annotation) -> type | None:
    """The dataclass that ``annotation`` is, or holds in a union with None (``NeuronOptions | None``)."""
    members = (
        typing.get_args(annotation) if typing.get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    )
    found = [m for m in members if m is not type(None)]
    return found[0] if len(found) == 1 and dataclasses.is_dataclass(found[0]) else None


def _item_type(annotation, position: int):
    """The type of a container's items (``position`` 1: a dict's values); ``Any`` where it is not one."""
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) in (list, tuple, set, frozenset, collections.abc.Sequence) and arguments:
        return arguments[0]
    if typing.get_origin(annotation) in (dict, collections.abc.Mapping) and len(arguments) == 2:
        return arguments[position]
    return Any


def _defined_in_plifnet(name: str) -> bool:
    """Whether ``name`` is a class, function or module that plifnet defines (``plifnet.models.SpikingNet``),
    not merely reachable from it (``plifnet.cli.shutil.rmtree``, which jsonargparse would resolve too)."""
    if not name.startswith("plifnet."):
        return False
    found = imported(name)
    return getattr(found, "__module__", getattr(found, "__name__", "")).split(".")[0] == "plifnet"


def imported(class_path: str):
    """The class or function at ``class_path`` (a module's attribute, or one of its classes' own, as
    ``plifnet.models.SpikingNet.paper``), or None where it cannot be imported. Call it only for a name this
    run gave or :func:`check_names` allowed (jsonargparse imports it next anyway)."""
    parts = class_path.split(".")
    for split in range(len(parts) - 1, 0, -1):  # the longest module path, then attributes down from it
        try:
            found = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            return functools.reduce(getattr, parts[split:], found)
        except AttributeError:
            return None
    return None


OLD_LAYOUT = {"arch", "neuron", "tau", "variant", "backend", "memory", "lr", "cosine_t_max"}  # plifnet 0.1's model keys


def refuse_old_layout(hyper_parameters: dict, source) -> None:
    """Refuse a checkpoint of plifnet 0.1, whose model built the paper's network from its own options
    (``model.arch``, ``model.neuron``, ``model.tau``, ...): this plifnet takes the network as ``model.net``."""
    old = sorted(OLD_LAYOUT & set(hyper_parameters))
    if old:
        raise CheckpointError(
            f"{source} was written by plifnet 0.1.0 (its model options {', '.join(old)}); this plifnet "
            f"{version('plifnet')} takes the network as model.net: evaluate it with plifnet 0.1.0, or train it again"
        )


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    """The types that jsonargparse parses a class's (or a function's) arguments with, by name: its own schema,
    which follows ``**kwargs`` to where they go; ``{}`` (every argument a possible name) where it has none."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    try:
        if isinstance(cls, type):
            parser.add_class_arguments(cls, "x", fail_untyped=False, sub_configs=True)
        else:
            parser.add_function_arguments(cls, "x", fail_untyped=False)
    except Exception:  # a class jsonargparse cannot read: then it cannot type its arguments either
        return {}
    hints = {
        action.dest[2:]: getattr(action, "_typehint", None) or action.type or Any
        for action in parser._actions
        if action.dest.startswith("x.") and "." not in action.dest[2:]
    }
    # a dataclass argument is a group of its fields' actions (x.options.tau): typed by the dataclass itself
    groups = {action.dest[2:].split(".")[0] for action in parser._actions if action.dest.count(".") > 1}
    try:
        signature = typing.get_type_hints(cls.__init__ if isinstance(cls, type) else cls)
    except Exception:  # annotations it cannot resolve: those arguments stay untyped (possible names)
        signature = {}
    return hints | {name: signature[name] for name in groups | set(hints) if _dataclass(signature.get(name))}


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
    found = [
        path
        for folder in folders
        for path in Path(folder).glob("*/checkpoints/*.ckpt")
        if not path.name.startswith(".")
    ]  # hidden: a temporary file of a write in progress or killed
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
            raise WriteFailed(
                error.errno,
                f"could not save checkpoint {path}: {error.strerror or error}. The previous "
                f"file there (if any) is unchanged. Fix: free disk space or make {path.parent} writable, "
                f"or write the run elsewhere with --trainer.default_root_dir DIR",
            ) from error
        remove_orphans(path.parent)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        # weights_only is always True here: Lightning's default for URLs (False) would unpickle code
        return read(fetch(str(path)) if is_url(path) else path, map_location)


def _save(checkpoint: dict, path: Path) -> None:
    with open(path, "wb") as f:  # opened here, a failure is an OSError (torch's own open raises RuntimeError)
        torch.save(checkpoint, f)  # a full disk: a RuntimeError, which write_atomically turns back into its OSError
