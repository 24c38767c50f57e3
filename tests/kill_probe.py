"""Faults injected into a real ``cli.py`` process by the fault tests (added with ``--trainer.callbacks+=``)."""

import os
import signal
import stat
from pathlib import Path

import lightning as L


class KillAtStep(L.Callback):
    """SIGKILL this very process when training step $PLIFNET_KILL_AT starts."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == int(os.environ["PLIFNET_KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)


class ReadOnlyCheckpoints(L.Callback):
    """Make the checkpoint folder and its files read-only when epoch $PLIFNET_READ_ONLY_AT starts."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == int(os.environ["PLIFNET_READ_ONLY_AT"]):
            folder = Path(trainer.checkpoint_callback.dirpath)
            for path in [*folder.iterdir(), folder]:
                path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


class RequeueAtStep(L.Callback):
    """When step $PLIFNET_KILL_AT is reached (at the end of the batch before it), send this process
    SLURM's requeue signal (SIGUSR1), then, as SLURM ends a requeued job, SIGKILL it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == int(os.environ["PLIFNET_KILL_AT"]):
            os.kill(os.getpid(), signal.SIGUSR1)  # Python runs the handler here, before the next line
            os.kill(os.getpid(), signal.SIGKILL)
