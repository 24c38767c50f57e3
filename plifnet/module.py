"""The LightningModule: trains the network it is given with the paper's recipe (docs/paper.md section 3).

Loss: ``rate_mse``, the mean squared error between each class's firing rate (the time average of the
vote output) and the one-hot label, or ``cross_entropy`` on those rates. A network whose readout gives a
score per time step (``readout == "step"``, :mod:`plifnet.sequences`) is trained on labels per step ``[T, N]``:
cross-entropy and accuracy over the labelled steps (a label of -1 marks a step without one).

Evaluation follows both of the paper's protocols. The data module serves the validation split and
the test set as two validation loaders during fit, so every epoch logs ``val/acc`` and ``test/acc``:
protocol A is ``test/acc_best`` (best test accuracy over epochs), protocol B is
``test/acc_at_best_val`` (test accuracy at the epoch of the best validation accuracy).
``monitor/acc`` (``val/acc``, or ``test/acc`` without a validation split) is what checkpoints follow.
"""

from __future__ import annotations

import contextvars
from functools import partial
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MaxMetric
from torchmetrics.classification import MulticlassAccuracy

from plifnet import checkpoints, compat, contract
from plifnet.data.common import UNLABELLED
from plifnet.errors import UserError
from plifnet.schedules import CosineToEnd
from plifnet.sequences import LOGITS

# Set by plifnet.cli while LightningCLI builds the model: LightningCLI then saves the model's hyperparameters as
# the config gave them (objects as their class_path and init_args), so nothing needs leaving out.
CLI_RECORDS_CONFIG = contextvars.ContextVar("plifnet_cli_records_config", default=False)


class NoInputShape(UserError):
    """A network that takes its input shape from the data module, built without one."""


