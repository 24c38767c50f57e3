"""Lightning callbacks: neuron state reset, divergence stop, saving on interruption, tau and firing-rate monitors,
synaptic operations and energy, run history, prediction writer.

Where tau is logged: :class:`TauMonitor` reads the tau of every neuron that learns it (``PLIF.tau`` in
``plifnet/neurons.py``; a peer library's through its adapter, :mod:`plifnet.contract`) every
``every_n_steps`` optimiser steps and sends ``tau/<layer>`` to every logger of the run.
"""

from __future__ import annotations

import csv
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter, Callback

from plifnet import plots
from plifnet.energy import EnergyReport, SynapticCounter, energy_costs
from plifnet.files import write_atomically
from plifnet import contract


def spiking_layers(module: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The neurons of a model by readable name: ``conv1``, ..., ``fc2`` for networks of layer tokens,
    the module path (``lif1``, ``block.neuron``) in any other network."""
    for m in module.modules():
        if hasattr(m, "spiking_layers") and m is not module:
            return m.spiking_layers()
    return {name.removeprefix("net."): m for name, m in contract.neurons(module).items()}


def exact_sum(x: torch.Tensor, chunk: int = 1 << 20) -> torch.Tensor:
    """The sum of ``x`` as a float64 tensor on x's device, exact for 0/1 spikes of any count: float32
    sums of chunks of ``chunk`` values (exact below 2**24, and 20x faster than float64), added in float64.
    Chunks also spare a bfloat16 tensor its whole float32 copy, which ``x.sum(dtype=torch.float32)``
    makes first (the spikes of MNIST's first layer under bf16 autocast: 1.1 ms instead of 2.1 alone,
    and 9 in a validation step under the profiler)."""
    return torch.stack([part.sum(dtype=torch.float32) for part in x.reshape(-1).split(chunk)]).double().sum()


def _run_dir(trainer) -> Path:
    """The first logger's folder, as ``trainer.log_dir`` gives it, without its broadcast: that is a
    collective call under DDP, which would hang when only rank 0 asks."""
    logger = trainer.loggers[0] if trainer.loggers else None
    folder = Path(getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or trainer.default_root_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _log_figure(trainer, key: str, path: Path, step: int) -> None:
    """Hand a PNG to each logger that can show images (TensorBoard, wandb); CSV keeps the file alone."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, plots.read_png(path), step, dataformats="HWC")


class ResetState(Callback):
    """Reset the state of every module that keeps state (plifnet's neurons, a peer library's through its
    adapter: :mod:`plifnet.contract`) before and after each batch of every stage, and after an
    exception, so that no membrane potential or autograd graph leaks from one batch into the next
    (also when the batch size changes between batches).

    And check that this is enough: before the first batch of every fit, validate, test and predict,
    the batch's input goes through the model twice in eval mode, reset before each, and the outputs
    must be equal bit for bit (:func:`plifnet.contract.check_forgets`); otherwise the run stops with
    :class:`plifnet.contract.StateLeak`, naming the modules that keep state, before any batch counts.
    A network that resets itself at the start of ``forward`` passes; one where no spiking neuron is
    found gets a warning. ``check=False`` skips the check; so does a LightningModule without ``forward``
    (the check runs ``pl_module(x)`` on the batch's input ``x``, as :class:`plifnet.module.SpikingClassifier` does).
    """

    def __init__(self, check: bool = True):
        self.check = check
        self.checked = False

    def setup(self, trainer, pl_module, stage):
        self.checked = False

    def _start(self, trainer, pl_module, batch, *args) -> None:
        if self.check and not self.checked:
            self.checked = True
            if type(pl_module).forward is LightningModule.forward:
                return  # nothing to run the batch's input through: the training_step alone knows how
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            contract.check_forgets(pl_module, x, where=getattr(pl_module, "net", pl_module))
        contract.reset_state(pl_module)

    def _reset(self, trainer, pl_module, *args) -> None:
        contract.reset_state(pl_module)

    on_train_batch_start = on_validation_batch_start = on_test_batch_start = on_predict_batch_start = _start
    on_train_batch_end = on_validation_batch_end = on_test_batch_end = on_predict_batch_end = _reset
    on_exception = _reset


class ResumeRandomState(Callback):
    """Save the random generators (torch, numpy, python) in every checkpoint and restore them at the
    first training batch of a resumed run, so that dropout masks continue the interrupted run's.

    Restoring at the first batch rather than at load time skips whatever the start of the resumed
    fit draws that the interrupted run drew earlier. (The data draws nothing from these generators:
    the training order and augmentations come from (seed, epoch, index), see
    ``plifnet.data.common.EpochSampler``, and every loader seeds its workers from its own generator.)
    """

    def __init__(self):
        self.pending = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        numpy_state = np.random.get_state()
        checkpoint["random_state"] = {
            "torch": torch.get_rng_state(),
            "numpy": (numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]),
            "python": random.getstate(),
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self.pending = checkpoint.get("random_state")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.pending is not None:
            state, self.pending = self.pending, None
            torch.set_rng_state(state["torch"])
            name, keys, *rest = state["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
            random.setstate(state["python"])


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
    - the parameters and buffers, before a checkpoint is written: a non-finite state is never saved.
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
            bad = [name for name, p in pl_module.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            if bad:
                self._stop(trainer, f"the gradient of {bad[0]} is not finite")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # parameters and buffers (BatchNorm's statistics); not metric states, where -inf means "none yet"
        network = dict(pl_module.named_parameters()) | dict(pl_module.named_buffers())
        bad = [name for name, value in network.items() if value.is_floating_point() and not torch.isfinite(value).all()]
        if bad:
            self._stop(trainer, f"{bad[0]} (and {len(bad) - 1} more tensors) holds non-finite values, so the "
                                f"checkpoint was not written")

    @staticmethod
    def _stop(trainer, what: str):
        # ModelCheckpoint names a file before it is written, so the refused one may be among its paths:
        # the newest of them that is on disk is the last good one
        named = {path for c in trainer.checkpoint_callbacks for path in (c.last_model_path, c.best_model_path, *c.best_k_models)}
        saved = [Path(path) for path in named if path and Path(path).is_file()]
        kept = max(saved, key=lambda path: path.stat().st_mtime, default=None)
        raise FloatingPointError(
            f"{what} at step {trainer.global_step} (epoch {trainer.current_epoch}): the run has diverged and "
            f"is stopped before this reaches the weights or a checkpoint. Last good checkpoint: {kept or 'none written yet'}. "
            f"Lower --model.lr, or check the input data."
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
    and raise :class:`Interrupted` (``cli.py`` prints where it is and the command that resumes it).

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
        environment = trainer._accelerator_connector.cluster_environment
        requeue = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        for number in (signal.SIGINT,) if requeue else (signal.SIGINT, signal.SIGTERM):
            self._previous[number] = signal.signal(number, self._note)

    def _note(self, number, frame) -> None:
        if self.received is not None and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = number
        print(f"\n{signal.Signals(number).name}: stopping after this training batch, with its state saved"
              f"{' (Ctrl-C again: stop now, unsaved)' if number == signal.SIGINT else ''}", file=sys.stderr, flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        stop = self.received is not None
        if trainer.world_size > 1:  # every process stops at the same batch (a signal may reach one only)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        callback = trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else _run_dir(trainer) / "checkpoints"
        path = folder / f"{self.filename}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # the whole state: optimiser, loops, callbacks
        name = signal.Signals(self.received).name if self.received is not None else "SIGTERM"
        raise Interrupted(name, trainer.global_step, trainer.current_epoch, path)

    def teardown(self, trainer, pl_module, stage):
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}


class TauMonitor(Callback):
    """Log the tau of every PLIF layer every ``every_n_steps`` optimiser steps (default: the trainer's
    ``log_every_n_steps``), and plot it at the end.

    Scalar tau is logged as ``tau/<layer>``; per-channel tau as ``tau/<layer>/mean|min|max`` and a
    histogram where the logger has one (TensorBoard, wandb). The progress bar shows ``tau_mean``, the
    mean over layers. At the end of fit, ``tau.csv`` (one column per layer, one row per logged step)
    and ``tau.png`` (one curve per layer, x = step) are written into the run folder, and the plot
    is handed to the loggers as an image.
    """

    def __init__(self, every_n_steps: int | None = None):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.steps: list[int] = []
        self.history: dict[str, list[float]] = {}

    def on_fit_start(self, trainer, pl_module):
        if self.every_n_steps is None:  # follow --trainer.log_every_n_steps
            self.every_n_steps = trainer.log_every_n_steps
        self.layers = {name: m for name, m in spiking_layers(pl_module).items() if contract.learns_tau(m)}
        if not self.steps or set(self.history) != set(self.layers):  # a resumed run keeps its history
            self.steps, self.history = [], {name: [] for name in self.layers}
            self._record(trainer, pl_module)  # tau0, at step 0

    def state_dict(self) -> dict:
        return {"steps": self.steps, "history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps, self.history = list(state_dict["steps"]), {k: list(v) for k, v in state_dict["history"].items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.layers:
            return
        mean_tau = torch.stack([contract.tau(layer).float().mean() for layer in self.layers.values()]).mean()
        pl_module.log("tau_mean", mean_tau, prog_bar=True, logger=False)
        if trainer.global_step % self.every_n_steps == 0 and trainer.global_step not in self.steps:
            self._record(trainer, pl_module)

    def _record(self, trainer, pl_module) -> None:
        if not self.layers:
            return
        step, metrics = trainer.global_step, {}
        for name, layer in self.layers.items():
            tau = contract.tau(layer).float().cpu()
            if tau.dim() == 0:
                metrics[f"tau/{name}"] = tau.item()
            else:
                metrics.update({f"tau/{name}/mean": tau.mean().item(), f"tau/{name}/min": tau.min().item(),
                                f"tau/{name}/max": tau.max().item()})
                self._histogram(trainer, f"tau/{name}/hist", tau, step)
            self.history[name].append(tau.mean().item())
        self.steps.append(step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    @staticmethod
    def _histogram(trainer, key: str, values: torch.Tensor, step: int) -> None:
        from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_histogram(key, values, step)
            elif isinstance(logger, WandbLogger):
                import wandb

                logger.experiment.log({key: wandb.Histogram(values.numpy()), "trainer/global_step": step})

    def on_fit_end(self, trainer, pl_module):
        if not self.layers or not trainer.is_global_zero:
            return
        if trainer.global_step not in self.steps:
            self._record(trainer, pl_module)
        folder = _run_dir(trainer)

        def write_csv(path):
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["step", *self.history])
                for i, step in enumerate(self.steps):
                    writer.writerow([step, *(f"{values[i]:.8g}" for values in self.history.values())])

        write_atomically(folder / "tau.csv", write_csv)
        write_atomically(folder / "tau.png", lambda path: plots.tau_trajectories(self.steps, self.history, path))
        _log_figure(trainer, "tau_trajectories", folder / "tau.png", trainer.global_step)


class FiringRateMonitor(Callback):
    """Mean firing rate of every spiking layer on the validation set, each epoch.

    Logged as ``firing_rate/<layer>``, kept per epoch (the last validation of each) in
    ``firing_rates.csv`` and drawn against the epoch in ``firing_rates.png`` in the run folder (and an
    image for loggers that show them); a resumed run keeps the earlier epochs (the checkpoint holds
    them). Warns once per layer when a layer stays silent or saturated (rate below ``low`` or above
    ``high``) for a whole epoch. Only running sums are kept, never activations.
    """

    def __init__(self, low: float = 1e-4, high: float = 0.99):
        self.low, self.high = low, high
        self.warned: set[str] = set()
        self.rates: dict[str, float] = {}
        self.history: dict[int, dict[str, float]] = {}  # epoch: its rates

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = {int(epoch): dict(rates) for epoch, rates in state_dict["history"].items()}

    def on_validation_epoch_start(self, trainer, pl_module):
        self.layers = spiking_layers(pl_module)
        self.sums = dict.fromkeys(self.layers, 0.0)  # become tensors on the spikes' device: no sync per batch
        self.counts = dict.fromkeys(self.layers, 0)
        self._loader_idx = 0
        self.handles = [layer.register_forward_hook(self._hook(name)) for name, layer in self.layers.items()]

    def _hook(self, name):
        def count(module, inputs, output):
            if self._loader_idx == 0:  # the first validation loader: the validation split
                spikes = contract.spikes(module, output).detach()
                self.sums[name] = self.sums[name] + exact_sum(spikes)
                self.counts[name] += spikes.numel()

        return count

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._loader_idx = dataloader_idx

    def on_validation_epoch_end(self, trainer, pl_module):
        for handle in self.handles:
            handle.remove()
        if trainer.sanity_checking or not any(self.counts.values()):
            return
        self.rates = {name: float(self.sums[name] / self.counts[name]) for name in self.layers if self.counts[name]}
        for name, rate in self.rates.items():
            pl_module.log(f"firing_rate/{name}", rate, sync_dist=True)
            if (rate < self.low or rate > self.high) and name not in self.warned:
                self.warned.add(name)
                state = "silent" if rate < self.low else "saturated"
                warnings.warn(
                    f"spiking layer {name} was {state} for a whole validation epoch (mean firing rate {rate:.2g}); "
                    f"check the input scale, v_threshold and tau",
                    RuntimeWarning,
                )
        self.history[trainer.current_epoch] = self.rates
        if trainer.is_global_zero:
            folder = _run_dir(trainer)
            layers = list(self.rates)

            def write_csv(path):
                with open(path, "w", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow(["epoch", *layers])
                    for epoch, rates in sorted(self.history.items()):
                        writer.writerow([epoch, *(f"{rates[name]:.8g}" if name in rates else "" for name in layers)])

            write_atomically(folder / "firing_rates.csv", write_csv)
            write_atomically(folder / "firing_rates.png", lambda path: plots.firing_rates(self.history, path))
            _log_figure(trainer, "firing_rates", folder / "firing_rates.png", trainer.global_step)


class SynapticOps(Callback):
    """Synaptic operations and energy per image (:mod:`plifnet.energy`) on the first validation loader
    every epoch and on the test set.

    Logged to every logger as ``<stage>/sops_per_image``, ``<stage>/energy_uj_per_image``,
    ``<stage>/ann_energy_uj_per_image``, ``<stage>/ann_to_snn`` and ``<stage>/sops/<layer>``; written to
    ``energy.csv`` and ``energy.png`` (SNN against ANN energy per layer) in the run folder; the test
    prints its totals. ``technology``: a name of :data:`plifnet.energy.TECHNOLOGIES`.
    """

    def __init__(self, technology: str = "45nm_fp32"):
        energy_costs(technology)  # an unknown name fails when the trainer is built
        self.technology = technology
        self.report: EnergyReport | None = None

    def _start(self, pl_module):
        self.counter = SynapticCounter(pl_module).__enter__()
        self.images = 0

    def _batch(self, batch, counted: bool):
        self.counter.active = counted
        if counted:
            self.images += len(batch[-1]) if isinstance(batch, (list, tuple)) else len(batch)

    def _end(self, trainer, pl_module, stage: str):
        self.counter.__exit__()
        totals = self.counter.totals()
        if trainer.sanity_checking or not self.images or not totals:  # no batch, or no Conv2d/Linear to count
            return
        counts = torch.stack([value.to(pl_module.device) for value in totals.values()]
                             + [torch.full_like(next(iter(totals.values())), self.images, device=pl_module.device)])
        counts = trainer.strategy.reduce(counts, reduce_op="sum")  # every process's share of the images
        totals = dict(zip(totals, counts[:-1]))
        self.report = report = self.counter.report(int(counts[-1, 0]), self.technology, totals)
        figures = report.totals()
        for key, value in (("sops_per_image", figures["sops"]), ("energy_uj_per_image", figures["energy_uj"]),
                           ("ann_energy_uj_per_image", figures["ann_energy_uj"]), ("ann_to_snn", figures["ann_to_snn"])):
            pl_module.log(f"{stage}/{key}", value, sync_dist=True)
        for layer in report.layers:
            pl_module.log(f"{stage}/sops/{layer.name}", layer.sops, sync_dist=True)
        if trainer.is_global_zero:
            folder = _run_dir(trainer)
            write_atomically(folder / "energy.csv", report.to_csv)
            write_atomically(folder / "energy.png", lambda path: plots.energy_per_layer(report, f"{stage}, epoch {trainer.current_epoch}", path))
            _log_figure(trainer, "energy", folder / "energy.png", trainer.global_step)
            if stage == "test":
                print(f"energy {report.summary()}", flush=True)

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch(batch, counted=dataloader_idx == 0)  # the first loader: the validation split

    def on_validation_epoch_end(self, trainer, pl_module):
        self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(pl_module)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch(batch, counted=True)

    def on_test_epoch_end(self, trainer, pl_module):
        self._end(trainer, pl_module, "test")


class RunHistory(Callback):
    """Write one row per validation epoch to ``path`` (CSV): epoch, step, seconds of fit so far and
    every scalar the run has logged by then (``val/acc``, ``test/acc``, ``test/acc_best``, ...) except
    ``train/*``, whose epoch values are computed only after validation.

    Independent of the loggers, so that a tool reading results (``ablation.py``) works with any of
    them. Rows and seconds are kept in checkpoints: a resumed run continues the same file.
    """

    def __init__(self, path: str):
        self.path = Path(path)
        self.rows: list[dict] = []
        self.seconds_before = 0.0  # fit time of the run before it was resumed
        self.started: float | None = None

    def on_fit_start(self, trainer, pl_module):
        self.started = time.monotonic()

    def on_fit_end(self, trainer, pl_module):
        self.seconds_before, self.started = self.seconds(), None  # a checkpoint saved after fit adds no idle time

    def seconds(self) -> float:
        return self.seconds_before + (time.monotonic() - self.started if self.started is not None else 0.0)

    def state_dict(self) -> dict:
        return {"rows": self.rows, "seconds": self.seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows, self.seconds_before = list(state_dict["rows"]), state_dict["seconds"]

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        scalars = {key: value.item() for key, value in sorted(trainer.callback_metrics.items())
                   if value.numel() == 1 and not key.startswith("train/")}
        self.rows.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                          "seconds": round(self.seconds(), 3), **scalars})
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, self._write)

    def _write(self, path: Path) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(self.rows)


class PredictionWriter(BasePredictionWriter):
    """Write ``cli.py predict`` results to ``predictions.csv``: sample index (in the predict set),
    predicted class and the probability of every class, one row per sample.

    Under DDP every process writes the samples it predicted to ``predictions_rank<r>.csv``, with
    their indices in the whole set. ``output_dir`` defaults to the run's log folder; files are
    written atomically.
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        # predictions: a list of batches, or one such list per predict loader; batch_indices: always
        # one list (of per-batch index lists) per loader
        nested = bool(predictions) and isinstance(predictions[0], list)
        per_loader = predictions if nested else [predictions]
        probabilities = torch.cat([batch for loader in per_loader for batch in loader]).cpu()
        indices = [i for loader in batch_indices for batch in loader for i in batch]
        if len(indices) != len(probabilities):  # a sampler that does not report indices
            indices = list(range(len(probabilities)))
        folder = Path(self.output_dir) if self.output_dir else _run_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)

        def write_csv(path):
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["index", "predicted"] + [f"p{c}" for c in range(probabilities.shape[1])])
                for index, row in zip(indices, probabilities.tolist()):
                    writer.writerow([index, max(range(len(row)), key=row.__getitem__)] + [f"{p:.6g}" for p in row])

        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        self.path = folder / name
        write_atomically(self.path, write_csv)
