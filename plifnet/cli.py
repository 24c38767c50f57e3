"""plifnet's command line: ``plifnet {fit,validate,test,predict} --config mnist`` (or, in a clone,
``python cli.py fit --config configs/mnist.yaml``), ``plifnet study ...`` and ``plifnet export ...``.

Training is Lightning's ``LightningCLI``. Every run reads the paper's recipe first
(``plifnet/configs/recipe.yaml``: neuron, optimizer, schedule, seed, trainer), then its ``--config``
files (a dataset config holds the data and the network), then the command line: any ``model.*``,
``data.*`` or ``trainer.*`` value can be overridden (``--model.net.neuron lif --model.net.options.tau 16``), a callback
added (``--trainer.callbacks+=CLASS``) or dropped (``--drop_callbacks+=NAME``), and ``--print_config``
shows the complete resolved configuration. ``--config NAME`` that is not a file is one of the configs
shipped with plifnet (``mnist``, ``trainer/smoke``, ``logger/wandb``), so an installed plifnet trains
without a clone.
"""

import errno
import json
import logging
import os
import re
import shlex
import shutil
import sys
import traceback
import warnings
from argparse import ArgumentError
from pathlib import Path

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

import plifnet
from plifnet import checkpoints, files
from plifnet.callbacks import Interrupted
from plifnet.contract import StateLeak
from plifnet.kernels.memory import keep_freed_memory_unless_opted_out
from plifnet.module import CLI_RECORDS_CONFIG, SpikingClassifier, data_identity

CONFIGS = Path(__file__).resolve().parent / "configs"  # shipped as package data
RECIPE = CONFIGS / "recipe.yaml"


class SaveConfig(SaveConfigCallback):
    """Lightning's ``config.yaml`` in the run folder, and the same resolved configuration in the config
    of a wandb run (under ``cli``), so that runs of a study can be filtered and compared by any value."""

    def save_config(self, trainer, pl_module, stage) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
                logger.experiment.config.update({"cli": config}, allow_val_change=True)


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


