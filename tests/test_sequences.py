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


def nir_equations(graph, x):
    """A graph of sequence_to_nir's form run from NIR's equations at dt = 1, written here: Affine and Linear nodes,
    LIF (v += (v_leak - v + r I) / tau, a spike where v >= v_threshold, then v = v_reset), LI (v += (v_leak - v +
    r I) / tau); a node's input is the sum of its incoming edges, and a Linear on a loop (lif -> rec -> lif) gives
    what it computed from the previous step's spikes (0 at the first)."""
    import nir

    nodes, edges = graph.nodes, set(graph.edges)
    array = lambda value: torch.from_numpy(np.asarray(value))  # noqa: E731
    loops = {t for s, t in edges if (t, s) in edges and isinstance(nodes[t], nir.Linear)}
    order, name = [], "input"
    while name != "output":
        name = next(t for s, t in edges if s == name and t not in loops)
        order.append(name)
    incoming = {name: [s for s, t in edges if t == name] for name in nodes}
    state, fed_back, out = {}, {loop: 0.0 for loop in loops}, []
    for x_t in x:
        current = {"input": x_t}
        for name in order[:-1]:
            node = nodes[name]
            total = sum(fed_back[s] if s in loops else current[s] for s in incoming[name])
            if isinstance(node, nir.Affine):
                current[name] = total @ array(node.weight).T + array(node.bias)
            elif isinstance(node, nir.LIF):
                v = state.get(name, 0.0)
                v = v + (array(node.v_leak) - v + array(node.r) * total) / array(node.tau)
                current[name] = (v >= array(node.v_threshold)).double()
                state[name] = torch.where(current[name] > 0, array(node.v_reset), v)
            elif isinstance(node, nir.LI):
                v = state.get(name, 0.0)
                state[name] = current[name] = v + (array(node.v_leak) - v + array(node.r) * total) / array(node.tau)
        for loop in loops:
            (source,) = incoming[loop]
            fed_back[loop] = current[source] @ array(nodes[loop].weight).T
        out.append(current[order[-2]])
    return torch.stack(out)


@pytest.mark.parametrize("recurrent, readout", [(True, "step"), (False, "rate"), (True, "max")])
def test_a_sequence_network_exports_to_nir_and_reads_back_to_the_last_spike(recurrent, readout, tmp_path):
    import nir

    from plifnet.nir import from_nir, to_nir

    torch.manual_seed(5)
    options = NeuronOptions(tau=4.0, per_channel=True, tau_init="lognormal", tau_spread=0.4, v_threshold=0.1)
    net = SequenceNet(3, 4, hidden=[6, 5], recurrent=recurrent, options=options, readout=readout).double().eval()
    x = (torch.rand(30, 2, 3, dtype=torch.float64) < 0.5).double() * 3
    nir.write(tmp_path / "seq.nir", to_nir(net, dtype=np.float64))
    back = from_nir(tmp_path / "seq.nir").eval()
    assert isinstance(back, SequenceNet) and back.recurrent == recurrent and back.readout == readout
    with torch.no_grad():
        expected, got = net(x), back(x)
    assert torch.equal(got, expected)
    spikes = net.layers[1](net.layers[0](x))
    assert 0.05 < spikes.mean() < 0.9  # the layers fire: the comparison is of something
    graph = to_nir(net, dtype=np.float64)
    if readout != "max":  # NIR has no reduction over time: the metadata names it
        with torch.no_grad():
            assert torch.allclose(nir_equations(graph, x), expected, rtol=0, atol=1e-12)
    assert graph.metadata["readout"] == readout and graph.metadata["input"] == "sequence"


def test_what_nir_cannot_express_of_a_sequence_network_is_refused_in_one_line():
    from plifnet.nir import to_nir

    with pytest.raises(UserError, match="layer lif1: neuron ALIF overrides the step .* no NIR form"):
        to_nir(SequenceNet(4, 6, hidden=[8], neuron="alif").eval())
    with pytest.raises(UserError, match="soft reset .* has no NIR form"):
        to_nir(SequenceNet(4, 6, hidden=[8], options=NeuronOptions(v_reset=None)).eval())
    with pytest.raises(UserError, match="takes its steps and features from its input: give neither time_steps"):
        to_nir(SequenceNet(4, 6, hidden=[8]).eval(), time_steps=100)
    with pytest.raises(UserError, match="--target snntorch: .* exports with --target nir"):
        to_nir(SequenceNet(4, 6, hidden=[8]).eval(), target="snntorch")


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


def test_plifnet_export_writes_a_trained_sequence_network_that_reads_back(run_cli, tmp_path):
    from plifnet.cli import load_model
    from plifnet.export import main as export_main
    from plifnet.nir import from_nir

    root = write_files(tmp_path / "ecg", sequences=(12, 4), steps=40)
    args = ["--config", "ecg", "--config", "trainer/smoke", "--data.root", root, "--data.num_workers", "0"]
    args += ["--data.batch_size", "4", "--model.net.hidden", "[8]", "--model.net.neuron", "plif"]
    result = run_cli("fit", *args, "--model.net.options", "{v_reset: 0.0}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    exported = run_cli("--ckpt_path", checkpoint, "--out", tmp_path / "ecg.nir", cwd=tmp_path,
                       main=export_main)  # fmt: skip
    assert exported.returncode == 0 and "sequence input" in exported.stderr, exported.stderr[-2000:]
    net = load_model(str(checkpoint))[0].net.eval()
    back = from_nir(tmp_path / "ecg.nir").eval()
    x = (torch.rand(40, 3, 4) < 0.3).float()
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


def test_every_time_constant_of_an_adaptive_network_is_in_the_time_constant_group():
    net = SequenceNet(4, 6, hidden=[8, 8], neuron="adlif", options=NeuronOptions(per_channel=True), readout="step")
    model = SpikingClassifier(net, loss="cross_entropy", tau_weight_decay=0.0)
    optimizer = model.configure_optimizers()["optimizer"]
    groups = [{id(p) for p in group["params"]} for group in optimizer.param_groups]
    taus = {id(layer.neuron.w) for layer in net.layers} | {id(layer.neuron.w_adapt) for layer in net.layers}
    assert len(groups) == 2 and groups[1] == taus and not groups[0] & taus
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
