"""Lightning callbacks of plifnet."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter


def _write_atomically(path: Path, write) -> None:
    """Write through a temporary file and rename it, so a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _run_dir(trainer) -> Path:
    folder = Path(trainer.log_dir or trainer.default_root_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class PredictionWriter(BasePredictionWriter):
    """Write ``cli.py predict`` results to ``predictions.csv``: sample index, predicted class and the
    probability of every class, one row per sample of the predict set, in order.

    ``output_dir`` defaults to the run's log folder; the file is written atomically.
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices):
        per_loader = predictions if predictions and isinstance(predictions[0], list) else [predictions]
        probabilities = torch.cat([batch for loader in per_loader for batch in loader]).cpu()
        folder = Path(self.output_dir) if self.output_dir else _run_dir(trainer)
        folder.mkdir(parents=True, exist_ok=True)

        def write_csv(path):
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["index", "predicted"] + [f"p{c}" for c in range(probabilities.shape[1])])
                for i, row in enumerate(probabilities.tolist()):
                    writer.writerow([i, max(range(len(row)), key=row.__getitem__)] + [f"{p:.6g}" for p in row])

        self.path = folder / "predictions.csv"
        _write_atomically(self.path, write_csv)
