"""Callbacks that keep a run's state right: every neuron reset before each batch (and the check that
nothing else remembers), and the random state saved for an exact resume."""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import Callback

from plifnet import contract


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