class SpikingClassifier(L.LightningModule):
    """A spiking classifier: trains the network it is given (``net``) with the paper's recipe, or yours.

    Args:
        net: any ``torch.nn.Module`` mapping a batch's input to class scores ``[T, N, classes]`` (or
            rates ``[N, classes]``): one of the paper's networks (``SpikingNet.paper("mnist")``; in a config
            ``class_path: plifnet.models.SpikingNet.paper``), ``SpikingNet(layers)``, a peer's network through
            an adapter, a NIR graph (:class:`plifnet.nir.NIRNet`) or your own class. Its neurons, and their
            options, belong to it; the callbacks (state reset, tau, firing rates) find them wherever they sit.
        classes: the number of classes (default: ``net.classes``).
        loss: ``rate_mse`` (the paper) or ``cross_entropy``.
        optimizer: the optimizer, given the parameter groups (LightningCLI's ``OptimizerCallable``: a
            ``class_path`` such as ``torch.optim.AdamW`` with its ``init_args``, or in Python
            ``functools.partial(torch.optim.SGD, lr=0.1)``). None: the paper's Adam (lr 1e-3).
        lr_scheduler: the learning-rate schedule, given the optimizer (``LRSchedulerCallable``), stepped
            every ``lr_interval`` (``epoch`` or ``step``). None: the paper's CosineAnnealingLR (T_max 64 epochs).
        tau_lr, tau_weight_decay: the learning rate (None: the optimizer's) and weight decay (default 0,
            so that AdamW does not pull every tau back towards its initial value) of the parameter group
            that holds the neurons' time constants (PLIF's ``w``; a peer's, through the neuron contract).
        compile: compile the network with ``torch.compile`` (TorchInductor: C++ on the CPU, Triton on
            CUDA) before training; the fused kernels are custom operators, so no neuron breaks the graph.
            The parameters and checkpoints keep their names (``net.compile()``, not a wrapper), and
            forward hooks added later (plifnet's monitors) are compiled in: see :meth:`configure_model`.
    """

    def __init__(
        self,
        net: nn.Module,
        classes: int | None = None,
        loss: Literal["rate_mse", "cross_entropy"] = "rate_mse",
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_interval: Literal["epoch", "step"] = "epoch",
        tau_lr: float | None = None,
        tau_weight_decay: float = 0.0,
        compile: bool = False,
    ):
        super().__init__()
        # Objects (a network, an optimizer's partial) would need pickled code in a checkpoint. Under plifnet's
        # CLI, Lightning records their class_path config instead (its "given" hyperparameters), which rebuilds
        # them; built in a script, they are left out and passed again to load_from_checkpoint.
        objects = [
            name
            for name, value in (("net", net), ("optimizer", optimizer), ("lr_scheduler", lr_scheduler))
            if value is not None and not isinstance(value, str)
        ]
        if isinstance(net, dict):  # a checkpoint's config of the network, loaded without LightningCLI's instantiator
            raise UserError(
                f"net is a configuration ({net.get('class_path', 'no class_path')}), not a network: load this "
                f"checkpoint with plifnet test/export (which build it), or pass net= to load_from_checkpoint"
            )
        if lr_interval not in ("epoch", "step"):
            raise UserError(f"lr_interval must be 'epoch' or 'step', got {lr_interval!r}")
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler
        self.save_hyperparameters(ignore=[] if CLI_RECORDS_CONFIG.get() else objects)
        if compile and getattr(net, "memory", "store") != "store":
            raise UserError(
                f"compile and memory {net.memory!r} do not combine: torch.compile cannot trace the "
                "recomputation (its BatchNorm-statistics context); choose one (--model.compile false, or "
                "--model.net.memory store)"
            )
        self.net = net
        self._compiled = False
        self.num_classes = classes or getattr(net, "classes", None)
        if not self.num_classes:
            raise UserError(f"{type(net).__name__} has no 'classes' attribute: pass --model.classes N")
        if loss not in ("rate_mse", "cross_entropy"):
            raise UserError(f"loss must be 'rate_mse' or 'cross_entropy', got {loss!r}")
        readout = getattr(net, "readout", None)
        if loss == "rate_mse" and readout in LOGITS:
            raise UserError(
                f"readout {readout!r} gives a membrane's scores, not firing rates: train it with --model.loss "
                f"cross_entropy (or give the network readout 'rate')"
            )
        self.per_step = readout == "step"  # a score per time step, for labels per step [T, N]
        # ModuleDict keys may not shadow Module methods such as train(): hence the suffixes.
        self.accuracy = torch.nn.ModuleDict(
            {
                f"{stage}_acc": MulticlassAccuracy(self.num_classes, average="micro", ignore_index=UNLABELLED)
                for stage in ("train", "val", "test")
            }
        )
        self.best = torch.nn.ModuleDict({"val_acc": MaxMetric(), "test_acc": MaxMetric()})
        for metric in self.best.values():
            metric.persistent(True)  # resuming from a checkpoint keeps the best accuracies
        self.register_buffer("test_acc_at_best_val", torch.tensor(0.0))

    def configure_model(self) -> None:
        """Build a network that waits for its input shape (``SpikingNet(layers=...)`` without
        ``in_channels``/``size``) from the data module's ``input_shape``, before the optimiser and
        any checkpoint see its parameters; then compile it, with ``compile``."""
        datamodule = getattr(compat.attached_trainer(self), "datamodule", None)
        if self.example_input_array is None and callable(getattr(datamodule, "example_input", None)):
            # one sample through the network: the model summary counts its FLOPs per sample
            self.example_input_array = datamodule.example_input()
        if not getattr(self.net, "built", True):
            self._build_net(datamodule)
        if self.hparams.get("compile") and not self._compiled:
            compat.compile_with_hook_guards(self.net)  # hooks added later (the monitors) run compiled
            self._compiled = True

    def _build_net(self, datamodule) -> None:
        shape = getattr(datamodule, "input_shape", None)
        if shape is None:
            raise NoInputShape(
                f"{type(self.net).__name__}(layers=...) has no in_channels and size, and there is no data "
                f"module with an input_shape to take them from; give them (--model.net.in_channels C "
                f"--model.net.size H)"
            )
        channels, height, width = shape
        if height != width:
            raise UserError(f"{type(self.net).__name__} takes square inputs; the data module gives {shape}")
        self.net.build(channels, height)

    @classmethod
    def load_from_checkpoint(
        cls,
        checkpoint_path,
        map_location=None,
        hparams_file=None,
        strict=None,
        weights_only: bool = True,
        allow_class_paths=(),
        **kwargs,
    ):
        """Lightning's, with ``weights_only=True`` for every checkpoint (Lightning's default for a URL
        unpickles code), URLs downloaded by :func:`plifnet.checkpoints.fetch` (cached by the whole URL),
        and the checkpoint's names of code checked before anything imports them
        (:func:`plifnet.checkpoints.check_names`): a class path that is not plifnet's, a registered or an
        installed plug-in must be given in ``kwargs`` (``neuron="my_pkg.Neuron"``) or ``allow_class_paths``."""
        if checkpoints.is_url(checkpoint_path):
            checkpoint_path = checkpoints.fetch(str(checkpoint_path))
        hyper_parameters = checkpoints.read(checkpoint_path, mmap=True).get("hyper_parameters") or {}
        checkpoints.check_names(
            {k: v for k, v in hyper_parameters.items() if k not in kwargs},
            checkpoints.strings(kwargs) | set(allow_class_paths),
            source=f"checkpoint {checkpoint_path}",
            how_to_allow="pass allow_class_paths=[VALUE] (python -m plifnet.export: "
            "--allow_class_path VALUE) to allow it",
            model=cls,
        )
        return super().load_from_checkpoint(checkpoint_path, map_location, hparams_file, strict, weights_only, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Firing rate of each class ``[N, classes]``: the time average of the network's scores
        ``[T, N, classes]`` (a network that gives ``[N, classes]`` has averaged them itself); with a readout
        per step, the scores ``[T, N, classes]`` as they are."""
        scores = self.net(x)
        rates = scores if self.per_step else scores.mean(0) if scores.dim() == 3 else scores
        if rates.dim() != 2 + self.per_step or rates.shape[-1] != self.num_classes:
            expected = f"[T, N, {self.num_classes}]" + ("" if self.per_step else f" or [N, {self.num_classes}]")
            raise UserError(
                f"{type(self.net).__name__} returned scores of shape {tuple(scores.shape)} for input "
                f"{tuple(x.shape)}; expected {expected} ({self.num_classes} classes)"
            )
        return rates

    def _loss(self, rates: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "rate_mse":
            return F.mse_loss(rates, F.one_hot(y, self.num_classes).to(rates.dtype))
        if (y == UNLABELLED).all():  # a batch without a labelled step teaches nothing (and its mean would be NaN)
            return rates.sum() * 0
        return F.cross_entropy(rates, y, ignore_index=UNLABELLED)

    def check_labels(self, y: torch.Tensor) -> None:
        """Refuse labels outside ``0..classes-1`` (and -1 on an unlabelled step, for a readout per step) with a
        message naming the network, and labels per step ``[T, N]`` for a network without a readout per step.
        Called on the CPU: by :meth:`_step` when training there, and by plifnet's data modules before each
        batch moves to an accelerator, where the same check would wait for the device at every step."""
        if (y.dim() == 2) != self.per_step:
            raise UserError(
                f"the labels have shape {list(y.shape)} but the {type(self.net).__name__} network gives "
                + (
                    "a score per time step, for labels [T, N]"
                    if self.per_step
                    else "one score per sequence, for labels [N]"
                )
                + ": give a network with readout 'step' labels per step, and labels per sequence to any other"
            )
        low = UNLABELLED if self.per_step else 0
        if y.numel() and (y.min() < low or y.max() >= self.num_classes):
            bad = int(y.max() if y.max() >= self.num_classes else y.min())
            name = getattr(self.net, "arch_name", type(self.net).__name__)
            raise UserError(
                f"label {bad} is outside the {self.num_classes} classes of the {name} network "
                f"(labels must be 0..{self.num_classes - 1})"
            )

    def training_loss(self, rates: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of what :meth:`forward` gave for labels ``y``, as a training step takes it (nothing logged)."""
        return self._loss(*self._flat(rates, y))

    def _flat(self, rates: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # per step, every step is a sample of its own: [T * N, classes] and [T * N]
        return (rates.flatten(0, 1), y.flatten()) if self.per_step else (rates, y)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        if y.device.type == "cpu":
            self.check_labels(y)
        rates, y = self._flat(self(x), y)
        loss = self._loss(rates, y)
        self.accuracy[f"{stage}_acc"](rates, y)
        # training loss per step (as train/loss_step) and per epoch; accuracies per epoch. Under DDP
        # the loss is averaged over processes; the torchmetrics accuracies reduce themselves.
        log = dict(add_dataloader_idx=False, batch_size=len(x[0] if self.per_step else y), on_epoch=True)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", on_step=stage == "train", sync_dist=True, **log)
        self.log(f"{stage}/acc", self.accuracy[f"{stage}_acc"], prog_bar=True, on_step=False, **log)
        return loss, rates, y

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")[0]

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0):
        self._step(batch, self._val_stage(dataloader_idx))

    def test_step(self, batch, batch_idx):
        """The loss; the scores and labels (``[N, classes]`` and ``[N]``; per step flattened) for callbacks that
        count them (:class:`plifnet.callbacks.ConfusionMatrix`)."""
        loss, scores, labels = self._step(batch, "test")
        return {"loss": loss, "scores": scores.detach(), "labels": labels}

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0):
        """Class probabilities ``[N, classes]`` (``[T, N, classes]`` with a readout per step): softmax of the
        scores for cross-entropy, else the normalised rates (uniform where no output neuron fired)."""
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        rates = self(x)
        if self.hparams.loss == "cross_entropy":
            return rates.softmax(-1)
        total = rates.sum(-1, keepdim=True)
        return torch.where(total > 0, rates / total.clamp_min(1e-12), torch.full_like(rates, 1 / self.num_classes))

    def _val_stage(self, dataloader_idx: int) -> str:
        """The data module names its validation loaders (``val``, ``test``); a plain loader is ``val``."""
        names = getattr(getattr(compat.attached_trainer(self), "datamodule", None), "val_loader_names", None)
        return names[dataloader_idx] if names else "val"

    def on_validation_epoch_end(self):
        # the records of training (best accuracies, protocol B) change during fit only: `plifnet validate`
        # or `test` of a checkpoint must leave them as training left them
        if self.trainer.sanity_checking or self.trainer.state.fn != TrainerFn.FITTING:
            return
        logged = self.trainer.callback_metrics
        # protocol B takes the test accuracy of the *earliest* epoch with the best validation accuracy,
        # the epoch whose checkpoint ModelCheckpoint keeps (it replaces its best only on a strict gain)
        if "val/acc" in logged and "test/acc" in logged and logged["val/acc"] > self.best["val_acc"].max_value:
            self.test_acc_at_best_val.fill_(logged["test/acc"])
        for stage in ("val", "test"):
            if f"{stage}/acc" in logged:
                self.best[f"{stage}_acc"](logged[f"{stage}/acc"])
                self.log(f"{stage}/acc_best", self.best[f"{stage}_acc"].compute())
        # what picks the best checkpoint: validation accuracy, or test accuracy (protocol A, as in
        # the authors' code) when the data module has no validation split
        selection = logged.get("val/acc", logged.get("test/acc"))
        if selection is not None:
            self.log("monitor/acc", selection)
        if "val/acc" in logged and "test/acc" in logged:
            self.log("test/acc_at_best_val", self.test_acc_at_best_val)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Record what data the run trained on (:func:`data_identity`), so that resuming it on other data
        (``--ckpt_path last`` in a folder of another dataset's run) is refused instead of mixing the two."""
        datamodule = getattr(compat.attached_trainer(self), "datamodule", None)
        if datamodule is not None:
            checkpoint["plifnet_data"] = data_identity(type(datamodule), vars(datamodule))

    def configure_callbacks(self):
        """:class:`plifnet.callbacks.ResetState`, where the trainer has none: a spiking network's state
        must never leak from batch to batch, whoever builds the trainer."""
        from plifnet.callbacks import ResetState

        if any(isinstance(callback, ResetState) for callback in self.trainer.callbacks):
            return []
        return [ResetState()]

    def configure_optimizers(self):
        """The optimizer over two parameter groups, the neurons' time constants (``tau_lr``,
        ``tau_weight_decay``) and everything else, and its schedule."""
        hp = self.hparams
        own = {id(p) for p in self.parameters()}
        taus = {
            id(p): p
            for module in contract.neurons(self.net).values()
            for p in contract.tau_parameters(module)
            if id(p) in own
        }
        groups = [{"params": [p for p in self.parameters() if id(p) not in taus]}]
        if taus:
            groups.append(
                {
                    "params": list(taus.values()),
                    "weight_decay": hp.tau_weight_decay,
                    **({"lr": hp.tau_lr} if hp.tau_lr is not None else {}),
                }
            )
        # fused: one pass over each parameter instead of one kernel per operation and temporaries
        # (MNIST network on the CPU: 8 ms instead of 34 per step)
        optimizer = (self.optimizer or partial(torch.optim.Adam, lr=1e-3, fused=True))(groups)
        scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=64)
            if self.lr_scheduler is None
            else self.lr_scheduler(optimizer)
        )
        config = {"scheduler": scheduler, "interval": hp.lr_interval}
        if isinstance(scheduler, CosineToEnd):
            trainer = compat.attached_trainer(self)
            if trainer is None:
                raise RuntimeError(
                    "CosineToEnd needs the trainer's run length: configure the optimizers under a Trainer"
                )
            scheduler.set_total(
                trainer.max_epochs if config["interval"] == "epoch" else trainer.estimated_stepping_batches
            )
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


DATA_IDENTITY = (  # what makes two runs' data differ
    "dataset",
    "val_fraction",
    "split_seed",
    "time_steps",
    "split_by",
    "order",
    "permutation_seed",
    "dt",
)


def data_identity(cls: type, values) -> dict:
    """The data module's class path and the values of :data:`DATA_IDENTITY` it has (its dataset, its split, its
    frames): what a resumed run must share with the run it continues. Where it is read from, with how many
    workers and in what batches are not among them."""
    return {
        "class_path": f"{cls.__module__}.{cls.__qualname__}",
        **{key: values[key] for key in DATA_IDENTITY if isinstance(values.get(key), (str, int, float))},
    }
