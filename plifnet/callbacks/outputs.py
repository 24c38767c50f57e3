"""Callbacks that write a run's results: the console's progress bar, its history (metrics per epoch,
plots) and predictions."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import CustomTimeColumn
from rich.progress import BarColumn, TimeRemainingColumn

from plifnet import plots
from plifnet.callbacks.common import TimeShare, log_figure, run_dir
from plifnet.errors import UserError
from plifnet.files import write_atomically


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar on one line of an 80-column terminal: the step's training loss and
    the last validation accuracy under short names (``loss``, ``acc``), without Lightning's ``v_num``;
    a bar of 10 characters and the time left (the time taken once a bar is done) rather than both.
    Everything else (tau of every layer, firing rates, test accuracy) goes to the loggers."""

    SHOWN = {"train/loss_step": "loss", "val/acc": "acc"}

    def configure_columns(self, trainer) -> list:
        # The widest line, "Epoch 123/1023 [bar] 3187/3187 0:12:34 12.34it/s loss: 0.089 acc: 0.981", is 76
        # characters: beyond 80, rich wraps the metrics onto extra lines at every refresh
        columns = super().configure_columns(trainer)
        for column in columns:
            if isinstance(column, BarColumn):
                column.bar_width = 10
        return [
            TimeRemainingColumn(elapsed_when_finished=True) if isinstance(column, CustomTimeColumn) else column
            for column in columns
        ]

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        return {short: metrics[key] for key, short in self.SHOWN.items() if key in metrics}


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
        scalars = {
            key: value.item()
            for key, value in sorted(trainer.callback_metrics.items())
            if value.numel() == 1 and not key.startswith("train/")
        }
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "seconds": round(self.seconds(), 3),
                **scalars,
            }
        )
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, self._write)

    def _write(self, path: Path) -> None:
        columns = list(dict.fromkeys(key for row in self.rows for key in row))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(self.rows)


