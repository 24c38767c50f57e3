"""Networks written with SpikingJelly 2.0, snnTorch 1.0 and Norse 1.1 (the real libraries, installed by the
test extra), and by hand, wrapped by plifnet: found, reset, their tau read, and trained with the same
gradients as their own libraries' loops; a network that keeps state plifnet cannot reset is refused."""

import copy
import csv
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import ROOT
from plifnet import contract, export
from plifnet.callbacks import ResetState, spiking_layers
from plifnet.energy import estimate
from plifnet.module import SpikingClassifier
from plifnet.neurons import LIF, PLIF

snn = pytest.importorskip("snntorch")  # the test extra installs all three; a missing one is a skip with its name
sj = pytest.importorskip("spikingjelly.activation_based")
norse = pytest.importorskip("norse.torch")
from snntorch import utils as snn_utils  # noqa: E402
from spikingjelly.activation_based import functional as sj_functional, neuron as sj_neuron  # noqa: E402

from plifnet_example import handwritten_net, norse_net, snntorch_net, spikingjelly_net  # noqa: E402

FAMILIES = {
    "spikingjelly": spikingjelly_net,
    "snntorch": snntorch_net,
    "norse": norse_net,
    "handwritten": handwritten_net,
}
NEURON_CLASSES = {"spikingjelly": "ParametricLIFNode", "snntorch": "Leaky", "norse": "LIFCell", "handwritten": "LIF"}


def driven(net: nn.Module) -> nn.Module:
    """The network with its weights scaled up, so that every layer fires on uniform images."""
    torch.manual_seed(3)
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.weight.data *= 3 if isinstance(m, nn.Conv2d) else 12
    return net


def images(n=6):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(5)) * 2


@pytest.mark.parametrize("family", FAMILIES)
def test_the_neurons_of_each_family_are_found_with_their_tau(family):
    net = FAMILIES[family].Net()
    model = SpikingClassifier(net=net)
    layers = spiking_layers(model)
    assert len(layers) == 3 and {type(m).__name__ for m in layers.values()} == {NEURON_CLASSES[family]}
    assert all(contract.learns_tau(m) for m in layers.values())
    # PLIF tau0 2; snnTorch beta 0.5; Norse dt 1e-3 x tau_mem_inv 500; the hand-written tau 2
    assert all(float(contract.tau(m)) == pytest.approx(2.0) for m in layers.values())
    # what is not a neuron is not claimed: metrics, convolutions, BatchNorm, pooling
    assert not any(contract.is_neuron(m) for m in model.accuracy.modules())


def run_twice_unreset(net, x):
    with torch.no_grad():
        return net(x), net(x)


@pytest.mark.parametrize("family", FAMILIES)
def test_reset_makes_a_used_network_answer_as_a_fresh_one(family):
    net = driven(FAMILIES[family].Net()).eval()
    fresh = copy.deepcopy(net)
    x = images()
    first, second = run_twice_unreset(net, x)
    assert first.sum() > 0
    if family != "norse":  # Norse passes its state explicitly: nothing leaks, nothing to reset
        assert not torch.equal(first, second), "the network should carry state from one call to the next"
    contract.reset_state(net)
    with torch.no_grad():
        assert torch.equal(net(x), fresh(x))
    contract.check_forgets(net, x)  # and the leak check passes


def test_snntorch_reset_touches_this_network_only():
    """snnTorch's utils.reset resets every instance of a neuron class in the process; plifnet resets the
    neurons of the network it wraps and nothing else."""
    ours, other = driven(snntorch_net.Net()), driven(snntorch_net.Net())
    with torch.no_grad():
        ours(images()), other(images())
    kept = other.lif1.mem.clone()
    contract.reset_state(ours)
    assert ours.lif1.mem.numel() == 0 and torch.equal(other.lif1.mem, kept)


