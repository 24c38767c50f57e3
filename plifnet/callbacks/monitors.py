"""Callbacks that follow the neurons: tau (:class:`TauMonitor`), firing rates and synaptic operations.

Where tau is logged: :class:`TauMonitor` reads the tau of every neuron that learns it (``PLIF.tau`` in
``plifnet/neurons.py``; a peer library's through its adapter, :mod:`plifnet.contract`) every
``every_n_steps`` optimiser steps and sends ``tau/<layer>`` to every logger of the run.
"""

from __future__ import annotations

import csv
import warnings

import torch
from lightning.pytorch.callbacks import Callback

from plifnet import contract, plots, tau_shapes
from plifnet.callbacks.common import exact_sum, log_figure, log_histogram, run_dir, spiking_layers
from plifnet.energy import EnergyReport, SynapticCounter, energy_costs
from plifnet.errors import UserError
from plifnet.files import write_atomically

SHAPES_HEADER = [  # tau_shapes.csv's columns
    *("time constant", "moment", "count", "mean", "median", "q5", "q95", "skewness"),
    *(f"log-likelihood {family}" for family in tau_shapes.FAMILIES),
    "most likely",
]


class TauMonitor(Callback):
    """Log the tau of every PLIF layer every ``every_n_steps`` optimiser steps (default: the trainer's
    ``log_every_n_steps``), and plot it at the end.

    Every learnt time constant that the neuron contract finds is followed: the membrane's, and others such as
    snnTorch Synaptic's synaptic one (``tau/<layer>/tau_syn``; ``<layer>:tau_syn`` in tau.csv), all in time steps,
    each plotted with how it is read from the library's parameter (``tau = 1/(1-beta)``).
    Scalar tau is logged as ``tau/<layer>``; per-channel tau as ``tau/<layer>/mean|min|max`` and a
    histogram where the logger has one (TensorBoard, wandb): layer by layer, since layers move apart
    (a mean over them would hide it). At the end of fit, ``tau.csv`` (one column per layer, one row per logged step)
    and ``tau.png`` (one curve per layer, x = step) are written into the run folder, and the plot
    is handed to the loggers as an image. A per-neuron time constant's values at the start of training (kept in
    checkpoints, so a resumed run has them) and at the end are summarised in ``tau_shapes.csv`` (their quantiles,
    skewness and the most likely of a normal, log-normal and gamma shape: :mod:`plifnet.tau_shapes`) and drawn in
    ``tau_distributions.png``.
    """

    def __init__(self, every_n_steps: int | None = None):
        if every_n_steps is not None and every_n_steps < 1:
            raise UserError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.steps: list[int] = []
        self.history: dict[str, list[float]] = {}
        self.start: dict[str, torch.Tensor] = {}  # the values at step 0 of every per-neuron time constant
        self.warned: set[str] = set()  # columns whose time constant was logged as NaN or infinite

    def on_fit_start(self, trainer, pl_module):
        if self.every_n_steps is None:  # follow --trainer.log_every_n_steps
            self.every_n_steps = trainer.log_every_n_steps
        # every learnt time constant, by its column: the layer for the membrane's tau, "<layer>:<name>" for another
        # (snnTorch Synaptic's tau_syn); labels say how each is read from the library's own parameter
        self.layers, self.labels = {}, {}
        for name, module in spiking_layers(pl_module).items():
            for constant, value in contract.time_constants(module).items():
                if value.learned:
                    column = name if constant == "tau" else f"{name}:{constant}"
                    self.layers[column] = (module, constant)
                    self.labels[column] = f"{column} ({constant} = {value.convention})" if value.convention else column
        if not self.steps or set(self.history) != set(self.layers):  # a resumed run keeps its history
            self.steps, self.history = [], {name: [] for name in self.layers}
            self._record(trainer, pl_module)  # tau0, at step 0
            self.start = {column: tau.clone() for column, tau in self._per_neuron().items()}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "history": self.history, "start": self.start}

    def load_state_dict(self, state_dict: dict) -> None:
        self.steps, self.history = list(state_dict["steps"]), {k: list(v) for k, v in state_dict["history"].items()}
        self.start = dict(state_dict.get("start", {}))  # a checkpoint written before they were kept has none

    def _values(self, column: str) -> torch.Tensor:
        layer, constant = self.layers[column]
        return torch.as_tensor(contract.time_constants(layer)[constant].steps).detach().float().cpu()

    def _per_neuron(self) -> dict[str, torch.Tensor]:
        """The values of every time constant that has more than one, by column."""
        return {column: tau for column in self.layers if (tau := self._values(column)).numel() > 1}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.layers:
            return
        if trainer.global_step % self.every_n_steps == 0 and trainer.global_step not in self.steps:
            self._record(trainer, pl_module)

    def _record(self, trainer, pl_module) -> None:
        if not self.layers:
            return
        step, metrics = trainer.global_step, {}
        for column, (layer, constant) in self.layers.items():
            tau = self._values(column)
            layer_name = column.split(":")[0]  # every time constant under tau/: one section of the dashboards
            key = f"tau/{layer_name}" if constant == "tau" else f"tau/{layer_name}/{constant}"
            if not torch.isfinite(tau).all() and column not in self.warned:
                self.warned.add(column)
                warnings.warn(
                    f"{key} is {tau[~torch.isfinite(tau)].flatten()[0].item()} at step {step}: the parameter it "
                    f"is learnt through is not finite, so the run has diverged; lower the time constants' "
                    f"learning rate (--model.tau_lr) or the learning rate",
                    RuntimeWarning,
                )
            if tau.dim() == 0:
                metrics[key] = tau.item()
            else:
                metrics.update(
                    {f"{key}/mean": tau.mean().item(), f"{key}/min": tau.min().item(), f"{key}/max": tau.max().item()}
                )
                log_histogram(trainer, f"{key}/hist", tau, step)
            self.history[column].append(tau.mean().item())
        self.steps.append(step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def on_fit_end(self, trainer, pl_module):
        if not self.layers or not trainer.is_global_zero:
            return
        if trainer.global_step not in self.steps:
            self._record(trainer, pl_module)
        folder = run_dir(trainer)

        def write_csv(path):
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["step", *self.history])
                for i, step in enumerate(self.steps):
                    writer.writerow([step, *(f"{values[i]:.8g}" for values in self.history.values())])

        write_atomically(folder / "tau.csv", write_csv)
        write_atomically(
            folder / "tau.png",
            lambda path: plots.tau_trajectories(
                self.steps, {self.labels.get(column, column): values for column, values in self.history.items()}, path
            ),
        )
        log_figure(trainer, "tau_trajectories", folder / "tau.png", trainer.global_step)
        self._write_shapes(trainer, folder)

    def _write_shapes(self, trainer, folder) -> None:
        """``tau_shapes.csv`` and ``tau_distributions.png``: each per-neuron time constant at the start and the end."""
        end = self._per_neuron()
        if not end:
            return
        rows, labels = [], {}
        for column, tau in end.items():
            for moment, values in (("start", self.start.get(column)), ("end", tau)):
                if values is None:  # resumed from a checkpoint written before the start values were kept
                    rows.append([column, moment, "-", *["-"] * (len(SHAPES_HEADER) - 4), "not recorded"])
                    continue
                finite = values[values.isfinite() & (values > 0)]
                if len(finite) < len(values):  # a diverged run: its shape is not the one learnt
                    rows.append([column, moment, len(values), *["-"] * (len(SHAPES_HEADER) - 4), "not finite"])
                    continue
                shape = tau_shapes.fit(finite)
                likelihood = shape.log_likelihood or dict.fromkeys(tau_shapes.FAMILIES)
                stats = (shape.mean, shape.median, shape.q5, shape.q95, shape.skewness)
                rows.append(
                    [column, moment, shape.count, *(f"{v:.6g}" for v in stats)]
                    + [f"{likelihood[f]:.6g}" if likelihood[f] is not None else "-" for f in tau_shapes.FAMILIES]
                    + [shape.best]
                )
                labels[f"{column}:{moment}"] = shape.best + (
                    f", skewness {shape.skewness:.2f}" if shape.log_likelihood else ""
                )

        def write_csv(path):
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(SHAPES_HEADER)
                writer.writerows(rows)

        write_atomically(folder / "tau_shapes.csv", write_csv)
        start = {column: values.numpy() for column, values in self.start.items() if column in end}
        write_atomically(
            folder / "tau_distributions.png",
            lambda path: plots.tau_distributions(start, {c: v.numpy() for c, v in end.items()}, labels, path),
        )
        log_figure(trainer, "tau_distributions", folder / "tau_distributions.png", trainer.global_step)


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
        self.batch: list[tuple] = []  # (layer, spikes, elements) of each call in this batch
        self.handles = [layer.register_forward_hook(self._hook(name)) for name, layer in self.layers.items()]

    def _hook(self, name):
        # the hook only appends the call's figures: it reads no Python state, which a compiled network
        # (--model.compile) would guard on and compile again for every new value
        def count(module, inputs, output):
            spikes = contract.spikes(module, output).detach()
            self.batch.append((name, exact_sum(spikes), spikes.numel()))

        return count

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if dataloader_idx == 0:  # the first validation loader: the validation split
            for name, spikes, elements in self.batch:
                self.sums[name] = self.sums[name] + spikes
                self.counts[name] += elements
        self.batch.clear()

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
            folder = run_dir(trainer)
            layers = list(self.rates)

            def write_csv(path):
                with open(path, "w", newline="") as f:
                    writer = csv.writer(f)
                    writer.writerow(["epoch", *layers])
                    for epoch, rates in sorted(self.history.items()):
                        writer.writerow([epoch, *(f"{rates[name]:.8g}" if name in rates else "" for name in layers)])

            write_atomically(folder / "firing_rates.csv", write_csv)
            write_atomically(folder / "firing_rates.png", lambda path: plots.firing_rates(self.history, path))
            log_figure(trainer, "firing_rates", folder / "firing_rates.png", trainer.global_step)


