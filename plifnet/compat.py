"""What plifnet asks Lightning (and torch) where they have no public way to ask it: one place, each with why.

Everything else in plifnet uses Lightning's public API only (``tests/test_lightning_api.py`` checks
that no underscore name of Lightning is used outside this module).
"""

from __future__ import annotations


def attached_trainer(module):
    """The trainer a LightningModule is attached to, or None: ``module.trainer`` raises where there is
    none (a model built in a script, before ``fit``), and Lightning has no public "is attached"."""
    try:
        return module.trainer
    except RuntimeError:
        return None


def cluster_environment(trainer):
    """The cluster environment of a run (SLURM, torchelastic, ...). Lightning keeps it on the strategy of
    a multi-process run (``strategy.cluster_environment``, public), and for a single-device run only in
    its private accelerator connector; there the environment is detected as Lightning detects it (a
    ``SLURMEnvironment`` when the process runs under SLURM). Its ``auto_requeue`` is then the default,
    not the run's: whether Lightning requeues is asked of the signal handlers it installed instead
    (:class:`plifnet.callbacks.SaveOnInterrupt`)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None and SLURMEnvironment.detect():
        environment = SLURMEnvironment()
    return environment


def dispatch_mode_active() -> bool:
    """Whether a ``TorchDispatchMode`` is active: Lightning's model summary runs its one-sample forward under
    ``FlopCounterMode`` to count FLOPs, and torch.compile skips every frame there ("found no compiled frames"),
    which plifnet's compiled neuron loop would take for a neuron it cannot compile. torch has no public way to ask."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    return _get_current_dispatch_mode() is not None