def test_spikingjelly_plif_tau_gives_plifnets_spikes():
    """tau = 1/sigmoid(w) read from SpikingJelly's own ParametricLIFNode: plifnet's PLIF with that tau fires
    the same spikes (both: decay_input, hard reset to 0), in multi- and single-step mode."""
    x = torch.rand(12, 4, 7, generator=torch.Generator().manual_seed(1)) * 2
    for step_mode in ("m", "s"):
        node = sj_neuron.ParametricLIFNode(init_tau=3.0, detach_reset=True, step_mode=step_mode)
        node.w.data.fill_(0.37)
        spikes = node(x) if step_mode == "m" else torch.stack([node(x_t) for x_t in x])
        ours = PLIF(tau=float(contract.tau(node)), backend="reference")(x)
        assert torch.equal(spikes, ours) and 0 < spikes.mean() < 1
    lif = sj_neuron.LIFNode(tau=4.0, step_mode="m")
    assert contract.tau(lif) == 4.0 and not contract.learns_tau(lif)
    assert contract.tau(sj_neuron.IFNode()) is None


def test_snntorch_beta_gives_plifnets_spikes():
    """tau = 1/(1 - beta) read from snnTorch's Leaky (reset to zero): plifnet's LIF with that tau, input not
    decayed, fires the same spikes; a vector beta gives one tau per neuron."""
    x = torch.rand(12, 4, 7, generator=torch.Generator().manual_seed(2)) * 1.5
    leaky = snn.Leaky(beta=0.8, reset_mechanism="zero", init_hidden=True)
    spikes = torch.stack([leaky(x_t) for x_t in x])
    ours = LIF(tau=float(contract.tau(leaky)), decay_input=False, backend="reference")(x)
    assert torch.equal(spikes, ours) and 0 < spikes.mean() < 1
    vector = snn.Leaky(beta=torch.tensor([0.5, 0.75, 0.9]), learn_beta=True)
    torch.testing.assert_close(contract.tau(vector), torch.tensor([2.0, 4.0, 10.0]))
    assert contract.learns_tau(vector) and not contract.learns_tau(snn.Leaky(beta=0.5))
    assert contract.tau(snn.Synaptic(alpha=0.9, beta=0.75)) == pytest.approx(4.0)  # the membrane's beta
    assert contract.tau(snn.Alpha(alpha=0.9, beta=0.8)) is None  # its betas decay synaptic currents


def test_norse_tau_gives_plifnets_spikes():
    """tau = 1/(dt tau_mem_inv) read from Norse's LIFCell: with the synaptic current gone each step
    (dt tau_syn_inv = 1) Norse's membrane is plifnet's LIF with that tau."""
    x = torch.rand(12, 4, 7, generator=torch.Generator().manual_seed(3)) * 3
    cell = norse.LIFCell(
        norse.LIFParameters(tau_mem_inv=torch.tensor(250.0), tau_syn_inv=torch.tensor(1000.0)), dt=1e-3
    )
    state, spikes = None, []
    for x_t in x:
        z, state = cell(x_t, state)
        spikes.append(z)
    spikes = torch.stack(spikes)
    assert float(contract.tau(cell)) == pytest.approx(4.0)
    ours = LIF(tau=float(contract.tau(cell)), backend="reference")(x)
    assert torch.equal(spikes, ours) and 0 < spikes.mean() < 1
    assert not contract.is_neuron(norse.LICell())  # a leaky integrator gives voltages, not spikes


class Grads(L.Callback):
    def __init__(self):
        self.seen = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.seen.append({name: p.grad.clone() for name, p in pl_module.net.named_parameters() if p.grad is not None})


def batches(n=3, size=4):
    generator = torch.Generator().manual_seed(7)
    return TensorDataset(
        torch.rand(n * size, 1, 28, 28, generator=generator) * 2, torch.randint(0, 10, (n * size,), generator=generator)
    )


