import lightning as L
import pytest
import torch
import torch.nn.functional as F

from plifnet.module import SpikingClassifier
from plifnet.neurons import LIF, PLIF


def test_rate_mse_is_mse_of_time_averaged_votes_against_one_hot():
    model = SpikingClassifier("mnist", time_steps=3).eval()
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 9, 3])
    rates = model.net(x).mean(0)
    torch.testing.assert_close(model(x), rates)
    expected = ((rates - F.one_hot(y, 10).float()) ** 2).mean()
    torch.testing.assert_close(model._loss(rates, y), expected)
    ce = SpikingClassifier("mnist", time_steps=3, loss="cross_entropy")
    torch.testing.assert_close(ce._loss(rates, y), F.cross_entropy(rates, y))


def test_predict_returns_probabilities():
    model = SpikingClassifier("mnist", time_steps=2).eval()
    probabilities = model.predict_step((torch.randn(5, 1, 28, 28) * 3, torch.zeros(5)), 0)
    assert probabilities.shape == (5, 10)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(5))
    assert (probabilities >= 0).all()
    silent = model.predict_step(torch.full((2, 1, 28, 28), -100.0), 0)  # nothing fires: uniform
    torch.testing.assert_close(silent, torch.full((2, 10), 0.1))


def test_hyperparameters_choose_the_neuron():
    lif = SpikingClassifier("mnist", neuron="lif", tau=16.0)
    assert all(isinstance(m, LIF) and m.tau == 16 for m in lif.net.spiking_layers().values())
    plif = SpikingClassifier("mnist", tau=16.0, v_reset=None, surrogate="sigmoid", surrogate_alpha=3.0)
    layer = plif.net.spiking_layers()["conv1"]
    assert isinstance(layer, PLIF) and layer.tau.item() == pytest.approx(16.0) and layer.v_reset is None
    assert layer.surrogate.alpha == 3.0


def test_a_training_step_updates_tau():
    model = SpikingClassifier("mnist", time_steps=2)
    optimizer = model.configure_optimizers()["optimizer"]
    before = {name: m.w.item() for name, m in model.net.spiking_layers().items()}
    loss = model._loss(model(torch.randn(4, 1, 28, 28)), torch.tensor([1, 2, 3, 4]))
    loss.backward()
    optimizer.step()
    after = {name: m.w.item() for name, m in model.net.spiking_layers().items()}
    # fc2 sees no input spikes until fc1 starts firing, so its tau cannot move at the first step
    assert all(after[name] != before[name] for name in ("conv1", "conv2", "fc1"))


def test_labels_outside_the_classes_are_rejected_before_the_step(tmp_path):
    model = SpikingClassifier("mnist", time_steps=1)
    data = torch.utils.data.TensorDataset(torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 10, 3]))
    trainer = L.Trainer(default_root_dir=tmp_path, max_epochs=1, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
    w = model.net.spiking_layers()["conv1"].w.clone()
    with pytest.raises(ValueError, match=r"label 10 is outside the 10 classes of the mnist network \(labels must be 0..9\)"):
        trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=2))
    assert model.net.spiking_layers()["conv1"].w.item() != w.item()  # the first batch trained, the second stopped


def test_checkpoint_round_trip_keeps_tau(tmp_path):
    model = SpikingClassifier("mnist", time_steps=2, tau=4.0)
    with torch.no_grad():
        model.net.spiking_layers()["fc1"].w.fill_(0.7)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = SpikingClassifier.load_from_checkpoint(tmp_path / "m.ckpt")
    assert loaded.hparams.tau == 4.0
    assert loaded.net.spiking_layers()["fc1"].w.item() == pytest.approx(0.7)
