"""For the kill-and-resume test: SIGKILL this very process when training step $PLIFNET_KILL_AT starts."""

import os
import signal

import lightning as L


class KillAtStep(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == int(os.environ["PLIFNET_KILL_AT"]):
            os.kill(os.getpid(), signal.SIGKILL)
