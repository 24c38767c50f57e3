import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from plifnet.models import SpikingNet
from plifnet.module import SpikingClassifier
from plifnet.neurons import LIF, PLIF
from plifnet.options import NeuronOptions
from plifnet.surrogates import Sigmoid


class FixedScores(torch.nn.Module):
    """A network whose class scores ``[T, N, classes]`` are given."""

    def __init__(self, scores):
        super().__init__()
        self.scores, self.classes = scores, scores.shape[-1]
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.scores + self.weight


def test_rates_and_losses_on_values_worked_out_by_hand():
    # T = 2, N = 2, 3 classes: the votes of the two steps average to the rates
    scores = torch.tensor([[[0.0, 1.0, 1.0], [0.2, 0.0, 0.0]], [[1.0, 1.0, 0.0], [0.6, 0.0, 0.4]]])
    y = torch.tensor([1, 0])
    model = SpikingClassifier(net=FixedScores(scores))
    rates = model(torch.zeros(2, 1))
    torch.testing.assert_close(rates, torch.tensor([[0.5, 1.0, 0.5], [0.4, 0.0, 0.2]]))
    # rate MSE against one-hot: ((0.25 + 0 + 0.25) + (0.36 + 0 + 0.04)) / 6 = 0.15
    torch.testing.assert_close(model._loss(rates, y), torch.tensor(0.15))
    # cross-entropy: -log(e^1 / (2 e^0.5 + e^1)) and -log(e^0.4 / (e^0.4 + e^0 + e^0.2)), averaged
    ce = SpikingClassifier(net=FixedScores(scores), loss="cross_entropy")
    expected = (
        -math.log(math.e / (2 * math.exp(0.5) + math.e)) - math.log(math.exp(0.4) / (math.exp(0.4) + 1 + math.exp(0.2)))
    ) / 2
    torch.testing.assert_close(ce._loss(rates, y), torch.tensor(expected))


def test_predict_returns_the_rates_normalised_and_uniform_where_nothing_fired():
    scores = torch.tensor(
        [[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]
    )  # rates 0.5 1 0; silent
    model = SpikingClassifier(net=FixedScores(scores))
    probabilities = model.predict_step(torch.zeros(2, 1), 0)
    torch.testing.assert_close(probabilities, torch.tensor([[1 / 3, 2 / 3, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    ce = SpikingClassifier(net=FixedScores(scores), loss="cross_entropy")
    e = math.e**0.5
    torch.testing.assert_close(
        ce.predict_step(torch.zeros(2, 1), 0)[0], torch.tensor([e, math.e, 1]) / (e + math.e + 1)
    )


def test_hyperparameters_choose_the_neuron():
    lif = SpikingClassifier(SpikingNet.paper("mnist", neuron="lif", options=NeuronOptions(tau=16.0)))
    assert all(isinstance(m, LIF) and m.tau == 16 for m in lif.net.spiking_layers().values())
    plif = SpikingClassifier(
        SpikingNet.paper("mnist", options=NeuronOptions(tau=16.0, v_reset=None, surrogate=Sigmoid(alpha=3.0)))
    )
    layer = plif.net.spiking_layers()["conv1"]
    assert isinstance(layer, PLIF) and layer.tau.item() == pytest.approx(16.0) and layer.v_reset is None
    assert layer.surrogate.alpha == 3.0


def test_a_training_step_updates_tau():
    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=2))
    optimizer = model.configure_optimizers()["optimizer"]
    before = {name: m.w.item() for name, m in model.net.spiking_layers().items()}
    loss = model._loss(model(torch.randn(4, 1, 28, 28)), torch.tensor([1, 2, 3, 4]))
    loss.backward()
    optimizer.step()
    after = {name: m.w.item() for name, m in model.net.spiking_layers().items()}
    # fc2 sees no input spikes until fc1 starts firing, so its tau cannot move at the first step
    assert all(after[name] != before[name] for name in ("conv1", "conv2", "fc1"))


def test_labels_outside_the_classes_are_rejected_before_the_step(tmp_path):
    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=1))
    data = torch.utils.data.TensorDataset(torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 10, 3]))
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    w = model.net.spiking_layers()["conv1"].w.clone()
    with pytest.raises(
        ValueError, match=r"label 10 is outside the 10 classes of the mnist network \(labels must be 0..9\)"
    ):
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=2))
    assert model.net.spiking_layers()["conv1"].w.item() != w.item()  # the first batch trained, the second stopped