class PlifnetCLI(LightningCLI):
    """LightningCLI, with two conveniences and three safeguards:

    - ``--trainer.default_root_dir DIR`` puts every logger's relative ``save_dir`` (``runs``) under DIR,
      so that one option moves a whole run (logs, checkpoints, plots) into its own folder;
    - ``--ckpt_path last`` means the newest readable checkpoint (``last.ckpt`` at epoch ends,
      ``step*.ckpt`` in between, ``interrupted.ckpt``, a SLURM requeue's ``hpc_ckpt_<n>.ckpt`` in the
      root folder) of any earlier run under the loggers' folders; Lightning's own ``last`` looks only
      in the new run's empty folder;
    - every ``--ckpt_path`` (a file, ``last`` or an ``http(s)://`` URL, downloaded once) is checked
      before anything reads it, with :func:`plifnet.checkpoints.read`: a file that is truncated, not
      a Lightning checkpoint, or would run code is refused in one line that names it;
    - a bad configuration value is one line, and a run that fails before training leaves no empty
      run folder.
    """

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        config = self.config.get(self.config.get("subcommand") or "", None)
        if config is None:
            return
        logger = config.trainer.logger
        loggers = [
            log
            for log in (logger if isinstance(logger, list) else [logger])
            if getattr(log, "init_args", None) and log.init_args.get("save_dir")
        ]
        if config.trainer.get("default_root_dir"):
            for log in loggers:
                log.init_args.save_dir = str(Path(config.trainer.default_root_dir) / log.init_args.save_dir)
        argv = args if args is not None else sys.argv[1:]
        if config.get("drop_callbacks"):  # applied once: the run's config.yaml holds the list without them
            config.trainer.callbacks, config.drop_callbacks = (
                dropped(config.trainer.callbacks, config.drop_callbacks),
                [],
            )
        try:
            config.ckpt_path = self._checked(
                config.get("ckpt_path"), loggers, config.trainer.get("default_root_dir") or "."
            )
            # an evaluation of a run's checkpoint writes into that run's folder (<run>/test/), again each time
            run = run_folder(config.ckpt_path) if self.config.subcommand in ("validate", "test", "predict") else None
            self.failed_start.claimed = claim_versions(loggers, run and (run, self.config.subcommand))
            if run is not None:
                self.save_config_kwargs["overwrite"] = True  # the evaluation's own config.yaml, in its own folder
            if config.ckpt_path not in (None, "best", "hpc"):
                checkpoint = checkpoints.read(config.ckpt_path, mmap=True)  # read once for every check below
                self._check_hyperparameters(config, argv, checkpoint)
                self._check_same_run(config, argv, checkpoint)
                if self.config.subcommand == "fit" and not checkpoints.resumable(checkpoint):
                    raise checkpoints.CheckpointError(
                        f"checkpoint {config.ckpt_path} holds the weights only (the best epoch's, kept for test, predict "
                        f"and export): fit cannot resume from it; resume from last.ckpt or a step*.ckpt (--ckpt_path "
                        f"last takes the newest), or test it with plifnet test --ckpt_path {config.ckpt_path}"
                    )
        except checkpoints.CheckpointError as error:
            raise SystemExit(f"error: {error}") from None

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--drop_callbacks",
            type=list[str],
            default=[],
            help="callbacks of the trainer config to leave out, by class name or class path "
            "(--drop_callbacks+=ProgressBar; in a config: drop_callbacks: [SynapticOps])",
        )
        self.defaults = lambda: parser.get_defaults(
            skip_validation=True
        )  # the recipe's and the signatures' (the recipe gives no net.arch)

    @staticmethod
    def _check_hyperparameters(config, argv, checkpoint: dict) -> None:
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

    def _check_same_run(self, config, argv, checkpoint: dict) -> None:
        """What a ``--config`` file sets (a value other than the recipe's and the signatures' defaults) must agree
        with the checkpoint, whose hyperparameters would silently replace it: ``fit --config fashion_mnist
        --ckpt_path last`` beside an MNIST run is refused, not resumed as Fashion-MNIST. fit also refuses a
        checkpoint of other data (:func:`plifnet.module.data_identity`: its dataset, split or frames)."""
        theirs, ours = leaves(checkpoint.get("hyper_parameters") or {}), leaves(config.model)
        defaults, given = leaves(self.defaults().model), given_model_options(argv)
        for key in sorted(key for key in set(theirs) & set(ours) if not under(key, given)):
            if ours[key] != defaults.get(key, MISSING) and ours[key] != theirs[key]:
                raise checkpoints.CheckpointError(
                    f"checkpoint {config.ckpt_path} was trained with model.{key} {theirs[key]!r}, and a --config "
                    f"file of this run sets {ours[key]!r}: the checkpoint's value would silently win. Give the configs "
                    f"that run was trained with, or start a new run (without --ckpt_path, or with another "
                    f"--trainer.default_root_dir)"
                )
        recorded, data = checkpoint.get("plifnet_data"), config.get("data")
        if self.config.subcommand != "fit" or not recorded or not getattr(data, "class_path", None):
            return
        cls = checkpoints.imported(data.class_path)  # the run's own config names it
        ours = (
            data_identity(cls, dict(data.get("init_args") or {}))
            if cls is not None
            else {"class_path": data.class_path}
        )
        differ = [key for key in recorded if key in ours and ours[key] != recorded[key]]
        if differ:
            key = differ[0]
            raise checkpoints.CheckpointError(
                f"checkpoint {config.ckpt_path} trained on other data ({key} {recorded[key]!r}; this run's is "
                f"{ours[key]!r}): fit resumes a run on its own data only; give that run's configs, or start a new run "
                f"(without --ckpt_path, or with another --trainer.default_root_dir)"
            )

    def instantiate_classes(self) -> None:
        """A bad value in the config (``--data.batch_size 0``) is one line naming it, not the
        traceback of jsonargparse's attempt at every type of a Union with the reason 60 lines up."""
        recording = CLI_RECORDS_CONFIG.set(True)
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, MisconfigurationException) as error:
            chain = [error]
            while isinstance(chain[-1].__cause__ or chain[-1].__context__, Exception):
                chain.append(chain[-1].__cause__ or chain[-1].__context__)
            ours = next((cause for cause in chain if isinstance(cause, ImportError) and raised_by_plifnet(cause)), None)
            if ours is not None:  # a plug-in that failed to import, named by plifnet
                raise SystemExit(f"error: {ours}") from None
            kinds = (ValueError, TypeError, MisconfigurationException)
            innermost = next(cause for cause in reversed(chain) if isinstance(cause, kinds))
            raise SystemExit(f"error: bad configuration value: {innermost}") from None
        finally:
            CLI_RECORDS_CONFIG.reset(recording)

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The trainer, with :class:`plifnet.checkpoints.AtomicCheckpointIO` as its checkpoint writer
        (also inside ``AsyncCheckpointIO``) wherever a config's ``plugins`` list left Lightning's default."""
        trainer = super().instantiate_trainer(**kwargs)
        io = trainer.strategy.checkpoint_io
        if isinstance(io, AsyncCheckpointIO) and type(io.checkpoint_io) is TorchCheckpointIO:
            io.checkpoint_io = checkpoints.AtomicCheckpointIO()
        elif type(io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = checkpoints.AtomicCheckpointIO()
        return trainer

    def __init__(self, *args, failed_start: FailedStart | None = None, **kwargs):
        self.failed_start = failed_start or FailedStart()
        super().__init__(*args, **kwargs)

    # LightningCLI's hooks before each subcommand: note the run folders it will create
    def before_fit(self):
        self.failed_start.watch(self.trainer, "fit", self.config.fit.get("ckpt_path"))

    def before_validate(self):
        self.failed_start.watch(self.trainer, "validate", self.config.validate.get("ckpt_path"))

    def before_test(self):
        self.failed_start.watch(self.trainer, "test", self.config.test.get("ckpt_path"))

    def before_predict(self):
        self.failed_start.watch(self.trainer, "predict", self.config.predict.get("ckpt_path"))

    def after_validate(self):
        self._say_where("validate")

    def after_test(self):
        self._say_where("test")

    def _say_where(self, subcommand: str) -> None:
        """The folder an evaluation wrote (its metrics, energy.csv): rank 0's first logger's."""
        folder = getattr(self.trainer.loggers[0], "log_dir", None) if self.trainer.loggers else None
        if self.trainer.is_global_zero and folder:
            print(f"{subcommand} results: {folder}", file=sys.stderr, flush=True)

    @staticmethod
    def _checked(ckpt_path: str | None, loggers, root: str) -> str | None:
        if ckpt_path in (None, "best", "hpc"):  # Lightning's own names of a checkpoint it tracks
            return ckpt_path
        if ckpt_path == "last":
            folders = sorted({Path(log.init_args.save_dir) / (log.init_args.get("name") or "") for log in loggers})
            path, skipped = checkpoints.newest(folders, root)
            for reason in skipped:
                print(f"skipping an unreadable checkpoint: {reason}", file=sys.stderr)
            if path is None:
                raise checkpoints.CheckpointError(
                    f"--ckpt_path last: no readable checkpoint in {', '.join(f'{f}/*/checkpoints/' for f in folders) or 'any logger folder'}; "
                    f"leave out --ckpt_path to start a new run, or pass a checkpoint's path"
                )
            print(f"resuming from {path}", file=sys.stderr)
            return str(path)
        path = checkpoints.fetch(ckpt_path) if checkpoints.is_url(ckpt_path) else Path(ckpt_path)
        checkpoints.read(path, mmap=True)
        return str(path)


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


def weights_mismatch(message: str) -> str:
    """torch's ``load_state_dict`` refusal (a line per kind, listing every key) in a few words: the first tensor
    of another shape, else how many keys are missing and unexpected."""
    lines = [line.strip() for line in message.splitlines()[1:]]
    sizes = [line.split(":")[0] for line in lines if line.startswith("size mismatch for")]
    if sizes:
        return sizes[0]
    counts = {
        kind: line.count('"') // 2 for line in lines for kind in ("Missing", "Unexpected") if line.startswith(kind)
    }
    return ", ".join(f"{count} {kind.lower()} keys" for kind, count in counts.items()) or lines[0]


def dropped(callbacks, names: list[str]) -> list:
    """The trainer's ``callbacks`` config without those named (by class name or class path) in ``names``;
    a name that matches none is refused with the names that would."""
    callbacks = list(callbacks or [])
    paths = [getattr(callback, "class_path", "") for callback in callbacks]
    for name in names:
        if not any(name in (path, path.rsplit(".", 1)[-1]) for path in paths):
            known = ", ".join(sorted({path.rsplit(".", 1)[-1] for path in paths})) or "none"
            raise SystemExit(
                f"error: --drop_callbacks {name}: no such callback in the trainer config (its callbacks: "
                f"{known}); give a class name or class path from that list"
            )
    return [
        callback
        for callback, path in zip(callbacks, paths)
        if not any(name in (path, path.rsplit(".", 1)[-1]) for name in names)
    ]


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


def quiet_console() -> None:
    """Silence what a user can do nothing about: deprecation notices raised inside Lightning and
    torchdata by their own calls, and Lightning's advertisement for its cloud logger."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")
    )


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


