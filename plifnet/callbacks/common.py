"""What the callbacks share: the neurons of a model by layer name, exact spike sums, the run folder, figures for the loggers."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch

from plifnet import contract, plots


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


def run_dir(trainer) -> Path:
    """The first logger's folder, as ``trainer.log_dir`` gives it, without its broadcast: that is a
    collective call under DDP, which would hang when only rank 0 asks."""
    logger = trainer.loggers[0] if trainer.loggers else None
    folder = Path(getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None) or trainer.default_root_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_figure(trainer, key: str, path: Path, step: int) -> None:
    """Hand a PNG to each logger that can show images (TensorBoard, wandb); CSV keeps the file alone."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, plots.read_png(path), step, dataformats="HWC")


def log_histogram(trainer, key: str, values: torch.Tensor, step: int) -> None:
    """Hand a histogram of ``values`` to each logger that draws them (TensorBoard, wandb): of the finite ones (a
    diverged run's inf would fail both); none where no value is finite."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    values = values[values.isfinite()]
    if not values.numel():
        return

    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_histogram(key, values, step)
        elif isinstance(logger, WandbLogger):
            import wandb

            logger.experiment.log({key: wandb.Histogram(values.numpy()), "trainer/global_step": step})


class TimeShare:
    """Keeps a side task of a fit (a figure, a probe) within ``fraction`` of the fit's wall time: its first run is
    always due, a later one when one more like the latest keeps the total within the share of the time since
    :meth:`start`. Epochs of minutes get the task every epoch, epochs of seconds every few."""

    def __init__(self, fraction: float):
        self.fraction = fraction
        self.start()

    def start(self) -> None:
        self.started, self.spent, self.cost = time.monotonic(), 0.0, 0.0  # seconds: fit, all runs, the latest

    def due(self) -> bool:
        return not self.spent or self.spent + self.cost <= self.fraction * (time.monotonic() - self.started)

    @contextmanager
    def spending(self):
        """Time what runs within it as one run of the task."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.cost = time.monotonic() - started
            self.spent += self.cost