@pytest.mark.parametrize("family", ["spikingjelly", "snntorch"])
def test_training_through_plifnet_equals_the_libraries_own_loop(family):
    """Three Adam steps through a plain Lightning Trainer with ResetState against the library's own
    loop (reset after every batch by functional.reset_net / utils.reset): equal gradients every step
    and equal weights after; without the reset the loop's second step differs (or fails)."""
    net = driven(FAMILIES[family].Net())
    theirs = FAMILIES[family].Net()  # not a deepcopy: snnTorch's reset finds only neurons whose __init__ ran
    theirs.load_state_dict(net.state_dict())
    data = batches()
    grads = Grads()
    L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ResetState(), grads],
    ).fit(SpikingClassifier(net=net), DataLoader(data, batch_size=4))

    optimizer = torch.optim.Adam(theirs.parameters(), lr=1e-3, fused=True)
    reset = (lambda: sj_functional.reset_net(theirs)) if family == "spikingjelly" else (lambda: snn_utils.reset(theirs))
    for step, (x, y) in enumerate(DataLoader(data, batch_size=4)):
        loss = F.mse_loss(theirs(x).mean(0), F.one_hot(y, 10).float())
        optimizer.zero_grad()
        loss.backward()
        for name, p in theirs.named_parameters():
            torch.testing.assert_close(grads.seen[step][name], p.grad, rtol=1e-6, atol=1e-8, msg=f"step {step}, {name}")
        optimizer.step()
        reset()
    assert len(grads.seen) == 3 and any(g.abs().sum() > 0 for g in grads.seen[1].values())
    for (name, p), q in zip(net.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-8, msg=name)


class Outputs(L.Callback):
    def __init__(self):
        self.seen = []

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.handle = pl_module.net.register_forward_hook(lambda m, i, out: self.seen.append(out.clone()))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_validating_the_same_batch_twice_gives_a_fresh_networks_answer(family):
    net = driven(FAMILIES[family].Net())
    fresh = copy.deepcopy(net).eval()
    x = images(4)
    data = TensorDataset(torch.cat([x, x]), torch.zeros(8, dtype=torch.long))
    outputs = Outputs()
    L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[ResetState(), outputs]
    ).validate(SpikingClassifier(net=net), DataLoader(data, batch_size=4))
    with torch.no_grad():
        expected = fresh(x)
    assert len(outputs.seen) == 2 and expected.sum() > 0
    assert torch.equal(outputs.seen[0], expected) and torch.equal(outputs.seen[1], expected)


class Remembers(nn.Module):
    """A neuron that keeps its membrane on self and has no reset(): plifnet cannot find or reset it."""

    def __init__(self):
        super().__init__()
        self.v = None

    def forward(self, x):
        v = torch.zeros_like(x[0]) if self.v is None else self.v
        spikes = []
        for x_t in x:
            v = v + x_t
            spikes.append((v >= 1).float())
            v = v * (1 - spikes[-1])
        self.v = v
        return torch.stack(spikes)


class RemembersNet(nn.Module):
    classes = 10

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)
        self.neuron = Remembers()

    def forward(self, x):
        return self.neuron(self.fc(x.flatten(1)).expand(4, -1, -1) * 3)


def test_a_network_that_keeps_state_without_reset_is_refused_before_the_first_batch():
    model = SpikingClassifier(net=RemembersNet())
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    data = DataLoader(TensorDataset(images(4), torch.zeros(4, dtype=torch.long)), batch_size=4)
    with (
        pytest.warns(RuntimeWarning, match="no spiking neuron found in RemembersNet"),
        pytest.raises(contract.StateLeak) as error,
    ):
        trainer.validate(model, data)  # no ResetState given: the model brings its own
    assert str(error.value).startswith(
        "the network keeps state between batches in Remembers (net.neuron): the same "
        "input gave another state there after plifnet reset it"
    )
    assert "Fix: give the class a reset()" in str(error.value) and len(str(error.value).splitlines()) == 1
    assert model.accuracy["val_acc"]._update_count == 0  # stopped before any batch counted


def test_a_network_that_resets_itself_in_forward_passes_the_check():
    class ResetsItself(RemembersNet):
        def forward(self, x):
            self.neuron.v = None
            return super().forward(x)

    contract.check_forgets(ResetsItself(), images(2))


