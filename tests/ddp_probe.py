"""A callback for the DDP tests: every rank records the tau of its neurons (through plifnet's neuron
contract) and the values of its neurons' buffers after each step and saves them, with its parameters, to
$PLIFNET_PROBE_DIR/rank<r>.pt at the end of fit."""

import os
from pathlib import Path

import lightning as L
import torch

from plifnet import contract
from plifnet.callbacks import spiking_layers


class RankProbe(L.Callback):
    def __init__(self):
        self.taus, self.buffers = [], []

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.taus.append(
            {
                n: torch.as_tensor(contract.tau(m)).clone()
                for n, m in spiking_layers(pl_module).items()
                if contract.learns_tau(m)
            }
        )
        self.buffers.append(
            {
                f"{n}.{k}": b.detach().clone()
                for n, m in contract.neurons(pl_module.net).items()
                for k, b in m.named_buffers(recurse=False)
            }
        )

    def on_fit_end(self, trainer, pl_module):
        folder = Path(os.environ["PLIFNET_PROBE_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        parameters = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        buffers = [n for n, _ in pl_module.named_buffers()]
        torch.save(
            {
                "world_size": trainer.world_size,
                "taus": self.taus,
                "step_buffers": self.buffers,
                "parameters": parameters,
                "buffers": buffers,
            },
            folder / f"rank{trainer.global_rank}.pt",
        )
