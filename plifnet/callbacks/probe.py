"""The probe: figures of every spiking layer on a fixed batch of the validation set, during training."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader

from plifnet import plots
from plifnet.callbacks.common import TimeShare, log_figure, log_histogram, run_dir, spiking_layers
from plifnet.errors import UserError
from plifnet.files import write_atomically
from plifnet.probe import LayerProbe, probe, random_state_kept

QUANTILES = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])


class Probe(Callback):
    """After validation epochs (and at the end of fit), run the first ``samples`` samples of the
    validation set through the network (:func:`plifnet.probe.probe`) and draw ``probe/epoch<E>.png`` in the run
    folder: per spiking layer a raster, membrane traces, the rate per step and channel, the rate distribution with
    the dead and saturated fractions, the time constants now and over training, the gradient per step.

    Loggers get the page as an image (``probe/page``), the rates and time constants as histograms
    (``probe/rates/<layer>``, ``probe/tau/<layer>[/<name>]``) and the scalars ``probe/dead/<layer>``,
    ``probe/saturated/<layer>``, ``probe/grad/<layer>``. The run cannot tell (the probe changes no weight, gradient,
    state or random number: :mod:`plifnet.probe`), and what it keeps between epochs is bounded: the quantiles of
    every time constant at no more than ``keep`` epochs (every other one is dropped when full).

    When: every ``every_n_epochs`` epochs and at the end of fit, or by default (None) after every validation, and at
    the end, where that keeps the probes' time within ``budget`` (5%) of the fit's time so far (the first epoch, or
    the end of a fit that never validated, always): a run of long epochs is probed every epoch, one of epochs of
    seconds every few.
    """

    def __init__(
        self,
        every_n_epochs: int | None = None,
        budget: float = 0.05,
        samples: int = 16,
        neurons: int = 64,
        traces: int = 3,
        keep: int = 64,
    ):
        if (every_n_epochs is not None and every_n_epochs < 1) or not 0 < budget <= 1:
            raise UserError(
                f"Probe needs every_n_epochs >= 1 (or none) and 0 < budget <= 1; got {every_n_epochs}, {budget}"
            )
        if samples < 1 or neurons < 1 or traces < 0 or keep < 2:
            raise UserError(
                f"Probe needs samples >= 1, neurons >= 1, traces >= 0 and keep >= 2; got {samples}, {neurons}, "
                f"{traces}, {keep}"
            )
        self.share = TimeShare(budget)
        self.every_n_epochs, self.samples, self.neurons, self.traces, self.keep = (
            every_n_epochs,
            samples,
            neurons,
            traces,
            keep,
        )
        self.bands: dict[str, list[tuple]] = {}  # "<layer>:<constant>": (epoch, q5, q25, q50, q75, q95) per probe
        self.last_step: int | None = None  # the optimiser step of the latest probe
        self.batch = None

    def state_dict(self) -> dict:
        return {"bands": self.bands, "last_step": self.last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self.bands = {key: [tuple(row) for row in rows] for key, rows in state_dict["bands"].items()}
        self.last_step = state_dict["last_step"]

    def on_fit_start(self, trainer, pl_module):
        self.share.start()

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:  # plifnet validate: no training to follow
            return
        if self.every_n_epochs is not None:
            due = trainer.current_epoch % self.every_n_epochs == 0
        else:  # the first of a fit always, then within the budget
            due = self.share.due()
        if due:
            self.run(trainer, pl_module, f"epoch{trainer.current_epoch:03d}")

    def on_fit_end(self, trainer, pl_module):
        if self.last_step == trainer.global_step:  # the last epoch was probed
            return
        if self.every_n_epochs is not None or self.share.due():
            self.run(trainer, pl_module, f"end-step{trainer.global_step}")

    def run(self, trainer, pl_module, name: str) -> dict[str, LayerProbe] | None:
        """Probe now into ``probe/<name>.png``: record, draw and log (on rank 0 only); the layers' summaries, or
        None without data."""
        self.last_step = trainer.global_step
        with self.share.spending():
            return self._run(trainer, pl_module, name)

    def _run(self, trainer, pl_module, name: str) -> dict[str, LayerProbe] | None:
        if not trainer.is_global_zero:
            return None
        batch = self.probe_batch(trainer)
        if batch is None:
            return None
        x, y = trainer.strategy.batch_to_device(batch) if isinstance(batch, (list, tuple)) else (batch, None)
        # the batch's size: labels [N], or per step [T, N]
        samples = y.shape[-1] if torch.is_tensor(y) else None
        loss = getattr(pl_module, "training_loss", None)
        precision = trainer.precision_plugin  # the input's dtype and autocast as in a training step (64-true, bf16)
        with precision.forward_context():
            layers = probe(
                pl_module,
                precision.convert_input(x),
                spiking_layers(pl_module),
                loss=(lambda scores: loss(scores, y)) if callable(loss) and y is not None else None,
                samples=samples,
                neurons=self.neurons,
                traces=self.traces,
            )
        self._record(layers, trainer.current_epoch)
        folder = run_dir(trainer) / "probe"
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.png"
        title = f"{type(getattr(pl_module, 'net', pl_module)).__name__}, {name} (step {trainer.global_step})"
        write_atomically(path, lambda p: plots.probe_page(layers, self.bands, title, p))
        self._log(trainer, layers, path)
        return layers

    def probe_batch(self, trainer):
        """The first ``samples`` samples of the validation set (the first validation loader), collated as its loader
        does; read from the dataset itself, so that no loader's iterator (and its random seed) is drawn."""
        if self.batch is None:
            datamodule = getattr(trainer, "datamodule", None)
            loaders = datamodule.val_dataloader() if callable(getattr(datamodule, "val_dataloader", None)) else None
            loaders = loaders if loaders is not None else trainer.val_dataloaders
            loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
            if not isinstance(loader, DataLoader) or not hasattr(loader.dataset, "__len__") or not len(loader.dataset):
                return None
            with random_state_kept(), torch.inference_mode(False):
                items = [loader.dataset[i] for i in range(min(self.samples, len(loader.dataset)))]
                self.batch = loader.collate_fn(items)
        return self.batch

    def _record(self, layers: dict[str, LayerProbe], epoch: int) -> None:
        for name, layer in layers.items():
            for constant, values in layer.time_constants.items():
                values = values[values.isfinite()]  # a diverged run's: drawn apart (plots.probe_page)
                if not values.numel():
                    continue
                band = self.bands.setdefault(f"{name}:{constant}", [])
                band.append((epoch, *torch.quantile(values, QUANTILES.to(values.dtype)).tolist()))
                if len(band) > self.keep:  # thin to bound the memory, keeping the first and the latest
                    self.bands[f"{name}:{constant}"] = band[:-1:2] + band[-1:]

    @staticmethod
    def _log(trainer, layers: dict[str, LayerProbe], path) -> None:
        step = trainer.global_step
        scalars, histograms = {}, {}
        for name, layer in layers.items():
            scalars[f"probe/dead/{name}"] = layer.dead
            scalars[f"probe/saturated/{name}"] = layer.saturated
            if layer.grad is not None:
                scalars[f"probe/grad/{name}"] = layer.grad.mean().item()
            histograms[f"probe/rates/{name}"] = layer.rates
            for constant, values in layer.time_constants.items():
                histograms[f"probe/tau/{name}" + ("" if constant == "tau" else f"/{constant}")] = values
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
        for key, values in histograms.items():
            log_histogram(trainer, key, values, step)
        log_figure(trainer, "probe/page", path, step)