def test_the_refusal_through_cli_is_one_line(run_cli, tiny_digits, tmp_path, monkeypatch):
    (tmp_path / "bad_net.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Remembers(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(784, 10)\n        self.v = None\n\n"
        "    def forward(self, x):\n"
        "        v = self.fc(x.flatten(1)) * 3 + (0 if self.v is None else self.v)\n"
        "        self.v = v.detach() / 2\n"
        "        return (v >= 1).float().expand(2, -1, -1)\n"
    )
    monkeypatch.syspath_prepend(tmp_path)
    result = run_cli(
        "fit",
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--data.root",
        tiny_digits,
        "--data.num_workers",
        "0",
        "--model.net",
        "bad_net.Remembers",
        "--model.classes",
        "10",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "error: the network keeps state between batches in Remembers (net): the same input gave "
        "another state there after plifnet reset it"
    ), result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs" / "lightning_logs" / "version_0").exists()


@pytest.mark.parametrize("family", FAMILIES)
def test_energy_counts_each_familys_layers(family):
    report = estimate(driven(FAMILIES[family].Net()), images(2))
    # by module path, as tau and firing rates name the neurons (a numbering would name another layer's weight)
    expected = ["features.0", "features.4", "features.9"] if family == "spikingjelly" else ["conv1", "conv2", "fc"]
    assert [layer.name for layer in report.layers] == expected
    assert report.layers[0].input == "values" and report.layers[2].input == "spikes"
    assert 0 < report.layers[2].input_rate < 1 and report.layers[2].sops > 0


@pytest.fixture
def digits(tiny_digits):
    """Real MNIST where ../shared is beside the checkout, else the test's small image folder; and the options
    that make 100 training batches of it."""
    from conftest import SHARED_DATASETS

    if (SHARED_DATASETS / "MNIST" / "raw").is_dir():
        return ["--data.root", SHARED_DATASETS, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "100"]
    return ["--data.root", tiny_digits, "--trainer.max_steps", "100", "--trainer.max_epochs", "-1"]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_through_cli_and_is_followed_and_tested_from_its_checkpoint(
    family, run_cli, digits, tmp_path
):
    """By class path, as written by its users, the paper's MNIST recipe for 100 batches of 16: the loss falls,
    the validation accuracy is above chance, tau and firing rates of its 3 neuron layers are logged, tau.csv,
    tau.png and energy.csv are written; then `cli.py test` rebuilds it from the checkpoint."""
    config = ROOT / "examples" / "plugin" / "configs" / f"{family}.yaml"
    result = run_cli(
        "fit",
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--config",
        config,
        *digits,
        "--data.num_workers",
        "0",
        "--trainer.limit_val_batches",
        "20",
        "--trainer.log_every_n_steps",
        "5",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 20 and sum(losses[-5:]) < sum(losses[:5]), losses
    assert float([r for r in rows if r.get("val/acc")][-1]["val/acc"]) > 0.15  # chance: 0.1
    layers = list(spiking_layers(SpikingClassifier(net=FAMILIES[family].Net())))
    assert len(layers) == 3 and {f"tau/{name}" for name in layers} | {f"firing_rate/{name}" for name in layers} <= set(
        rows[0]
    )
    taus = [float(r[f"tau/{layers[0]}"]) for r in rows if r.get(f"tau/{layers[0]}")]
    assert taus[0] == pytest.approx(2.0, abs=1e-6) and taus[-1] != taus[0]  # learnt
    with open(run / "tau.csv") as f:
        assert next(csv.reader(f)) == ["step", *layers]
    assert (run / "tau.png").read_bytes()[:4] == b"\x89PNG" and (run / "energy.csv").is_file()

    tested = run_cli(
        "test",
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--config",
        config,
        *digits[:2],
        "--data.num_workers",
        "0",
        "--trainer.limit_test_batches",
        "10",
        "--ckpt_path",
        run / "checkpoints" / "last.ckpt",
        cwd=tmp_path,
    )
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert "energy per image" in tested.stdout

    # NIR export: the Sequential SpikingJelly network leaves whole; the others, written as loops over time, are
    # refused in one line that names the network and its modules
    exported = run_cli(
        "--ckpt_path",
        run / "checkpoints" / "last.ckpt",
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--config",
        config,
        "--out",
        tmp_path / "net.nir",
        cwd=ROOT,
        main=export.main,
    )
    if family == "spikingjelly":
        assert exported.returncode == 0, exported.stderr[-3000:]
        assert "3 spiking layers" in exported.stderr and (tmp_path / "net.nir").is_file()
    else:
        assert exported.returncode == 1 and "Traceback" not in exported.stderr
        modules = {"snntorch": 6, "norse": 7, "handwritten": 8}[family]  # Norse's: its ParameterList too
        assert (
            exported.stderr.strip()
            .splitlines()[-1]
            .startswith(
                f"error: to_nir exports SpikingNet networks and networks whose layers form one nn.Sequential; Net runs "
                f"{modules} modules"
            )
        )


class SequentialLeaky(nn.Module):
    """snnTorch written as nn.Sequential (its other common style), stepped T times on the image."""

    time_steps = 4

    def __init__(self, reset_mechanism="zero", spike_grad=None):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            snn.Leaky(beta=0.7, reset_mechanism=reset_mechanism, init_hidden=True, spike_grad=spike_grad),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 14 * 14, 10),
            snn.Leaky(
                beta=torch.linspace(0.3, 0.9, 10),
                learn_beta=True,
                reset_mechanism="zero",
                init_hidden=True,
                spike_grad=spike_grad,
            ),
        )

    def forward(self, x):
        return torch.stack([self.layers(x) for _ in range(self.time_steps)])