def raised_by_plifnet(error: BaseException) -> bool:
    """Whether plifnet's own code raised ``error``: its messages are written for the user (the input and
    the fix), so the traceback would only bury them; an error from deeper down keeps its traceback."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(Path(plifnet.__file__).resolve().parent)


def argument_error(error: ArgumentError, subcommand: str) -> str:
    """jsonargparse's refusal of an option (after a usage screen, every type of a Union it tried, nested)
    as one line: the option, the innermost reason, and where the accepted options are listed."""
    message = str(error).strip()
    key = re.search(r'Parser key "([^"]+)"', message)
    problem = re.search(r"Problem with given class_path '([^']+)':\s*\n\s*(.+)", message)
    if problem and re.search(r"No module named|has no attribute|[Ii]mport", problem[2]):
        reason = f"cannot import {problem[1]} ({problem[2].strip()}); give the class path of an importable class"
    elif problem:
        reason = f"{problem[1]}: {problem[2].strip()}"
    else:
        details = [line.strip(" -") for line in message.splitlines()[1:] if line.strip(" -")]
        reason = details[0] if key and details else message.splitlines()[0]
    where = f"--{key[1]}: " if key else ""
    return f"error: {where}{reason.rstrip('.')}. Accepted options: plifnet {subcommand or 'fit'} --help"


# every subcommand reads the recipe before its --config files; a bad option raises (main says it in one line)
PARSER_KWARGS = {
    "exit_on_error": False,
    **{name: {"exit_on_error": False, "default_config_files": [str(RECIPE)]} for name in LightningCLI.subcommands()},
}


def shipped(argv: list[str]) -> list[str]:
    """``argv`` with each ``--config NAME`` that is not a file as the config of that name shipped with
    plifnet (``mnist``, ``configs/mnist.yaml``, ``trainer/smoke``)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            argv[i + 1] = shipped_config(argv[i + 1])
        elif arg.startswith("--config="):
            argv[i] = "--config=" + shipped_config(arg[len("--config=") :])
    return argv