class LearningCurves(Callback):
    """``curves.png`` in the run folder: the training loss every ``log_every_n_steps`` steps and, per epoch, the
    losses and accuracies of every stage logged (``val``, ``test``, ``train``) against the step. Drawn after a
    validation where that keeps the drawing within ``budget`` (5%) of the fit's time (the first always: a run of
    long epochs is drawn every epoch, one of epochs of seconds every few), and at the end of fit with every epoch.
    Its records are kept in checkpoints, so a resumed run draws the whole run."""

    KEYS = ("train/loss_epoch", "val/loss", "test/loss", "val/acc", "test/acc")

    def __init__(self, budget: float = 0.05):
        if not 0 < budget <= 1:
            raise UserError(f"LearningCurves needs 0 < budget <= 1; got {budget}")
        self.losses: list[tuple[int, float]] = []
        self.epochs: list[dict] = []
        self.share, self.drawn = TimeShare(budget), True  # drawn: curves.png shows every record

    def state_dict(self) -> dict:
        return {"losses": self.losses, "epochs": self.epochs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.losses, self.epochs = [tuple(row) for row in state_dict["losses"]], list(state_dict["epochs"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss) and trainer.global_step % trainer.log_every_n_steps == 0:
            self.losses.append((trainer.global_step, loss.item()))

    def on_fit_start(self, trainer, pl_module):
        self.share.start()

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        # a training epoch's own figures are computed after its validation: here they are the previous epoch's
        self._add_training_epoch(trainer)
        metrics = trainer.callback_metrics
        row = {"step": trainer.global_step, "epoch": trainer.current_epoch}
        self.epochs.append(row | {key: metrics[key].item() for key in self.KEYS[1:] if key in metrics})
        self.drawn = False
        if self.share.due():
            self._draw(trainer)

    def on_fit_end(self, trainer, pl_module):
        if self._add_training_epoch(trainer):  # the last epoch's training figures
            self.drawn = False
        if not self.drawn:
            self._draw(trainer)

    def _add_training_epoch(self, trainer) -> bool:
        metrics = trainer.callback_metrics
        epoch = trainer.current_epoch - 1  # the epoch that the training figures are of (counted on at its end)
        rows = [row for row in self.epochs if row["epoch"] == epoch and "train/loss" not in row]
        if not rows or "train/loss_epoch" not in metrics:
            return False
        rows[-1].update(
            {key.replace("_epoch", ""): metrics[key].item() for key in self.KEYS[:1] + ("train/acc",) if key in metrics}
        )
        return True

    def _draw(self, trainer) -> None:
        self.drawn = True
        if trainer.is_global_zero:
            with self.share.spending():
                path = run_dir(trainer) / "curves.png"
                write_atomically(path, lambda p: plots.learning_curves(self.losses, self.epochs, p))
                log_figure(trainer, "curves", path, trainer.global_step)


class ConfusionMatrix(Callback):
    """At test: ``confusion.csv`` (rows the true class, columns the predicted one) and ``confusion.png`` in the run
    folder, from the scores and labels that ``test_step`` returns (:class:`plifnet.module.SpikingClassifier`'s);
    unlabelled steps (-1) are left out, every process's share is summed under DDP."""

    def on_test_epoch_start(self, trainer, pl_module):
        self.counts = None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not isinstance(outputs, dict) or "scores" not in outputs:
            return
        scores, labels = outputs["scores"], outputs["labels"]
        classes = scores.shape[-1]
        keep = labels >= 0
        pairs = labels[keep] * classes + scores[keep].argmax(-1)
        counts = torch.bincount(pairs, minlength=classes * classes).view(classes, classes)
        self.counts = counts if self.counts is None else self.counts + counts

    def on_test_epoch_end(self, trainer, pl_module):
        if self.counts is None:
            return
        counts = trainer.strategy.reduce(self.counts, reduce_op="sum").cpu().numpy()
        if not trainer.is_global_zero:
            return
        folder = run_dir(trainer)

        def write_csv(path):
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["true", *(f"predicted {c}" for c in range(len(counts)))])
                writer.writerows([c, *row] for c, row in enumerate(counts.tolist()))

        write_atomically(folder / "confusion.csv", write_csv)
        write_atomically(folder / "confusion.png", lambda p: plots.confusion_matrix(counts, p))
        log_figure(trainer, "confusion", folder / "confusion.png", trainer.global_step)


class PredictionWriter(BasePredictionWriter):
    """Write ``plifnet predict`` results to ``predictions.csv``: sample index (in the predict set),
    predicted class, the true class where the data has labels (``label``), and the probability of every
    class, one row per sample; and say where the file is.

    Under DDP every process writes the samples it predicted to ``predictions_rank<r>.csv``, with
    their indices in the whole set. ``output_dir`` defaults to the run's log folder; files are
    written atomically. The trainer's ``limit_predict_batches`` bounds the batches predicted.
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="batch_and_epoch")  # the batches for their labels, the epoch for the file
        self.output_dir = output_dir
        self.labels: list[torch.Tensor | None] = []

    def on_predict_epoch_start(self, trainer, pl_module):
        self.labels = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0):
        labels = batch[1] if isinstance(batch, (list, tuple)) and len(batch) == 2 else None
        self.labels.append(
            labels.detach().cpu() if torch.is_tensor(labels) and not labels.is_floating_point() else None
        )

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        # predictions: a list of batches, or one such list per predict loader; batch_indices: always
        # one list (of per-batch index lists) per loader
        nested = bool(predictions) and isinstance(predictions[0], list)
        per_loader = predictions if nested else [predictions]
        probabilities = torch.cat([batch for loader in per_loader for batch in loader]).cpu()
        indices = [i for loader in batch_indices for batch in loader for i in batch]
        if len(indices) != len(probabilities):  # a sampler that does not report indices
            indices = list(range(len(probabilities)))
        folder = Path(self.output_dir) if self.output_dir else run_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)

        labelled = bool(self.labels) and all(labels is not None for labels in self.labels)
        labels = torch.cat(self.labels).tolist() if labelled else []
        labelled = labelled and len(labels) == len(probabilities)

        def write_csv(path):
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(
                    [
                        "index",
                        "predicted",
                        *(["label"] if labelled else []),
                        *(f"p{c}" for c in range(probabilities.shape[1])),
                    ]
                )
                for i, (index, row) in enumerate(zip(indices, probabilities.tolist())):
                    writer.writerow(
                        [
                            index,
                            max(range(len(row)), key=row.__getitem__),
                            *([labels[i]] if labelled else []),
                            *(f"{p:.6g}" for p in row),
                        ]
                    )

        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        self.path = folder / name
        write_atomically(self.path, write_csv)
        print(f"predictions of {len(probabilities)} samples: {self.path}", file=sys.stderr, flush=True)