def with_statistics(net):
    """Random BatchNorm statistics and affine parameters, so that folding them into the convolution matters."""
    generator = torch.Generator().manual_seed(4)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3, generator=generator)
            m.running_var.uniform_(0.5, 2.0, generator=generator)
            m.weight.data.uniform_(0.8, 2.0, generator=generator)
            m.bias.data.uniform_(-0.2, 0.4, generator=generator)
    return net.eval()


def spike_keeping_dtype(x):
    """snnTorch's spike function without a surrogate, in the input's dtype (snnTorch's own gives float32)."""
    return (x > 0).to(x.dtype)


@pytest.mark.parametrize("family", ["spikingjelly", "snntorch"])
def test_a_sequential_peer_network_exports_to_nir_with_its_own_spikes(family, tmp_path):
    """The graph read back from its file and run by NIR's equations wired by nirtorch (test_export's runner,
    no plifnet code) fires as the library's own network, in float64 spike for spike."""
    import nir
    from test_export import run_nir

    from plifnet.nir import to_nir

    net = spikingjelly_net.Net() if family == "spikingjelly" else SequentialLeaky(spike_grad=spike_keeping_dtype)
    net = with_statistics(driven(net))
    graph = to_nir(net, dtype=np.float64, input_shape=(1, 28, 28))
    nir.write(tmp_path / "net.nir", graph)
    x = images(4).double()
    with torch.no_grad():
        contract.reset_state(net)
        expected = net.double()(x)
    scores, _ = run_nir(nir.read(tmp_path / "net.nir"), x)
    assert 0 < expected.mean() < 1 and torch.equal(scores, expected)
    assert sum(isinstance(node, nir.LIF) for node in graph.nodes.values()) == (3 if family == "spikingjelly" else 2)


def test_snntorchs_float32_spikes_are_checked_in_float32():
    """With snnTorch's own spike function the network runs in float32 only: the export's check runs there."""
    import nir

    from plifnet.nir import to_nir

    net = with_statistics(driven(SequentialLeaky()))
    graph = to_nir(net, input_shape=(1, 28, 28))
    assert graph.nodes["conv1_lif"].tau.dtype == np.float32 and isinstance(graph.nodes["fc1_lif"], nir.LIF)
    torch.testing.assert_close(
        torch.from_numpy(graph.nodes["fc1_lif"].tau[:3].astype(np.float64)),
        1 / (1 - torch.linspace(0.3, 0.9, 10)[:3].double()),
        rtol=1e-6,
        atol=0,
    )