def shipped_config(name: str) -> str:
    if Path(name).exists() or name.lstrip().startswith(("{", "[")) or "\n" in name:  # a file, or YAML itself
        return name
    relative = name.removeprefix("configs/")
    for candidate in (CONFIGS / relative, CONFIGS / f"{relative}.yaml"):
        if candidate.is_file():
            return str(candidate)
    return name  # LightningCLI says that it does not exist


COMMANDS = """usage: plifnet COMMAND [OPTIONS]      plifnet COMMAND --help lists a command's options

commands:
  fit        train a network: plifnet fit --config mnist --data.root DIR
  validate   evaluate a checkpoint on the validation split: plifnet validate --config mnist --ckpt_path CKPT
  test       evaluate a checkpoint on the test set: plifnet test --config mnist --ckpt_path CKPT
  predict    write predictions.csv for a checkpoint: plifnet predict --config mnist --ckpt_path CKPT
  study      train a grid of settings and gather their results: plifnet study --config mnist --out DIR
  export     write a checkpoint's network as a NIR graph: plifnet export --ckpt_path CKPT --out net.nir

and python -m plifnet.neurobench --ckpt_path CKPT --config mnist: NeuroBench's metrics of a checkpoint."""


def run(argv: list[str] | None = None) -> None:
    """The ``plifnet`` command: ``study`` and ``export`` are plifnet's, everything else Lightning's; with no
    command, or ``--help``, the list of commands."""
    given, argv = argv, sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in ([], ["-h"], ["--help"]):
        print(COMMANDS)
        raise SystemExit(0 if argv else 2)
    if argv[:1] == ["study"]:
        from plifnet import study

        study.main(argv[1:])
    elif argv[:1] == ["export"]:
        from plifnet import export

        export.main(argv[1:])
    else:
        main(given)


