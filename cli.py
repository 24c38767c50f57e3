"""plifnet's command line: ``python cli.py {fit,validate,test,predict} --config configs/<dataset>.yaml``.

Everything is Lightning's ``LightningCLI``: any ``model.*``, ``data.*`` or ``trainer.*`` value of a
config can be overridden on the command line (``--model.neuron lif --model.tau 16``), and
``--print_config`` shows the complete resolved configuration.
"""

import sys
import zipfile
from pathlib import Path

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from plifnet.kernels import keep_freed_cpu_memory
from plifnet.module import SpikingClassifier


def _ckpt_paths(args: list[str]):
    for i, arg in enumerate(args):
        if arg == "--ckpt_path" and i + 1 < len(args):
            yield args[i + 1]
        elif arg.startswith("--ckpt_path="):
            yield arg.split("=", 1)[1]


def check_checkpoint(args: list[str]) -> None:
    """Refuse a truncated or foreign ``--ckpt_path`` file with its name, before Lightning's loader
    fails on it with a bare I/O error. (Checkpoints are zip archives, ending in a directory.)"""
    for path in _ckpt_paths(args):
        if Path(path).is_file() and not zipfile.is_zipfile(path):
            raise SystemExit(
                f"error: checkpoint {path} is truncated or is not a checkpoint (no zip directory at its end); "
                f"pass another one, e.g. an epoch*.ckpt in the same folder"
            )


class PlifnetCLI(LightningCLI):
    """LightningCLI, with two conveniences:

    - ``--trainer.default_root_dir DIR`` puts every logger's relative ``save_dir`` (``runs``) under DIR,
      so that one option moves a whole run (logs, checkpoints, plots) into its own folder;
    - ``--ckpt_path last`` means the newest checkpoint (``last.ckpt`` at epoch ends, ``step*.ckpt`` in
      between) of any earlier run under the loggers' folders; Lightning's own ``last`` looks only in
      the new run's empty folder.
    """

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.config.get("subcommand") or "", None)
        if config is None:
            return
        logger = config.trainer.logger
        loggers = [log for log in (logger if isinstance(logger, list) else [logger])
                   if getattr(log, "init_args", None) and log.init_args.get("save_dir")]
        if config.trainer.get("default_root_dir"):
            for log in loggers:
                log.init_args.save_dir = str(Path(config.trainer.default_root_dir) / log.init_args.save_dir)
        if config.get("ckpt_path") != "last":
            return
        folders = {Path(log.init_args.save_dir) / (log.init_args.get("name") or "") for log in loggers}
        found = [path for folder in folders for path in folder.glob("*/checkpoints/*.ckpt")]
        if found:
            config.ckpt_path = str(max(found, key=lambda path: path.stat().st_mtime))
            print(f"resuming from {config.ckpt_path}", file=sys.stderr)


def main(args=None) -> LightningCLI:
    check_checkpoint(list(sys.argv[1:] if args is None else args))
    keep_freed_cpu_memory()  # CPU training: no page faults for every step's activations
    return PlifnetCLI(
        SpikingClassifier,
        LightningDataModule,
        subclass_mode_data=True,
        args=args,
    )


if __name__ == "__main__":
    main()