def test_peer_networks_without_a_nir_form_are_refused_by_name():
    from plifnet.nir import to_nir

    with pytest.raises(
        ValueError,
        match=r"Net runs 6 modules \(conv1, lif1, conv2, lif2, fc, lif3\) in a forward of "
        r"its own, whose order NIR export cannot see",
    ):
        to_nir(snntorch_net.Net().eval(), input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"layer conv1: Leaky with reset_mechanism='subtract' has no NIR form"):
        to_nir(SequentialLeaky("subtract").eval(), input_shape=(1, 28, 28))
    soft = spikingjelly_net.Net()
    soft.features[2] = sj_neuron.ParametricLIFNode(v_reset=None, step_mode="m")
    with pytest.raises(ValueError, match=r"ParametricLIFNode with the soft reset \(v_reset=None\) has no NIR form"):
        to_nir(soft.eval(), input_shape=(1, 28, 28))

    class Doubled(SequentialLeaky):  # a forward that does more than its chain
        def forward(self, x):
            return super().forward(2 * x)

    with pytest.raises(ValueError, match="the NIR graph of Doubled's layers does not fire as Doubled does"):
        to_nir(driven(Doubled()).eval(), input_shape=(1, 28, 28))


def test_a_peer_networks_tau_and_firing_rates_reach_wandb(tiny_digits, tmp_path, monkeypatch):
    """snnTorch's learnt beta, as tau = 1/(1 - beta), and its layers' firing rates in an offline wandb run."""
    from lightning.pytorch.loggers import WandbLogger
    from test_callbacks import read_wandb_history

    from plifnet.callbacks import FiringRateMonitor, TauMonitor
    from plifnet.data import StaticDataModule

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    model = SpikingClassifier(net=snntorch_net.Net(), optimizer=partial(torch.optim.Adam, lr=0.05))
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=2,
        log_every_n_steps=2,
        logger=WandbLogger(save_dir=str(tmp_path), offline=True, project="plifnet-test"),
        callbacks=[TauMonitor(), FiringRateMonitor()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, StaticDataModule("mnist", root=str(tiny_digits), batch_size=8, num_workers=0))
    import wandb

    wandb.finish()  # the run must be closed to be read
    rows = read_wandb_history(tmp_path / "wandb")
    last = [row for row in rows if "tau/lif1" in row][-1]
    for name in ("lif1", "lif2", "lif3"):
        beta = getattr(model.net, name).beta.item()
        assert last[f"tau/{name}"] == pytest.approx(1 / (1 - beta), rel=1e-6) and last[f"tau/{name}"] != pytest.approx(
            2.0
        )
        assert any(f"firing_rate/{name}" in row for row in rows)


def test_a_registered_adapter_is_asked_before_the_protocol():
    """A library of one's own: its neuron has a reset() and v_threshold, but its tau is stored as a decay."""

    class Decaying(nn.Module):
        def __init__(self):
            super().__init__()
            self.v_threshold, self.decay = 1.0, nn.Parameter(torch.tensor(0.75))

        def reset(self):
            pass

        def forward(self, x):
            return x

    class DecayingAdapter(contract.Adapter):
        def claims(self, module):
            return isinstance(module, Decaying)

        def tau(self, module):
            return 1 / (1 - module.decay.detach())

        def learns_tau(self, module):
            return True

    neuron = Decaying()
    assert contract.tau(neuron) is None  # the protocol: no tau attribute
    try:
        contract.register_adapter("decaying", DecayingAdapter)
        assert float(contract.tau(neuron)) == pytest.approx(4.0) and contract.learns_tau(neuron)
    finally:
        contract.ADAPTERS.entries.pop("decaying")
        contract._adapters, contract._by_class = None, {}  # as before the registration
    assert contract.tau(neuron) is None


class NorseKeepsItsState(nn.Module):
    """The newcomer's Norse network: the hidden layer's state kept on the module, detached, between calls, and
    an output layer that an untrained network leaves silent. Its output alone cannot show the leak."""

    classes = 10

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(28 * 28, 64), nn.Linear(64, 10)
        self.lif1, self.lif2 = norse.LIFCell(), norse.LIFCell()
        self.state = None

    def forward(self, x):
        out, state2 = [], None
        for _ in range(4):
            z, state = self.lif1(4 * self.fc1(x.flatten(1)), self.state)
            self.state = type(state)(*(s.detach() for s in state))
            spikes, state2 = self.lif2(0.01 * self.fc2(z), state2)
            out.append(spikes)
        return torch.stack(out)


