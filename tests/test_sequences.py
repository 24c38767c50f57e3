"""Networks for sequences (plifnet/sequences.py) in training: the readouts against plain loops, labels per step with
their loss and accuracy against a brute-force count, the readout/loss pairs refused, and a recurrent adaptive
network trained by Lightning with its time constants logged (histograms in TensorBoard and wandb), its firing
rates and its recurrent synapses counted."""

import csv
import sys
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from plifnet.callbacks import FiringRateMonitor, ResetState, SynapticOps, TauMonitor
from plifnet.data import ECGDataModule
from plifnet.errors import UserError
from plifnet.module import SpikingClassifier
from plifnet.options import NeuronOptions
from plifnet.sequences import LeakyReadout, SequenceNet

sys.path.insert(0, str(Path(__file__).parent))
from test_callbacks import read_wandb_history  # noqa: E402
from test_ecg_data import write_files  # noqa: E402


@pytest.mark.parametrize("reduce", ["max", "mean", "last", "step"])
def test_the_leaky_readout_is_its_plain_loop(reduce):
    torch.manual_seed(0)
    readout = LeakyReadout(5, 3, reduce, tau=4.0)
    with torch.no_grad():
        readout.w.copy_(torch.tensor([-1.0, 0.0, 2.0]))  # three taus
    spikes = (torch.rand(30, 2, 5) < 0.3).float()
    k = torch.sigmoid(readout.w)
    u, trace = torch.zeros(2, 3), []
    for t in range(30):
        u = u + k * (spikes[t] @ readout.linear.weight.T + readout.linear.bias - u)
        trace.append(u)
    trace = torch.stack(trace)
    expected = {"max": trace.max(0).values, "mean": trace.mean(0), "last": trace[-1], "step": trace}[reduce]
    torch.testing.assert_close(readout(spikes), expected)


def step_model(**net):
    net = SequenceNet(4, 6, hidden=[8], neuron="plif", options=NeuronOptions(v_threshold=0.2), readout="step", **net)
    return SpikingClassifier(net, loss="cross_entropy")


def test_labels_per_step_train_on_the_labelled_steps_only():
    torch.manual_seed(1)
    model = step_model()
    x = (torch.rand(40, 3, 4) < 0.3).float()
    y = torch.randint(0, 6, (40, 3))
    y[:5] = -1  # unlabelled steps
    y[20:, 1] = -1
    scores = model(x)
    assert scores.shape == (40, 3, 6)
    loss = model._loss(scores.flatten(0, 1), y.flatten())
    terms = [-F.log_softmax(scores[t, n], -1)[y[t, n]] for t in range(40) for n in range(3) if y[t, n] >= 0]
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    accuracy = model.accuracy["train_acc"]
    accuracy(scores.flatten(0, 1), y.flatten())
    hits = [scores[t, n].argmax() == y[t, n] for t in range(40) for n in range(3) if y[t, n] >= 0]
    assert accuracy.compute().item() == pytest.approx(sum(hits).item() / len(hits))
    assert model._loss(scores.flatten(0, 1), torch.full((120,), -1)).item() == 0  # nothing labelled: no NaN


def test_labels_of_the_wrong_kind_are_refused_in_one_line():
    model = step_model()
    with pytest.raises(UserError, match=r"labels have shape \[3\] .* a score per time step"):
        model.check_labels(torch.tensor([0, 1, 2]))
    model.check_labels(torch.tensor([[0, -1], [5, 2]]))  # per step, with an unlabelled step: fine
    with pytest.raises(UserError, match="label 6 is outside the 6 classes"):
        model.check_labels(torch.tensor([[0, 6]]))
    per_sequence = SpikingClassifier(SequenceNet(4, 6, hidden=[8], readout="max"), loss="cross_entropy")
    with pytest.raises(UserError, match=r"labels have shape \[2, 2\] .* one score per sequence"):
        per_sequence.check_labels(torch.tensor([[0, 1], [2, 3]]))
    with pytest.raises(UserError, match="label -1 is outside"):
        per_sequence.check_labels(torch.tensor([0, -1]))


