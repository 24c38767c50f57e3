"""Run folders: each fit claims its own ``version_<N>`` (atomically, for every rank of a DDP run), an evaluation
of a run's checkpoint writes into that run's folder, a run that fails before training leaves no empty folder,
an interrupted run says the command that resumes it, and a run resumed or evaluated from a checkpoint is
the run the checkpoint holds (its hyperparameters rebuild the model: a config that says otherwise is refused)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from plifnet import checkpoints
from plifnet.module import SpikingClassifier, data_identity


class FailedStart:
    """The run folders that a subcommand is about to create, so that :func:`main` removes them (those
    holding no checkpoint) when the run fails: validate, test and predict at any point, fit before its
    first training step. Removed after Lightning has finished with them (its loggers' last writes)."""

    def __init__(self):
        self.folders, self.claimed, self.subcommand, self.trainer, self.start_step = [], [], None, None, 0
        self.ckpt_path = None

    def watch(self, trainer, subcommand: str, ckpt_path: str | None = None) -> None:
        self.trainer, self.subcommand, self.ckpt_path = trainer, subcommand, ckpt_path
        self.folders = [
            Path(logger.log_dir)
            for logger in trainer.loggers
            if getattr(logger, "log_dir", None) and not Path(logger.log_dir).exists()
        ]
        # a resumed fit starts at its checkpoint's step: it has trained only once past it
        resumed = ckpt_path not in (None, "best", "hpc") and Path(ckpt_path).is_file()
        self.start_step = checkpoints.read(ckpt_path, mmap=True).get("global_step", 0) if resumed else 0

    def clean(self) -> None:
        trainer = self.trainer
        trained = trainer is not None and self.subcommand == "fit" and trainer.global_step > self.start_step
        if trained or (trainer is not None and not trainer.is_global_zero):
            return
        for folder in [*self.folders, *self.claimed]:  # claimed: made before the trainer existed
            if folder.is_dir() and not any(folder.rglob("*.ckpt")):
                shutil.rmtree(folder, ignore_errors=True)


VERSIONED_LOGGERS = ("CSVLogger", "TensorBoardLogger")  # those whose run folder is <save_dir>/<name>/version_<N>
CLAIMED = "PLIFNET_CLAIMED_VERSIONS"  # {logger folder: version} that rank 0 claimed, for the ranks it launches


def run_folder(ckpt_path) -> Path | None:
    """The run folder (``<save_dir>/<name>/version_<N>``) of a checkpoint in its ``checkpoints/`` folder, or None."""
    if ckpt_path in (None, "best", "hpc"):
        return None
    path = Path(ckpt_path)
    if path.parent.name == "checkpoints" and re.fullmatch(r"version_\d+", path.parent.parent.name):
        return path.parent.parent
    return None


def claim_versions(loggers, evaluation: tuple[Path, str] | None = None) -> list[Path]:
    """Give each CSV or TensorBoard logger config without a ``version`` the next free ``version_N`` folder, made
    here with ``os.mkdir``, which only one of two processes can make: Lightning picks the number by listing the
    folder, and two fits started together on one ``--trainer.default_root_dir`` took the same one (and mixed
    their metrics). Only the process of global rank 0 claims; the ranks it launches (DDP) take its numbers from
    the environment they inherit. ``evaluation`` ``(run folder, subcommand)``: validate, test or predict of a
    run's checkpoint write into ``<run>/<subcommand>/``, the same folder each time (the latest evaluation's
    files replace the previous one's), where the logger has that run.
    Returns the folders made, which :class:`FailedStart` removes if the run fails before training."""
    versioned = [
        log for log in loggers if log.class_path.endswith(VERSIONED_LOGGERS) and log.init_args.get("version") is None
    ]
    handed = json.loads(os.environ.get(CLAIMED, "{}"))  # rank 0's claims, inherited by the processes it launched
    if any(os.environ.get(name, "0") != "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")):
        for log in versioned:
            folder = str(Path(log.init_args.save_dir) / (log.init_args.get("name") or ""))
            log.init_args.version = handed.get(folder, log.init_args.version)
        return []
    claimed = []
    for log in versioned:
        folder = Path(log.init_args.save_dir) / (log.init_args.get("name") or "")
        # <run>/<subcommand>, reused: for the loggers of the run's save_dir (its CSV and TensorBoard folders)
        if (
            evaluation is not None
            and (folder / evaluation[0].name).is_dir()
            and Path(log.init_args.save_dir).resolve() == evaluation[0].parent.parent.resolve()
        ):
            run, subcommand = evaluation
            log.init_args.version = handed[str(folder)] = f"{run.name}/{subcommand}"
            if not (folder / log.init_args.version).is_dir():
                (folder / log.init_args.version).mkdir()
                claimed.append(folder / log.init_args.version)
            # the latest evaluation's metrics replace the previous one's (which CSVLogger would delete with a warning)
            (folder / log.init_args.version / "metrics.csv").unlink(missing_ok=True)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        taken = [int(path.name[8:]) for path in folder.glob("version_*") if path.name[8:].isdigit()]
        version = max(taken, default=-1) + 1
        while True:
            try:
                (folder / f"version_{version}").mkdir()
                break
            except FileExistsError:  # another process took it between the listing and now
                version += 1
        log.init_args.version = handed[str(folder)] = version
        claimed.append(folder / f"version_{version}")
    os.environ[CLAIMED] = json.dumps(handed)  # DDP's launcher starts the other ranks with this environment
    return claimed