def test_a_norse_network_keeping_its_state_behind_a_silent_layer_is_refused():
    net = NorseKeepsItsState()
    x = images(4)
    with torch.no_grad():
        first, second = net(x), net(x)
        hidden, state = [], None
        for _ in range(4):
            z, state = net.lif1(4 * net.fc1(x.flatten(1)), state)
            hidden.append(z)
        hidden = torch.stack(hidden)
    assert torch.equal(first, second) and first.sum() == 0 and hidden.sum() > 0  # silent out, firing inside
    with pytest.raises(contract.StateLeak) as error:
        contract.check_forgets(net, x)
    message = str(error.value)
    assert (
        message.startswith(
            "the network keeps state between batches in NorseKeepsItsState (the network itself): "
            "the same input gave another state there"
        )
        and len(message.splitlines()) == 1
    )
    assert message.endswith(
        "Fix: Norse's LIFCell takes its state from the caller: pass state=None at the first step "
        "of every forward, instead of a state kept on the module between batches"
    )
    model = SpikingClassifier(net=NorseKeepsItsState())  # and before the first batch of a run
    data = DataLoader(TensorDataset(x, torch.zeros(4, dtype=torch.long)), batch_size=4)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, max_steps=1)
    with pytest.raises(contract.StateLeak, match=r"NorseKeepsItsState \(net\)"):
        trainer.fit(model, data)
    assert model.net.fc1.weight.grad is None  # no step was taken


class MyPLIF(sj_neuron.ParametricLIFNode):
    """A subclass of SpikingJelly's PLIF, as research code writes them."""