class SynapticOps(Callback):
    """Synaptic operations and energy per image (:mod:`plifnet.energy`) on the first validation loader
    every epoch and on the test set.

    Logged to every logger as ``<stage>/sops_per_image``, ``<stage>/energy_uj_per_image``,
    ``<stage>/ann_energy_uj_per_image``, ``<stage>/ann_to_snn``, the same with memory access
    (``<stage>/energy_with_memory_uj_per_image``, ``<stage>/ann_energy_with_memory_uj_per_image``), the
    input firing rate above which the ANN wins (``<stage>/crossover_rate``) and ``<stage>/sops/<layer>``; written to
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
        if counted:  # samples: the labels' last dim (labels per step are [T, N]), or a batch of inputs alone
            labels = batch[-1] if isinstance(batch, (list, tuple)) else batch
            self.images += labels.shape[-1] if torch.is_tensor(labels) and labels.dim() == 2 else len(labels)
        self.counted = counted

    def _batch_end(self):
        if self.counted:
            self.counter.fold()
        else:
            self.counter.discard()

    def _end(self, trainer, pl_module, stage: str):
        self.counter.__exit__()
        totals = self.counter.totals()
        if trainer.sanity_checking or not self.images or not totals:  # no batch, or no Conv2d/Linear to count
            return
        counts = torch.stack(
            [value.to(pl_module.device) for value in totals.values()]
            + [torch.full_like(next(iter(totals.values())), self.images, device=pl_module.device)]
        )
        counts = trainer.strategy.reduce(counts, reduce_op="sum")  # every process's share of the images
        totals = dict(zip(totals, counts[:-1]))
        self.report = report = self.counter.report(int(counts[-1, 0]), self.technology, totals)
        figures = report.totals()
        for key, value in (
            ("sops_per_image", figures["sops"]),
            ("energy_uj_per_image", figures["energy_uj"]),
            ("ann_energy_uj_per_image", figures["ann_energy_uj"]),
            ("ann_to_snn", figures["ann_to_snn"]),
            ("energy_with_memory_uj_per_image", figures["energy_with_memory_uj"]),
            ("ann_energy_with_memory_uj_per_image", figures["ann_energy_with_memory_uj"]),
            ("crossover_rate", figures["crossover_rate"]),
        ):
            pl_module.log(f"{stage}/{key}", value, sync_dist=True)
        for layer in report.layers:
            pl_module.log(f"{stage}/sops/{layer.name}", layer.sops, sync_dist=True)
        if trainer.is_global_zero:
            folder = run_dir(trainer)
            write_atomically(folder / "energy.csv", report.to_csv)
            write_atomically(
                folder / "energy.png",
                lambda path: plots.energy_per_layer(report, f"{stage}, epoch {trainer.current_epoch}", path),
            )
            log_figure(trainer, "energy", folder / "energy.png", trainer.global_step)
            if stage == "test":
                print(f"energy {report.summary()}", flush=True)

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch(batch, counted=dataloader_idx == 0)  # the first loader: the validation split

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end()

    def on_validation_epoch_end(self, trainer, pl_module):
        self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(pl_module)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._batch(batch, counted=True)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch_end()

    def on_test_epoch_end(self, trainer, pl_module):
        self._end(trainer, pl_module, "test")
