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
import logging
import re
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, Trainer
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback, instantiate_module
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from plifnet import CONFIGS, checkpoints, files
from plifnet.callbacks import Interrupted
from plifnet.errors import PluginError, UserError
from plifnet.kernels.memory import keep_freed_memory_unless_opted_out
from plifnet.module import CLI_RECORDS_CONFIG, NoInputShape, SpikingClassifier
from plifnet.runs import (
    FailedStart,
    check_hyperparameters,
    check_same_run,
    claim_versions,
    resume_command,
    run_folder,
)

RECIPE = CONFIGS / "recipe.yaml"


class SaveConfig(SaveConfigCallback):
    """Lightning's ``config.yaml`` in the run folder, and the same resolved configuration in the config
    of a wandb run (under ``cli``), so that runs of a study can be filtered and compared by any value."""

    def save_config(self, trainer, pl_module, stage) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
                logger.experiment.config.update({"cli": config}, allow_val_change=True)


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
                check_hyperparameters(config, argv, checkpoint)
                check_same_run(config, argv, checkpoint, self.defaults().model, self.config.subcommand)
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
        if self.reads_a_run:  # a run's config.yaml holds fit's own options too: read, not used
            parser.add_argument("--ckpt_path", default=None)
            parser.add_argument("--weights_only", default=None)
        # the recipe's and the signatures' defaults (unvalidated: the recipe's network has no arch)
        self.defaults = lambda: parser.get_defaults(skip_validation=True)

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
            ours = next((cause for cause in chain if isinstance(cause, PluginError)), None)
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
        self.reads_a_run = not kwargs.get("run", True)  # run=False: a run's configs read for its data (run_data)
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


def quiet_console() -> None:
    """Silence what a user can do nothing about: deprecation notices raised inside Lightning and
    torchdata by their own calls, and Lightning's advertisement for its cloud logger."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: not str(record.msg).startswith("💡 Tip")
    )


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
    """``argv`` with each ``--config NAME`` that is not a file (a folder ``ecg`` beside it included) as the config of that name shipped with
    plifnet (``mnist``, ``configs/mnist.yaml``, ``trainer/smoke``)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            argv[i + 1] = shipped_config(argv[i + 1])
        elif arg.startswith("--config="):
            argv[i] = "--config=" + shipped_config(arg[len("--config=") :])
    return argv


def shipped_config(name: str) -> str:
    if Path(name).is_file() or name.lstrip().startswith(("{", "[")) or "\n" in name:  # a file, or YAML itself
        return name
    relative = name.removeprefix("configs/")
    for candidate in (CONFIGS / relative, CONFIGS / f"{relative}.yaml"):
        if candidate.is_file():
            return str(candidate)
    return name  # LightningCLI says that it does not exist


def load_model(
    ckpt_path: str, configs: list[str] | None = None, allow_class_paths=(), options: list[str] = ()
) -> tuple[SpikingClassifier, LightningDataModule | None]:
    """The trained model of a checkpoint, in eval mode, and the data module of ``configs`` (None without), for
    ``plifnet export`` and NeuroBench.

    The checkpoint decides the network: it is rebuilt from the hyperparameters the checkpoint recorded (its
    names of code checked first, :func:`plifnet.checkpoints.check_names`), never from a config, so that a
    run trained at T = 2 is exported at T = 2 whatever the config says. ``configs`` (``plifnet fit``'s
    ``--config`` files or names) and ``options`` (more of its arguments, ``--data.root DIR``) give the data
    module, and with it the input shape of a network that takes it from the data (``layers=...``), and the
    class paths they name are allowed, as for ``plifnet test``; a ``--model.*`` option among them would
    change nothing and is refused."""
    given = sorted({arg.split("=")[0] for arg in map(str, options) if arg.startswith("--model.")})
    if given:
        raise UserError(
            f"{given[0]}: the checkpoint's hyperparameters rebuild the network it was trained with, so a "
            f"--model option would not be applied; leave it out"
        )
    ckpt_path = str(checkpoints.fetch(ckpt_path)) if checkpoints.is_url(ckpt_path) else ckpt_path
    data, named = run_data(configs, options) if configs else (None, set())
    try:  # what the configs name is this run's to allow, as for plifnet test
        model = SpikingClassifier.load_from_checkpoint(
            ckpt_path, map_location="cpu", allow_class_paths=[*allow_class_paths, *named]
        )
    except NoInputShape:  # a network built for the data's input: build it so, then put the weights back
        if data is None:
            raise UserError(
                "the checkpoint's network takes its input shape from the data module, which a checkpoint "
                "does not hold: pass the run's config too, --config <run folder>/config.yaml (or the "
                "configs it was trained with)"
            ) from None
        checkpoint = checkpoints.read(ckpt_path)
        hyper_parameters = {k: v for k, v in checkpoint["hyper_parameters"].items() if k != "_instantiator"}
        model = instantiate_module(SpikingClassifier, hyper_parameters)  # names checked by load_from_checkpoint
        channels, height, _ = data.input_shape
        model.net.build(channels, height)
        model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), data


def run_data(configs: list[str], options: list[str]) -> tuple[LightningDataModule, set[str]]:
    """The data module that ``plifnet fit --config CONFIGS OPTIONS`` would train on, read by the same
    :class:`PlifnetCLI` (after the recipe; a run's ``config.yaml``, with fit's own options, reads too), and every
    string the configs give."""
    args = [arg for config in configs for arg in ("--config", shipped_config(config))] + list(options)
    try:
        with warnings.catch_warnings():  # the arguments are given: the process's own (plifnet export's) are not fit's
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            cli = PlifnetCLI(
                SpikingClassifier,
                LightningDataModule,
                subclass_mode_data=True,
                run=False,
                args=args,
                save_config_callback=None,
                auto_configure_optimizers=False,
                parser_kwargs={"exit_on_error": False, "default_config_files": [str(RECIPE)]},
            )
    except ArgumentError as error:
        raise UserError(f"--config {' '.join(map(str, configs))}: {str(error).strip().splitlines()[0]}") from None
    return cli.datamodule, checkpoints.strings(cli.config)


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
    except (UserError, FloatingPointError) as error:  # plifnet's refusal of an input (it names the fix); a divergence
        raise SystemExit(f"error: {error}") from None
    except RuntimeError as error:  # a checkpoint's weights for another network than the run's config builds
        if not str(error).startswith("Error(s) in loading state_dict"):
            raise
        raise SystemExit(
            f"error: the weights of checkpoint {failed_start.ckpt_path} do not fit this run's network "
            f"({weights_mismatch(str(error))}): give the configs that it was trained with"
        ) from None
    except OSError as error:  # a full disk, a read-only folder: said in one line; anything else keeps its traceback
        if isinstance(error, files.WriteFailed) or error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise SystemExit(files.write_failure(error)) from None
        raise
    except Interrupted as stop:
        print(f"{stop}; resume with: {resume_command(argv, stop.path)}", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None


if __name__ == "__main__":
    main()
