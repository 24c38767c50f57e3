"""Faults injected into a real ``cli.py`` process by the fault tests (added with ``--trainer.callbacks+=``)."""

import os
import signal
import stat
import time
from pathlib import Path

from lightning.pytorch import Callback


class KillAtStep(Callback):
    """SIGKILL this very process when training step $PLIFNET_KILL_AT starts."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == int(os.environ["PLIFNET_KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)


class ReadOnlyCheckpoints(Callback):
    """Make the checkpoint folder and its files read-only when epoch $PLIFNET_READ_ONLY_AT starts."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == int(os.environ["PLIFNET_READ_ONLY_AT"]):
            folder = Path(trainer.checkpoint_callback.dirpath)
            for path in [*folder.iterdir(), folder]:
                path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


class FullDiskAt(Callback):
    """From epoch $PLIFNET_FULL_AT on, the next write of the run file $PLIFNET_FULL_FILE (relative to the run
    folder: ``checkpoints/last.ckpt``, ``tau.csv``) goes to /dev/full, where every write fails with the
    kernel's own ENOSPC, as on a full disk: its temporary name is made a link to /dev/full."""

    def on_train_epoch_start(self, trainer, pl_module):
        from plifnet.files import temporary_name

        if trainer.current_epoch == int(os.environ["PLIFNET_FULL_AT"]):
            path = Path(trainer.log_dir) / os.environ["PLIFNET_FULL_FILE"]
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary_name(path).symlink_to("/dev/full")


class RequeueAtStep(Callback):
    """When step $PLIFNET_KILL_AT is reached (at the end of the batch before it), send this process
    SLURM's requeue signal (SIGUSR1), then, as SLURM ends a requeued job, SIGKILL it."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == int(os.environ["PLIFNET_KILL_AT"]):
            os.kill(os.getpid(), signal.SIGUSR1)  # Python runs the handler here, before the next line
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAt(Callback):
    """Send signal $PLIFNET_SIGNAL (SIGINT, SIGTERM) to this process's whole group, as a terminal's
    Ctrl-C or a cluster's preemption does: when training step N starts ($PLIFNET_SIGNAL_AT = ``train:N``),
    or when the first validation batch of epoch N starts (``val:N``)."""

    def __init__(self):
        stage, number = os.environ["PLIFNET_SIGNAL_AT"].split(":")
        self.stage, self.number, self.sent = stage, int(number), False

    def _send(self):
        if not self.sent:
            self.sent = True
            os.killpg(os.getpgid(0), signal.Signals[os.environ["PLIFNET_SIGNAL"]])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.stage == "train" and trainer.global_step == self.number:
            self._send()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.stage == "val" and not trainer.sanity_checking and trainer.current_epoch == self.number:
            self._send()


class RequeueFromParentAtStep(Callback):
    """When step $PLIFNET_REQUEUE_AT is reached, send SIGUSR1 to the parent process (``ablation.py``, the
    task that SLURM signals before a time limit), wait until it comes back forwarded and Lightning's
    requeue handler has run, then SIGKILL the whole process group, as SLURM ends a requeued job.
    Does nothing where $PLIFNET_REQUEUE_AT is unset or names another task ($PLIFNET_REQUEUE_TASK)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if os.environ.get("PLIFNET_REQUEUE_TASK") != os.environ.get(
            "SLURM_ARRAY_TASK_ID"
        ) or trainer.global_step != int(os.environ.get("PLIFNET_REQUEUE_AT", -1)):
            return
        received, handler = [], signal.getsignal(signal.SIGUSR1)

        def note(number, frame):
            handler(number, frame)  # Lightning's: hpc checkpoint, then scontrol requeue
            received.append(number)

        signal.signal(signal.SIGUSR1, note)
        os.kill(os.getppid(), signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(os.getpgid(0), signal.SIGKILL)
