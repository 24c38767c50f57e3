"""A callback for the DDP test: every rank records its PLIF taus after each step and saves them, with
its parameters, to $PLIFNET_PROBE_DIR/rank<r>.pt at the end of fit."""

import os
from pathlib import Path

import lightning as L
import torch


class RankProbe(L.Callback):
    def __init__(self):
        self.taus = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.taus.append({n: m.tau.clone() for n, m in pl_module.net.spiking_layers().items()})

    def on_fit_end(self, trainer, pl_module):
        folder = Path(os.environ["PLIFNET_PROBE_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        parameters = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        buffers = [n for n, _ in pl_module.named_buffers()]
        torch.save({"world_size": trainer.world_size, "taus": self.taus, "parameters": parameters, "buffers": buffers},
                   folder / f"rank{trainer.global_rank}.pt")
