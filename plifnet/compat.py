"""What plifnet asks Lightning (and torch) where they have no public way to ask it: one place, each with why.

Everything else in plifnet uses Lightning's public API only (``tests/test_lightning_api.py`` checks
that no underscore name of Lightning is used outside this module).
"""

from __future__ import annotations

import contextlib


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


@contextlib.contextmanager
def forward_hooks_off(model):
    """Within it, no forward (pre-)hook of ``model``'s modules runs; they are put back after, in order. The
    leak check runs the network twice where a monitor or counter must not count it, and torch has no public
    way to suspend a module's hooks (``_forward_hooks`` and ``_forward_pre_hooks`` are its dicts of them)."""
    hooks = {m: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()}
    for m in hooks:
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    try:
        yield
    finally:
        for m, (forward, pre) in hooks.items():
            m._forward_hooks.update(forward)
            m._forward_pre_hooks.update(pre)


def compile_with_hook_guards(module) -> None:
    """``module.compile()`` (TorchInductor, one graph per batch shape) where forward hooks added later run in
    the compiled graph. dynamo by default ignores hooks added after compiling (``skip_nnmodule_hook_guards``):
    the firing-rate monitor and the synaptic-operation counter, which hook in at each validation, would then
    count nothing and say nothing. The setting is dynamo's and process-wide, and it must stay on for as long as
    the compiled network runs (every step after this call), so it cannot be scoped to a block; it only makes
    dynamo compile again where hooks change, which costs nothing where none do."""
    import torch

    torch._dynamo.config.skip_nnmodule_hook_guards = False
    # a graph of dynamic shapes fails in Inductor's stride ordering here (a symbolic 128*s*t < 128)
    module.compile(dynamic=False)


def maybe_dynamic(tensor, dim: int) -> None:
    """Let torch.compile treat ``tensor``'s dimension ``dim`` as of any size (a layer's width, a batch), so that
    one graph of the compiled neuron loop serves them all, without insisting where it cannot; torch has this
    as ``torch._dynamo.maybe_mark_dynamic`` only."""
    import torch

    torch._dynamo.maybe_mark_dynamic(tensor, dim)


def recompile_limit(limit: int):
    """Within it, dynamo compiles a function up to ``limit`` times (its default, 8, is what one network's neuron
    classes and variants meet, after which ``fullgraph=True`` raises); torch has no public setting for it."""
    import torch

    return torch._dynamo.config.patch(recompile_limit=limit)