def test_a_membrane_readout_with_the_rate_loss_is_refused():
    with pytest.raises(UserError, match="readout 'max' gives a membrane's scores, .* --model.loss cross_entropy"):
        SpikingClassifier(SequenceNet(4, 6, hidden=[8], readout="max"))
    rates = SpikingClassifier(SequenceNet(4, 6, hidden=[8], readout="rate"))  # the paper's rate vote: fine
    assert rates(torch.rand(10, 2, 4)).shape == (2, 6)


def test_a_sequence_of_the_wrong_width_is_refused_in_one_line():
    net = SequenceNet(4, 6, hidden=[8])
    with pytest.raises(UserError, match="takes a sequence x \\[T, N, features\\]"):
        net(torch.rand(2, 4))
    with pytest.raises(UserError, match="28 features per step, and the network takes 4: give --model.net.inputs 28"):
        net(torch.rand(5, 2, 28))


def test_a_recurrent_adaptive_network_trains_with_its_time_constants_followed(tmp_path, monkeypatch):
    """ALIF with a membrane and an adaptation tau per neuron, on ECG files of the published layout: every time
    constant logged as tau/<layer>[/<name>] with mean, min, max and a histogram in TensorBoard and wandb; the
    firing rates of the recurrent layer; the recurrent synapses counted among the synaptic operations."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    root = write_files(tmp_path / "ecg", sequences=(16, 8), steps=50)
    options = NeuronOptions(tau=5.0, tau_adapt=20.0, adaptation=0.1, per_channel=True, tau_init="gamma",
                            tau_spread=0.3, v_threshold=0.05)  # fmt: skip
    net = SequenceNet(4, 6, hidden=[12], neuron="alif", options=options, readout="step")
    model = SpikingClassifier(net, loss="cross_entropy", optimizer=partial(torch.optim.Adam, lr=0.05))
    tensorboard = TensorBoardLogger(tmp_path, name="tb")
    trainer = L.Trainer(
        max_epochs=2,
        logger=[CSVLogger(tmp_path, name="csv"), tensorboard, WandbLogger(save_dir=str(tmp_path), offline=True)],
        callbacks=[ResetState(), TauMonitor(every_n_steps=1), FiringRateMonitor(), SynapticOps()],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, ECGDataModule(root=str(root), batch_size=4, num_workers=0, val_fraction=0.25))
    import wandb

    wandb.finish()
    neuron = net.layers[0].neuron
    run = Path(trainer.log_dir)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    last = [r for r in rows if r.get("tau/layers.0.neuron/tau_adapt/mean")][-1]
    assert float(last["tau/layers.0.neuron/tau_adapt/max"]) == pytest.approx(neuron.tau_adapt.max().item(), rel=1e-6)
    assert float(last["tau/layers.0.neuron/min"]) == pytest.approx(neuron.tau.min().item(), rel=1e-6)
    assert any(r.get("firing_rate/layers.0.neuron") for r in rows) and any(r.get("val/acc") for r in rows)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    histograms = EventAccumulator(tensorboard.log_dir).Reload().Tags()["histograms"]
    assert {"tau/layers.0.neuron/hist", "tau/layers.0.neuron/tau_adapt/hist"} <= set(histograms)
    logged = {key for row in read_wandb_history(tmp_path / "wandb") for key in row}  # a histogram's fields
    assert {"tau/layers.0.neuron/hist/_type", "tau/layers.0.neuron/tau_adapt/hist/values"} <= logged
    with open(run / "energy.csv") as f:
        layers = {row["name"]: row for row in csv.DictReader(f)}
    recurrent = layers["layers.0.recurrent"]  # the previous step's spikes through W_rec, one call per step
    assert recurrent["input"] == "spikes" and float(recurrent["sops"]) > 0
    # its ANN counterpart, an RNN, runs all 50 steps: 12 x 12 MACs each, at 4.6 pJ (45 nm fp32)
    assert float(recurrent["macs"]) == 12 * 12 * 50
    assert float(recurrent["ann_energy_pj"]) == pytest.approx(12 * 12 * 50 * 4.6, rel=1e-6)


SMALL = ["--data.batch_size", "4", "--data.num_workers", "0", "--trainer.limit_train_batches", "2"]
SMALL += ["--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--trainer.log_every_n_steps", "1"]


@pytest.mark.parametrize("config", ["smnist", "psmnist", "rows", "ecg", "shd", "ssc"])
def test_each_sequence_config_runs_its_smoke_run(config, run_cli, tiny_digits, tmp_path):
    """``plifnet fit --config NAME --config trainer/smoke`` on data in each dataset's layout (MNIST images; ECG and
    SHD/SSC files written here), with fewer and smaller batches; the recipes and networks as configured, the MNIST
    networks narrowed (784 steps of 256-wide recurrent layers take seconds a batch on this CPU; psmnist and row-wise
    MNIST are smnist's network, and the order of the pixels is the point there)."""
    from test_speech_data import release

    root = tiny_digits if config in ("smnist", "psmnist", "rows") else tmp_path / config
    if config == "ecg":
        write_files(root, sequences=(12, 4), steps=60)
    elif config in ("shd", "ssc"):
        release(root, config)
    narrower = (
        ["--model.net.hidden", "[8, 8, 8]" if config == "smnist" else "[8]"]
        if "mnist" in config or config == "rows"
        else []
    )
    if config == "rows":  # row-wise MNIST: smnist with a row per step
        config, narrower = "smnist", [*narrower, "--data.order", "row", "--model.net.inputs", "28"]
    result = run_cli("fit", "--config", config, "--config", "trainer/smoke", "--data.root", root, *SMALL, *narrower,
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 2 and all(loss > 0 and np.isfinite(loss) for loss in losses)
    assert any(r.get("test/acc") for r in rows) and (run / "checkpoints" / "last.ckpt").is_file()
    assert any(key.startswith("tau/") for key in rows[0])  # every config learns its time constants


def test_nir_export_refuses_a_sequence_network_in_one_line():
    from plifnet.nir import to_nir

    with pytest.raises(UserError, match="SequenceNet .* has no NIR export in this version"):
        to_nir(SequenceNet(4, 6, hidden=[8]).eval())


def test_a_recurrent_run_resumed_from_last_ends_as_the_uninterrupted_one(run_cli, tmp_path):
    """The ecg recipe (ALIF, a tau per neuron, its schedule over max_epochs): two epochs in one run, and one epoch
    stopped by max_steps and continued with --ckpt_path last, end with the same weights, bit for bit."""
    root = write_files(tmp_path / "ecg", sequences=(16, 4), steps=40)
    args = ["--config", "ecg", "--data.root", root, "--data.batch_size", "4", "--data.num_workers", "0"]
    args += ["--model.net.hidden", "[8]", "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1"]
    finals = []
    for name, parts in (("whole", [[]]), ("resumed", [["--trainer.max_steps", "3"], ["--ckpt_path", "last"]])):
        folder = tmp_path / name
        folder.mkdir()
        for extra in parts:
            result = run_cli("fit", *args, *extra, cwd=folder)
            assert result.returncode == 0, result.stderr[-3000:]
        last = sorted(folder.glob("runs/lightning_logs/version_*/checkpoints/last.ckpt"))[-1]
        finals.append(torch.load(last, weights_only=True))
    assert finals[0]["global_step"] == finals[1]["global_step"] == 6
    for name, value in finals[0]["state_dict"].items():
        torch.testing.assert_close(finals[1]["state_dict"][name], value, rtol=0, atol=0, msg=name)


def test_a_folder_named_like_a_config_does_not_hide_the_shipped_config(tmp_path, monkeypatch):
    """Data in ./ecg (as the ECG data often sits) and --config ecg: the fit and the study's fits take the shipped
    config, not the folder."""
    from plifnet.cli import shipped_config
    from plifnet.grid import Setting
    from plifnet.study import fit_command

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ecg").mkdir()
    assert shipped_config("ecg").endswith("configs/ecg.yaml")
    command = fit_command(Setting("alif", ("--model.net.neuron", "alif"), 2020), ["ecg"], [], tmp_path / "out")
    assert command[command.index("--config") + 1] == "ecg"  # a name, resolved by the fit itself