def resume_command(argv: list[str], path: Path) -> str:
    """The command line that continues an interrupted run: the same arguments, ``--ckpt_path path``."""
    kept, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--ckpt_path="):
            skip = False
            continue
        skip = arg == "--ckpt_path"
        if not skip:
            kept.append(arg)
    return shlex.join([sys.executable, sys.argv[0], *kept, "--ckpt_path", str(path)])  # the interpreter that ran


def check_hyperparameters(config, argv, checkpoint: dict) -> None:
    """Before Lightning merges the checkpoint's model hyperparameters into the configuration: refuse
    names of code that neither plifnet nor this run's command line and config files give
    (:func:`plifnet.checkpoints.check_names`), and a ``--model.*`` value on the command line that
    differs from the checkpoint's, which the merge would silently replace: the checkpoint's
    hyperparameters rebuild the model it holds, so they win, and saying otherwise is refused."""
    hyper_parameters = checkpoint.get("hyper_parameters") or {}
    checkpoints.check_names(
        hyper_parameters,
        checkpoints.strings(config),
        source=f"checkpoint {config.ckpt_path}",
        how_to_allow="name it in this run's command line or config (e.g. --model.net.neuron VALUE) to allow it",
        model=SpikingClassifier,
    )
    ours, theirs, given = leaves(config.model), leaves(hyper_parameters), given_model_options(argv)
    for key in sorted(key for key in set(ours) & set(theirs) if under(key, given)):
        if ours[key] != theirs[key]:
            name = next(option for option in sorted(given) if under(key, {option}))
            said = f"--model.{key} {ours[key]!r}" if name == key else f"--model.{name} (model.{key} {ours[key]!r})"
            raise checkpoints.CheckpointError(
                f"{said} differs from the checkpoint's {theirs[key]!r}: with --ckpt_path the checkpoint's "
                f"hyperparameters rebuild its model, so --model.{name} would be ignored; leave it out, or start a "
                f"new run from the weights without --ckpt_path"
            )


def check_same_run(config, argv, checkpoint: dict, defaults, subcommand: str) -> None:
    """What a ``--config`` file sets (a value other than the recipe's and the signatures' defaults) must agree
    with the checkpoint, whose hyperparameters would silently replace it: ``fit --config fashion_mnist
    --ckpt_path last`` beside an MNIST run is refused, not resumed as Fashion-MNIST. fit also refuses a
    checkpoint of other data (:func:`plifnet.module.data_identity`: its dataset, split or frames)."""
    theirs, ours = leaves(checkpoint.get("hyper_parameters") or {}), leaves(config.model)
    defaults, given = leaves(defaults), given_model_options(argv)
    for key in sorted(key for key in set(theirs) & set(ours) if not under(key, given)):
        if ours[key] != defaults.get(key, MISSING) and ours[key] != theirs[key]:
            raise checkpoints.CheckpointError(
                f"checkpoint {config.ckpt_path} was trained with model.{key} {theirs[key]!r}, and a --config "
                f"file of this run sets {ours[key]!r}: the checkpoint's value would silently win. Give the configs "
                f"that run was trained with, or start a new run (without --ckpt_path, or with another "
                f"--trainer.default_root_dir)"
            )
    recorded, data = checkpoint.get("plifnet_data"), config.get("data")
    if subcommand != "fit" or not recorded or not getattr(data, "class_path", None):
        return
    cls = checkpoints.imported(data.class_path)  # the run's own config names it
    ours = data_identity(cls, dict(data.get("init_args") or {})) if cls is not None else {"class_path": data.class_path}
    differ = [key for key in recorded if key in ours and ours[key] != recorded[key]]
    if differ:
        key = differ[0]
        raise checkpoints.CheckpointError(
            f"checkpoint {config.ckpt_path} trained on other data ({key} {recorded[key]!r}; this run's is "
            f"{ours[key]!r}): fit resumes a run on its own data only; give that run's configs, or start a new run "
            f"(without --ckpt_path, or with another --trainer.default_root_dir)"
        )


def plain(value):
    """A configuration value as a checkpoint's hyperparameters hold it: namespaces as dicts, tuples as lists
    (``betas: (0.9, 0.999)`` parsed, ``[0.9, 0.999]`` saved)."""
    value = value.as_dict() if hasattr(value, "as_dict") else value  # a jsonargparse Namespace
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


MISSING = object()


def leaves(tree, prefix: str = "") -> dict:
    """A model configuration (or a checkpoint's hyperparameters) as ``{dotted key: value}`` of its leaves,
    ``init_args`` left out of the keys as the command line leaves it out (``net.options.tau``)."""
    tree = plain(tree)
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    found = {}
    for key, value in tree.items():
        found |= leaves(value, prefix if key == "init_args" else f"{prefix}.{key}".lstrip("."))
    return found


def under(key: str, options: set[str]) -> bool:
    """Whether the leaf ``key`` is one of ``options`` or lies below one (``net.options.tau`` below ``net``)."""
    return any(key == option or key.startswith(f"{option}.") for option in options)


def given_model_options(argv) -> set[str]:
    """The ``--model.NAME`` options on the command line, without ``init_args`` (``--model.net.options.tau``
    is ``net.options.tau``)."""
    return {
        arg.split("=")[0][len("--model.") :].replace(".init_args", "")
        for arg in map(str, argv)
        if arg.startswith("--model.")
    }