def test_checkpoint_round_trip_keeps_tau(tmp_path):
    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=2, options=NeuronOptions(tau=4.0)))
    with torch.no_grad():
        model.net.spiking_layers()["fc1"].w.fill_(0.7)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    # a network built in a script is not in the hyperparameters (it would need pickled code): given again
    loaded = SpikingClassifier.load_from_checkpoint(tmp_path / "m.ckpt", net=SpikingNet.paper("mnist", time_steps=2))
    assert loaded.net.spiking_layers()["fc1"].w.item() == pytest.approx(0.7)
    assert loaded.net.spiking_layers()["conv1"].tau.item() == pytest.approx(4.0)


class ScriptedNet(torch.nn.Module):
    """Class rates whose accuracy is set per epoch: a sample ``x = (loader, index, label)`` is
    classified right when its index is below ``10 * accuracy[loader][epoch]``."""

    classes = 3

    def __init__(self, accuracy):
        super().__init__()
        self.accuracy, self.epoch = accuracy, 0
        self.weight = torch.nn.Parameter(torch.zeros(()))  # something for the optimiser to step

    def forward(self, x):
        loader, index, label = x.long().unbind(1)
        right = index < torch.tensor([round(10 * self.accuracy[int(i)][self.epoch]) for i in loader])
        predicted = torch.where(right, label, (label + 1) % self.classes)
        return F.one_hot(predicted, self.classes).float() + self.weight


class ScriptedData(L.LightningDataModule):
    val_loader_names = ["val", "test"]

    def loader(self, which):
        x = torch.tensor([[which, i, i % 3] for i in range(10)], dtype=torch.float32)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x[:, 2].long()), batch_size=5)

    def train_dataloader(self):
        return self.loader(0)

    def val_dataloader(self):
        return [self.loader(0), self.loader(1)]

    def test_dataloader(self):
        return self.loader(1)


class FollowEpoch(L.Callback):
    def on_validation_epoch_start(self, trainer, pl_module):
        pl_module.net.epoch = trainer.current_epoch


def test_protocol_b_takes_the_epoch_of_the_best_checkpoint_and_evaluation_changes_no_record(tmp_path):
    """Validation accuracy ties at its best (epochs 1 and 2): ModelCheckpoint keeps epoch 1 (the
    first), so protocol B must report epoch 1's test accuracy (0.6), not epoch 2's (0.9). Then
    `validate` and `test` runs of a better-scoring network must leave every training record as it was."""
    net = ScriptedNet({0: [0.5, 0.7, 0.7, 0.6, 1.0], 1: [0.4, 0.6, 0.9, 0.3, 1.0]})
    model = SpikingClassifier(net=net)
    best = ModelCheckpoint(tmp_path, monitor="monitor/acc", mode="max", filename="{epoch}")
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=4,
        logger=False,
        callbacks=[best, FollowEpoch()],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=ScriptedData())
    assert Path(best.best_model_path).name == "epoch=1.ckpt"
    records = {"test/acc_at_best_val": 0.6, "val/acc_best": 0.7, "test/acc_best": 0.9}
    assert {key: round(trainer.callback_metrics[key].item(), 6) for key in records} == records

    state = {key: value.clone() for key, value in model.state_dict().items()}
    net.epoch = 4  # all right from here: a validate run would raise every best accuracy
    evaluator = L.Trainer(
        default_root_dir=tmp_path, logger=False, callbacks=[], enable_progress_bar=False, enable_model_summary=False
    )
    evaluator.validate(model, datamodule=ScriptedData())
    assert evaluator.callback_metrics["val/acc"].item() == 1.0  # it did evaluate the better network
    evaluator.test(model, datamodule=ScriptedData())
    assert all(torch.equal(model.state_dict()[key], value) for key, value in state.items())
