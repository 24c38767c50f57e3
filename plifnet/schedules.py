"""Learning-rate schedules of plifnet's own (any ``torch.optim.lr_scheduler`` class works as well).

The paper anneals over 64 epochs of 1024 (``CosineAnnealingLR(T_max=64)``). A run of a few epochs stops
while that learning rate has hardly moved (10 epochs: 6 % down), far from an annealed end.
:class:`CosineToEnd` anneals over the run that is actually made, whatever its length.
"""

from __future__ import annotations

import math

import torch

from plifnet.errors import UserError


class CosineToEnd(torch.optim.lr_scheduler.LRScheduler):
    """Cosine annealing from each group's lr to ``eta_min`` over the whole run:

        lr(i) = eta_min + (lr0 - eta_min) * (1 + cos(pi * i / total)) / 2,   i = 0 .. total

    where ``total`` is the trainer's ``max_epochs`` (``lr_interval: epoch``) or its optimizer steps
    (``lr_interval: step``), set by :meth:`SpikingClassifier.configure_optimizers`, so that a config need
    not repeat the run's length (``configs/recipe/budget.yaml``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, eta_min: float = 0.0, last_epoch: int = -1):
        self.eta_min = eta_min
        self.total: int | None = None  # known once the trainer is: see set_total
        super().__init__(optimizer, last_epoch)

    def set_total(self, total: int | float) -> None:
        if not (isinstance(total, int) or float(total).is_integer()) or total < 1:
            raise UserError(
                f"CosineToEnd anneals over the run's length, but the run has no finite length "
                f"({total}): set --trainer.max_epochs (or --trainer.max_steps)"
            )
        self.total = int(total)

    def state_dict(self) -> dict:
        # the length is the trainer's, set anew at every start: a run resumed with a longer max_epochs
        # anneals over the new length, not the old one
        return {key: value for key, value in super().state_dict().items() if key != "total"}

    def load_state_dict(self, state_dict: dict) -> None:
        # the optimizer's lr was restored (first) as the old length left it; the epoch's lr on the new length
        super().load_state_dict(state_dict)
        if self.total is not None:
            self._last_lr = self.get_lr()
            for group, lr in zip(self.optimizer.param_groups, self._last_lr):
                group["lr"] = lr

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0:  # at construction, before the trainer says how long the run is
            return list(self.base_lrs)
        if self.total is None:
            raise RuntimeError("CosineToEnd stepped before its run's length was set (set_total)")
        progress = min(self.last_epoch, self.total) / self.total
        return [self.eta_min + (lr0 - self.eta_min) * (1 + math.cos(math.pi * progress)) / 2 for lr0 in self.base_lrs]