def main(args=None) -> LightningCLI:
    if args is None:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv[1:] = argv = shipped(sys.argv[1:])
    else:
        args = argv = shipped([str(arg) for arg in args])
    keep_freed_memory_unless_opted_out()  # CPU training: no page faults for every step's activations
    quiet_console()
    failed_start = FailedStart()
    try:
        try:
            return PlifnetCLI(
                SpikingClassifier,
                LightningDataModule,
                subclass_mode_data=True,
                save_config_callback=SaveConfig,
                auto_configure_optimizers=False,  # the model's --model.optimizer / --model.lr_scheduler: one spelling
                args=args,
                parser_kwargs=PARSER_KWARGS,
                failed_start=failed_start,
            )
        except BaseException:  # then the except clauses below say what went wrong
            failed_start.clean()
            raise
    except ArgumentError as error:
        raise SystemExit(
            argument_error(error, next((a for a in argv if a in LightningCLI.subcommands()), ""))
        ) from None
    except (StateLeak, FloatingPointError) as error:  # a network that remembers; a run that diverged
        raise SystemExit(f"error: {error}") from None
    except RuntimeError as error:  # a checkpoint's weights for another network than the run's config builds
        if not str(error).startswith("Error(s) in loading state_dict"):
            raise
        raise SystemExit(
            f"error: the weights of checkpoint {failed_start.ckpt_path} do not fit this run's network "
            f"({weights_mismatch(str(error))}): give the configs that it was trained with"
        ) from None
    except (ValueError, TypeError, OSError, ImportError) as error:  # ImportError: a broken plug-in, named by plifnet
        if isinstance(error, files.WriteFailed) or getattr(error, "errno", None) in (
            errno.ENOSPC,
            errno.EDQUOT,
            errno.EROFS,
        ):
            raise SystemExit(files.write_failure(error)) from None  # a full disk, a read-only folder
        if raised_by_plifnet(error):  # plifnet's own refusal of an input names it and the fix
            raise SystemExit(f"error: {error}") from None
        raise
    except Interrupted as stop:
        print(f"{stop}; resume with: {resume_command(argv, stop.path)}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None


if __name__ == "__main__":
    main()