def test_a_subclass_of_a_spikingjelly_neuron_is_found_reset_followed_and_counted(tiny_digits):
    from plifnet.callbacks import FiringRateMonitor, SynapticOps, TauMonitor
    from plifnet.data import StaticDataModule

    def subclassed():
        net = spikingjelly_net.Net()
        for name in ("2", "6", "10"):
            old = net.features[int(name)]
            net.features[int(name)] = MyPLIF(
                init_tau=2.0, surrogate_function=old.surrogate_function, detach_reset=True, step_mode="m"
            )
        return net

    net = driven(subclassed()).eval()
    layers = spiking_layers(SpikingClassifier(net=net))
    assert list(layers) == ["features.2", "features.6", "features.10"]  # found
    assert all(type(m) is MyPLIF and contract.learns_tau(m) for m in layers.values())
    fresh, x = copy.deepcopy(net), images()
    with torch.no_grad():
        first, second = net(x), net(x)
    assert not torch.equal(first, second)
    contract.reset_state(net)  # reset
    with torch.no_grad():
        assert torch.equal(net(x), fresh(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "no spiking neuron found" warning
        contract.check_forgets(net, x)
    model = SpikingClassifier(net=driven(subclassed()))
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert {id(p) for p in groups[1]["params"]} == {id(m.w) for m in spiking_layers(model).values()}
    report = estimate(driven(subclassed()), images(2))  # counted: the last layer is fed by the subclass's spikes
    assert [layer.name for layer in report.layers] == ["features.0", "features.4", "features.9"]
    assert report.layers[2].sops > 0
    ops = SynapticOps()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=2,
        log_every_n_steps=2,
        logger=L.pytorch.loggers.CSVLogger(tiny_digits.parent / "logs"),
        enable_checkpointing=False,
        callbacks=[TauMonitor(), FiringRateMonitor(), ops],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, StaticDataModule("mnist", root=str(tiny_digits), batch_size=8, num_workers=0))
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    last_tau = [row for row in rows if row.get("tau/features.2")][-1]
    for name in layers:  # followed: tau (the last logged is the trained network's) and firing rates
        assert float(last_tau[f"tau/{name}"]) == pytest.approx(
            float(contract.tau(dict(model.net.named_modules())[name]))
        )
        assert any(row.get(f"firing_rate/{name}") for row in rows)
    with open(Path(trainer.logger.log_dir) / "tau.csv") as f:
        assert next(csv.reader(f)) == ["step", *layers]
    assert ops.report is not None and [layer.name for layer in ops.report.layers] == [
        "features.0",
        "features.4",
        "features.9",
    ]


class SynapticNet(nn.Module):
    """snnTorch's Synaptic neuron with both decays learnt: the synaptic current's alpha and the membrane's beta."""

    classes = 10

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(28 * 28, 100), nn.Linear(100, 10)
        self.syn1 = snn.Synaptic(alpha=0.6, beta=0.5, learn_alpha=True, learn_beta=True, init_hidden=True)
        self.syn2 = snn.Synaptic(alpha=0.6, beta=0.5, learn_alpha=True, learn_beta=True, init_hidden=True, output=True)

    def forward(self, x):
        out = []
        for _ in range(4):
            spikes = self.syn1(4 * self.fc1(x.flatten(1)))
            out.append(self.syn2(4 * self.fc2(spikes))[0])
        return torch.stack(out)


def test_snntorch_synaptics_learnt_alpha_is_followed_in_the_tau_group_and_labelled(tiny_digits):
    from plifnet.callbacks import TauMonitor
    from plifnet.data import StaticDataModule

    model = SpikingClassifier(net=SynapticNet())
    constants = contract.time_constants(model.net.syn1)
    assert set(constants) == {"tau", "tau_syn"} and all(c.learned for c in constants.values())
    assert (
        float(constants["tau_syn"].steps) == pytest.approx(1 / (1 - 0.6))
        and constants["tau_syn"].convention == "1/(1-alpha)"
    )
    caller_state = snn.Synaptic(alpha=0.7, beta=0.5, learn_alpha=True)  # init_hidden=False: found the same way
    assert float(contract.time_constants(caller_state)["tau_syn"].steps) == pytest.approx(1 / (1 - 0.7))
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert {id(p) for p in groups[1]["params"]} == {
        id(getattr(n, a)) for n in (model.net.syn1, model.net.syn2) for a in ("alpha", "beta")
    }  # no weight decay on either
    monitor = TauMonitor()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=4,
        limit_val_batches=1,
        log_every_n_steps=2,
        logger=L.pytorch.loggers.CSVLogger(tiny_digits.parent / "logs"),
        enable_checkpointing=False,
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, StaticDataModule("mnist", root=str(tiny_digits), batch_size=8, num_workers=0))
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("tau/syn1/tau_syn")]
    alpha = model.net.syn1.alpha.item()
    assert float(rows[-1]["tau/syn1/tau_syn"]) == pytest.approx(1 / (1 - alpha)) and alpha != pytest.approx(0.6)
    assert float(rows[-1]["tau/syn1"]) == pytest.approx(1 / (1 - model.net.syn1.beta.item()))
    with open(Path(trainer.logger.log_dir) / "tau.csv") as f:
        assert next(csv.reader(f)) == ["step", "syn1", "syn1:tau_syn", "syn2", "syn2:tau_syn"]
    # the plot says how each figure is read from snnTorch's parameters (its docs write tau = -1/ln(beta))
    assert monitor.labels["syn1"] == "syn1 (tau = 1/(1-beta))"
    assert monitor.labels["syn1:tau_syn"] == "syn1:tau_syn (tau_syn = 1/(1-alpha))"


class SnnTorchKeepsItsMembrane(nn.Module):
    """snnTorch with init_hidden=False, its membrane kept on the module between calls (a common slip)."""

    classes = 10

    def __init__(self):
        super().__init__()
        self.fc, self.lif = nn.Linear(28 * 28, 10), snn.Leaky(beta=0.9)
        self.mem = None

    def forward(self, x):
        out, mem = [], self.lif.init_leaky() if self.mem is None else self.mem
        for _ in range(4):
            spikes, mem = self.lif(3 * self.fc(x.flatten(1)), mem)
            out.append(spikes)
        self.mem = mem.detach()
        return torch.stack(out)


def test_snntorchs_leak_advice_is_to_start_the_membrane_in_forward():
    with pytest.raises(contract.StateLeak) as error:
        contract.check_forgets(SnnTorchKeepsItsMembrane(), images(2))
    assert str(error.value).endswith(
        "Fix: Leaky with init_hidden=False takes its state from the caller: start it afresh "
        "in every forward (mem = None at step 0, or Leaky's init_leaky()/reset_mem()), "
        "instead of keeping it on the module between batches"
    )
