"""Callbacks that stop a run safely: at the first non-finite loss or gradient, and on SIGINT/SIGTERM
with a checkpoint saved after the current batch."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from plifnet import compat
from plifnet.callbacks.common import run_dir


class StopOnNonFinite(Callback):
    """Stop a diverged run before its non-finite values reach the weights or a checkpoint.

    A diverging spiking network need not show it in the loss: once a layer overflows, its spikes
    (NaN >= threshold is false) stop, the rate loss settles at a finite value and the run would go
    on "successfully" with NaN weights. So three checks, each raising ``FloatingPointError`` (the
    process exits non-zero) with the step, the culprit and the last good checkpoint:

    - the training loss, before backward;
    - the gradients, before the optimiser applies them (one sum per gradient: a MNIST training step
      takes 1.02x as long with it, within noise; ``benchmarks/monitor_overhead.py``). Under fp16 mixed precision the gradient scaler
      skips such steps by design, so the check is left to it;
    - the parameters and buffers, before a checkpoint is written (at every save, and at the end of each
      validation, where the best epoch's weights-only checkpoint is saved): a non-finite state is never saved.
    """

    def on_before_backward(self, trainer, pl_module, loss):
        if not torch.isfinite(loss):
            self._stop(trainer, f"the training loss is {loss.item()}")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # one sum per tensor: NaN and inf propagate through it, and it reads each gradient once (1 ms
        # for the MNIST network, where an infinity norm's abs() copy takes 18); a finite sum that
        # overflowed is told apart by the exact check below
        if grads and not torch.isfinite(torch.stack([grad.sum() for grad in grads]).sum()):
            bad = [
                name
                for name, p in pl_module.named_parameters()
                if p.grad is not None and not torch.isfinite(p.grad).all()
            ]
            if bad:
                self._stop(trainer, f"the gradient of {bad[0]} is not finite")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self._check_state(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module):
        # Lightning calls no callback's on_save_checkpoint for a weights-only checkpoint (the best epoch's),
        # and runs ModelCheckpoint after every other callback: the state is checked here, before it saves
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._check_state(trainer, pl_module)

    def _check_state(self, trainer, pl_module):
        # parameters and buffers (BatchNorm's statistics); not metric states, where -inf means "none yet"
        network = dict(pl_module.named_parameters()) | dict(pl_module.named_buffers())
        bad = [name for name, value in network.items() if value.is_floating_point() and not torch.isfinite(value).all()]
        if bad:
            self._stop(
                trainer,
                f"{bad[0]} (and {len(bad) - 1} more tensors) holds non-finite values, so the "
                f"checkpoint was not written",
            )

    @staticmethod
    def _stop(trainer, what: str):
        # ModelCheckpoint names a file before it is written, so the refused one may be among its paths:
        # the newest of them that is on disk is the last good one
        named = {
            path
            for c in trainer.checkpoint_callbacks
            for path in (c.last_model_path, c.best_model_path, *c.best_k_models)
        }
        saved = [Path(path) for path in named if path and Path(path).is_file()]
        kept = max(saved, key=lambda path: path.stat().st_mtime, default=None)
        raise FloatingPointError(
            f"{what} at step {trainer.global_step} (epoch {trainer.current_epoch}): the run has diverged and "
            f"is stopped before this reaches the weights or a checkpoint. Last good checkpoint: {kept or 'none written yet'}. "
            f"Lower the learning rate (--model.optimizer.lr), or check the input data."
        )


class Interrupted(Exception):
    """A fit stopped by SIGINT or SIGTERM after :class:`SaveOnInterrupt` saved its state."""

    def __init__(self, signal_name: str, step: int, epoch: int, path: Path):
        super().__init__(f"interrupted by {signal_name} at step {step} (epoch {epoch}); state saved to {path}")
        self.signal_name, self.step, self.epoch, self.path = signal_name, step, epoch, path
        self.exit_code = 128 + signal.Signals[signal_name].value  # what a shell reports for a process killed by it


class SaveOnInterrupt(Callback):
    """Stop a fit on SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption or time limit) at the end of
    the current training batch, with the state saved atomically as ``<checkpoint folder>/interrupted.ckpt``,
    and raise :class:`Interrupted` (``plifnet fit`` prints where it is and the command that resumes it).

    Saved at the end of a batch, where Lightning's step checkpoints are saved, so that resuming from it
    continues the very same run (``--ckpt_path last`` takes it: it is the newest). A signal during
    validation takes effect after the next training batch. A second Ctrl-C stops at once, unsaved.
    Under SLURM auto-requeue SIGTERM stays Lightning's (it follows the requeue signal there).
    """

    def __init__(self, filename: str = "interrupted"):
        self.filename = filename
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def on_train_start(self, trainer, pl_module):
        from lightning.fabric.plugins.environments import SLURMEnvironment

        self.received = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can be set in the main thread only
        environment = compat.cluster_environment(trainer)
        # Lightning requeues only where it installed its handler of the requeue signal (auto_requeue),
        # which it does before training starts: asked of the signal module, whatever the strategy
        requeue = isinstance(environment, SLURMEnvironment) and callable(signal.getsignal(environment.requeue_signal))
        for number in (signal.SIGINT,) if requeue else (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._note)

    def _note(self, number, frame) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = number
        print(
            f"\n{signal.Signals(number).name}: stopping after this training batch, with its state saved"
            f"{' (Ctrl-C again: stop now, unsaved)' if number == signal.SIGINT else ''}",
            file=sys.stderr,
            flush=True,
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stop = self.received is not None
        if trainer.world_size > 1:  # every process stops at the same batch (a signal may reach one only)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        callback = trainer.checkpoint_callback
        folder = (
            Path(callback.dirpath) if callback is not None and callback.dirpath else run_dir(trainer) / "checkpoints"
        )
        path = folder / f"{self.filename}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # the whole state: optimiser, loops, callbacks
        name = signal.Signals(self.received).name if self.received is not None else "SIGTERM"
        raise Interrupted(name, trainer.global_step, trainer.current_epoch, path)

    def teardown(self, trainer, pl_module, stage):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}
