"""The probe (plifnet/probe.py, plifnet/callbacks/probe.py): its summaries against brute-force counts and hand-run
loops, for plifnet's neurons and the peers', and a training run that cannot tell it was probed."""

from __future__ import annotations

import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from PIL import Image

from plifnet import contract
from plifnet.callbacks import Probe, ResetState, spiking_layers
from plifnet.data import StaticDataModule
from plifnet.errors import UserError
from plifnet.models import SpikingNet
from plifnet.module import SpikingClassifier
from plifnet.neurons import PLIF
from plifnet.options import NeuronOptions
from plifnet.probe import probe, shown_neurons
from plifnet.sequences import SequenceNet
from tests import wandb_files
from tests.conftest import active_network, make_image_folder


def spikes_by_layer(net, x) -> dict[str, torch.Tensor]:
    """Every spiking layer's spikes ``[T, N, ...]`` of one plain forward (calls stacked in time where per step)."""
    seen = {name: [] for name in spiking_layers(net)}
    handles = [
        module.register_forward_hook(lambda m, a, out, name=name: seen[name].append(contract.spikes(m, out)))
        for name, module in spiking_layers(net).items()
    ]
    with torch.no_grad():
        contract.reset_state(net)
        net.eval()(x)
    for handle in handles:
        handle.remove()
    return {name: torch.stack(calls) if len(calls) > 1 else calls[0] for name, calls in seen.items()}


def test_the_summaries_equal_a_brute_force_count_and_the_membrane_a_hand_run_loop():
    torch.manual_seed(0)
    net = SpikingNet(layers="c8 p f40", in_channels=1, size=12, static=True, time_steps=6, classes=4)
    x = torch.rand(5, 1, 12, 12)
    net = active_network(net, x)
    layers = spiking_layers(net)
    found = probe(net, x, layers, neurons=10, traces=4)
    brute = spikes_by_layer(net, x)
    for name, layer in found.items():
        spikes = brute[name].flatten(2)  # [T, N, M]
        shown = shown_neurons(name, spikes.shape[2], 10)
        assert torch.equal(layer.raster, spikes[:, 0, shown].bool())
        assert torch.allclose(layer.rates, spikes.mean((0, 1)))
        assert layer.dead == pytest.approx((spikes.sum((0, 1)) == 0).float().mean().item())
        # plifnet's membrane is H - threshold before the reset: a spike exactly where it is >= 0
        assert torch.equal(layer.trace >= 0, layer.raster[:, :4])
        assert layer.raster.any(), f"{name} never fired: the test shows nothing"
    conv, dense = found.values()
    assert conv.channels and conv.heat.shape == (6, 8) and not dense.channels
    assert torch.allclose(conv.heat, next(iter(brute.values())).mean((1, 3, 4)))

    # the membrane of one PLIF layer by a hand-run loop: H = V + k (X - V), fire at H >= 1, V = 0 after a spike
    plif = PLIF(tau=3.0, v_threshold=1.0)
    inputs = torch.rand(7, 2, 5) * 1.5
    (layer,) = probe(plif, inputs, {"plif": plif}, samples=2, neurons=5, traces=5).values()
    v, margins = torch.zeros(2, 5), []
    for x_t in inputs:
        h = v + (x_t - v) / 3
        margins.append(h - 1.0)
        v = torch.where(h >= 1, torch.zeros_like(h), h)
    expected = torch.stack(margins)[:, 0, shown_neurons("plif", 5, 5)]
    assert torch.allclose(layer.trace, expected, atol=1e-6)


def test_the_gradient_is_what_reaches_each_layer_input_in_backward():
    torch.manual_seed(1)
    model = SpikingClassifier(SequenceNet(3, 4, hidden=(6,), neuron="alif", readout="mean"), loss="cross_entropy")
    x, y = torch.randn(9, 5, 3) * 2, torch.randint(0, 4, (5,))
    layers = spiking_layers(model)
    (name,) = layers
    found = probe(model, x, layers, loss=lambda scores: model.training_loss(scores, y), samples=5)
    # the same gradient by hand: the layer's input kept by a hook, autograd of the loss on it
    kept = []
    handle = layers[name].register_forward_hook(lambda m, args, out: kept.append(args[0]))
    contract.reset_state(model)
    loss = model.training_loss(model.eval()(x), y)
    handle.remove()
    (grad,) = torch.autograd.grad(loss, kept)
    assert torch.allclose(found[name].grad, grad.abs().flatten(1).mean(1))
    assert found[name].grad.shape == (9,) and found[name].grad.max() > 0
    # ALIF's margin is against its adaptive threshold; the probe left no gradient on any parameter
    assert torch.equal(found[name].trace >= 0, found[name].raster[:, :3])
    assert all(p.grad is None for p in model.parameters())
    assert set(found[name].time_constants) == {"tau", "tau_adapt"}


def test_peers_networks_are_probed_through_the_contract():
    sj = pytest.importorskip("spikingjelly.activation_based")
    import snntorch
    from spikingjelly.activation_based import layer as sj_layer, neuron as sj_neuron

    torch.manual_seed(2)
    x = torch.rand(6, 4, 10) * 3  # [T, N, F]
    # SpikingJelly in multi-step mode: one call [T, N, F]; its membrane V[t] after the reset from v_seq
    jelly = torch.nn.Sequential(sj_layer.Linear(10, 12, step_mode="m"), sj_neuron.LIFNode(step_mode="m"))
    layers = spiking_layers(jelly)
    (found,) = probe(jelly, x, layers, samples=4, traces=12, neurons=12).values()
    assert torch.equal(found.raster, spikes_by_layer(jelly, x)["1"][:, 0, shown_neurons("1", 12, 12)].bool())
    assert found.meaning == "V[t], after the reset" and found.trace.shape == (6, 12)
    assert jelly[1].store_v_seq is False  # put back as it was
    assert sj is not None

    # snnTorch, called at every step: the calls are stacked in time; mem as the neuron returned it
    class Stepped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.lif = torch.nn.Linear(10, 12), snntorch.Leaky(beta=0.8, init_hidden=True, output=True)

        def forward(self, x_seq):
            return torch.stack([self.lif(self.fc(x_t))[0] for x_t in x_seq])

    stepped = Stepped()
    layers = spiking_layers(stepped)
    (found,) = probe(stepped, x, layers, samples=4, traces=12, neurons=12).values()
    mems = []
    contract.reset_state(stepped)
    with torch.no_grad():
        for x_t in x:
            mems.append(stepped.lif(stepped.fc(x_t))[1])
    shown = shown_neurons("lif", 12, 12)
    assert torch.allclose(found.trace, torch.stack(mems)[:, 0, shown]) and found.threshold == 1.0
    assert found.raster.shape == (6, 12) and found.raster.any()


def fit(tmp_path: Path, callbacks: list, logger=None, layers: str = "c4 p f100") -> SpikingClassifier:
    L.seed_everything(7)
    model = SpikingClassifier(SpikingNet(layers=layers, in_channels=1, size=28, static=True, time_steps=3))
    data = StaticDataModule(
        "mnist", root=str(make_image_folder(tmp_path / "digits", 4, 2)), batch_size=8, num_workers=0
    )
    trainer = L.Trainer(
        max_epochs=2,
        logger=logger or CSVLogger(tmp_path, name="csv"),
        callbacks=[ResetState(), *callbacks],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    return model, trainer


def test_a_probed_run_is_the_run_without_the_probe_bit_for_bit(tmp_path):
    # dropout draws its masks from torch's generator in training mode: a probe run there would draw too
    layers = "c4 p d f100"
    plain, _ = fit(tmp_path / "plain", [], layers=layers)
    after_plain = (torch.rand(3), np.random.rand(), random.random())
    probed, trainer = fit(tmp_path / "probed", [Probe(every_n_epochs=2)], layers=layers)
    after_probed = (torch.rand(3), np.random.rand(), random.random())
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(after_plain[0], after_probed[0]) and after_plain[1:] == after_probed[1:]
    pages = sorted(p.name for p in (Path(trainer.log_dir) / "probe").glob("*.png"))
    # epoch 0's validation, and the end of fit (in training mode: epoch 1 was not probed)
    assert pages == ["end-step6.png", "epoch000.png"] and probed.training
    with Image.open(Path(trainer.log_dir) / "probe" / "end-step6.png") as image:
        assert image.format == "PNG" and image.size[0] > 1000


def test_what_the_probe_keeps_between_epochs_is_bounded():
    callback = Probe(keep=8)
    from plifnet.probe import LayerProbe

    layer = LayerProbe(torch.zeros(2, 2, dtype=torch.bool), torch.zeros(4), torch.zeros(2, 2))
    for epoch in range(1000):
        layer.time_constants = {"tau": torch.full((50,), 2.0 + epoch)}
        callback._record({"fc1": layer}, epoch)
        assert len(callback.bands["fc1:tau"]) <= 9
    band = callback.bands["fc1:tau"]
    assert band[0][0] == 0 and band[-1][0] == 999 and band[-1][3] == pytest.approx(1001.0)
    assert [row[0] for row in band] == sorted(row[0] for row in band)


@pytest.mark.parametrize("kind", ["tensorboard", "wandb"])
def test_loggers_receive_the_page_histograms_and_fractions(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = (
        TensorBoardLogger(tmp_path, name="tb")
        if kind == "tensorboard"
        else WandbLogger(save_dir=str(tmp_path), offline=True, project="plifnet-test")
    )
    model, trainer = fit(tmp_path, [Probe(every_n_epochs=2)], logger=logger)
    if kind == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0}).Reload()
        assert "probe/page" in events.Tags()["images"]
        assert {"probe/rates/conv1", "probe/tau/fc1"} <= set(events.Tags()["histograms"])
        # after epoch 0's validation (every_n_epochs=2 skips epoch 1), then at the end of fit
        assert [e.step for e in events.Scalars("probe/dead/conv1")] == [trainer.global_step // 2, trainer.global_step]
    else:
        import wandb

        wandb.finish()
        history = wandb_files.history(wandb_files.wait_for(lambda: list((tmp_path / "wandb").rglob("run-*.wandb"))))
        keys = {key for row in history for key in row}
        assert {"probe/dead/conv1", "probe/saturated/fc1", "probe/grad/fc1"} <= keys
        row = next(row for row in history if "probe/rates/conv1/values" in row)  # wandb nests the histogram
        assert row["probe/rates/conv1/_type"] == "histogram"
        assert (
            sum(row["probe/rates/conv1/values"]) == 4 * 28 * 28
        )  # one count per neuron of the layer (before its pooling)
        media = list((tmp_path / "wandb").rglob("media/images/probe/page*.png"))
        assert media and all(Image.open(p).format == "PNG" for p in media)


def test_a_per_channel_tau_is_drawn_as_a_distribution():
    net = SpikingNet(
        layers="c6 p f100", in_channels=1, size=8, static=True, time_steps=2, options=NeuronOptions(per_channel=True)
    )
    net(torch.rand(2, 1, 8, 8))  # materialises the per-channel w
    found = probe(net, torch.rand(3, 1, 8, 8), spiking_layers(net))
    assert next(iter(found.values())).time_constants["tau"].shape == (6,)


def test_curves_and_the_confusion_matrix_hold_what_was_logged(tmp_path):
    import csv

    from plifnet.callbacks import ConfusionMatrix, LearningCurves

    curves = LearningCurves()
    model, trainer = fit(tmp_path, [curves, ConfusionMatrix()])
    run = Path(trainer.log_dir)
    with open(run / "metrics.csv") as f:
        logged = list(csv.DictReader(f))
    for row in curves.epochs:  # each epoch's row holds that epoch's figures, the training ones included
        for key in ("val/acc", "test/acc", "train/loss"):
            name = "train/loss_epoch" if key == "train/loss" else key
            value = next(float(r[name]) for r in logged if r[name] and int(r["epoch"]) == row["epoch"])
            assert row[key] == pytest.approx(value, rel=1e-6), (row["epoch"], key)
    assert [row["epoch"] for row in curves.epochs] == [0, 1] and Image.open(run / "curves.png").format == "PNG"

    trainer.test(model, trainer.datamodule)
    with open(Path(trainer.log_dir) / "confusion.csv") as f:
        counts = torch.tensor([[int(v) for v in row[1:]] for row in list(csv.reader(f))[1:]])
    # the same counts by hand: every test image through the network, its argmax against its label
    brute = torch.zeros(10, 10, dtype=torch.long)
    model.eval()
    with torch.no_grad():
        for x, y in trainer.datamodule.test_dataloader():
            contract.reset_state(model)
            for label, predicted in zip(y.tolist(), model(x).argmax(-1).tolist()):
                brute[label, predicted] += 1
    assert torch.equal(counts, brute) and counts.sum() == 20
    assert counts.trace().item() / 20 == pytest.approx(trainer.callback_metrics["test/acc"].item())


def test_by_default_the_probe_keeps_within_its_share_of_the_time(monkeypatch):
    from types import SimpleNamespace

    callback, ran = Probe(), []
    monkeypatch.setattr(callback, "run", lambda trainer, module, name: ran.append(name))
    clock = iter([0.0, 100.0, 100.0])  # fit starts at 0; two validations at 100 s
    monkeypatch.setattr("plifnet.callbacks.common.time.monotonic", lambda: next(clock))
    callback.on_fit_start(None, None)
    from lightning.pytorch.trainer.states import TrainerFn

    trainer = SimpleNamespace(sanity_checking=False, current_epoch=3, state=SimpleNamespace(fn=TrainerFn.FITTING))
    callback.share.spent, callback.share.cost = 3.0, 2.0  # 5 s of 100: one more like the latest fits in 5%
    callback.on_validation_epoch_end(trainer, None)
    callback.share.spent = 3.5  # 5.5 s would not
    callback.on_validation_epoch_end(trainer, None)
    assert ran == ["epoch003"]
    # the end of fit: not probed where the last probe was at this step, nor beyond the budget
    clock = iter([100.0, 100.0])
    callback.last_step = 7
    callback.on_fit_end(SimpleNamespace(global_step=7), None)
    callback.on_fit_end(SimpleNamespace(global_step=8), None)
    callback.share.spent = 2.0
    callback.on_fit_end(SimpleNamespace(global_step=8), None)
    assert ran == ["epoch003", "end-step8"]


def test_the_learning_curves_keep_within_their_share_of_the_time_and_the_last_drawing_holds_every_epoch(
    monkeypatch, tmp_path
):
    from types import SimpleNamespace

    from plifnet.callbacks import LearningCurves

    now, drawn = [0.0], []

    def draw(path, write):  # a drawing that takes 1 s, recording the epochs it showed
        now[0] += 1.0
        drawn.append([row["epoch"] for row in curves.epochs])

    monkeypatch.setattr("plifnet.callbacks.common.time.monotonic", lambda: now[0])
    monkeypatch.setattr("plifnet.callbacks.outputs.write_atomically", draw)
    monkeypatch.setattr("plifnet.callbacks.outputs.run_dir", lambda trainer: tmp_path)
    monkeypatch.setattr("plifnet.callbacks.outputs.log_figure", lambda *args: None)
    curves = LearningCurves()
    curves.on_fit_start(None, None)
    metrics = {"val/acc": torch.tensor(0.5), "train/loss_epoch": torch.tensor(0.1)}
    for epoch, at in enumerate([10.0, 20.0, 40.0, 41.0]):  # the validations' times, in s from the fit's start
        now[0] = at
        trainer = SimpleNamespace(
            sanity_checking=False, current_epoch=epoch, global_step=epoch, callback_metrics=metrics, is_global_zero=True
        )
        curves.on_validation_end(trainer, None)
    # the first always; at 20 s a second drawing would make 2 s of 20 (over 5%); at 40 s 2 s of 40; at 41 s not
    assert drawn == [[0], [0, 1, 2]]
    trainer.current_epoch = 4  # the end of fit: drawn with the last epoch and its training figures
    curves.on_fit_end(trainer, None)
    assert drawn[-1] == [0, 1, 2, 3] and curves.epochs[-1]["train/loss"] == pytest.approx(0.1)
    curves.on_fit_end(trainer, None)  # nothing new: not drawn again
    assert len(drawn) == 3
    with pytest.raises(UserError, match="0 < budget <= 1"):
        LearningCurves(budget=0)


def test_inspect_writes_the_figures_and_a_page_that_a_browser_shows_whole(run_cli, tiny_digits, tmp_path):
    import shutil
    import subprocess

    from plifnet import inspection
    from tests.test_checkpoints import QUICK  # the paper's MNIST config at T = 1, two batches

    trained = run_cli(
        "fit",
        *QUICK,
        "--data.root",
        tiny_digits,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_val_batches",
        "1",  # validated: the epoch's probe is in last.ckpt
        "--trainer.default_root_dir",
        tmp_path / "run",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    (ckpt,) = (tmp_path / "run").rglob("last.ckpt")
    shown = run_cli(
        "--ckpt_path",
        ckpt,
        *QUICK[:2],
        "--data.root",
        tiny_digits,
        "--samples",
        "5",
        "--out",
        tmp_path / "inspect",
        cwd=tmp_path,
        main=inspection.main,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    out = tmp_path / "inspect"
    assert {"probe.png", "conv1.png", "conv2.png", "fc1.png", "fc2.png", "layers.csv", "index.html"} <= {
        p.name for p in out.iterdir()
    }
    # the tau-over-training panel from the run's own probe, kept in last.ckpt
    assert set(inspection.probe_history(ckpt)) == {f"{layer}:tau" for layer in ("conv1", "conv2", "fc1", "fc2")}
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and 'src="conv1.png"' not in page  # self-contained

    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32))
    given = run_cli(
        "--ckpt_path",
        ckpt,
        "--input",
        tmp_path / "x.npy",
        "--out",
        tmp_path / "given",
        cwd=tmp_path,
        main=inspection.main,
    )  # an array instead of the test set: no labels, no gradient
    assert given.returncode == 0 and "on 3 samples" in given.stderr, given.stderr[-2000:]
    assert "Predicted classes: " in (tmp_path / "given" / "index.html").read_text()

    bad = run_cli("--ckpt_path", ckpt, cwd=tmp_path, main=inspection.main)  # neither a config nor an input
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--config" in bad.stderr.splitlines()[-1]

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        assert not os.environ.get("CI"), "CI installs Chromium (.ci/run): the page must be rendered there"
        pytest.skip("Chromium is not installed here (.ci/run installs Debian's): the page was not rendered")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", (out / "index.html").as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'data-shown="4" data-total="4"' in dom, dom[-500:]


def test_a_bf16_run_is_probed_and_drawn(tmp_path):
    from plifnet import plots

    net = SpikingNet(layers="c4 p f100", in_channels=1, size=8, static=True, time_steps=2)
    model = SpikingClassifier(net)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = probe(model, x, spiking_layers(model), loss=lambda scores: model.training_loss(scores, y))
    assert all(layer.grad.dtype == torch.float32 for layer in found.values())
    plots.probe_page(found, {}, "bf16", tmp_path / "page.png")
    assert Image.open(tmp_path / "page.png").format == "PNG"


def test_the_confusion_matrix_leaves_unlabelled_steps_out(tmp_path):
    from types import SimpleNamespace

    from plifnet.callbacks import ConfusionMatrix

    callback = ConfusionMatrix()
    callback.on_test_epoch_start(None, None)
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.1, 0.9]])  # predicted 0, 1, 0, 1
    labels = torch.tensor([0, 0, -1, 1])  # the third step has no label
    callback.on_test_batch_end(None, None, {"loss": 0, "scores": scores, "labels": labels}, None, 0)
    callback.on_test_batch_end(None, None, {"loss": 0, "scores": scores[:1], "labels": labels[:1]}, None, 1)
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(reduce=lambda counts, reduce_op: counts),
        is_global_zero=True,
        loggers=[],
        global_step=0,
        default_root_dir=str(tmp_path),
    )
    callback.on_test_epoch_end(trainer, None)
    assert callback.counts.tolist() == [[2, 1], [0, 1]]
    assert (tmp_path / "confusion.csv").read_text().splitlines()[1:] == ["0,2,1", "1,0,1"]


def test_a_shape_that_reads_two_ways_is_said_not_guessed_silently():
    from plifnet.probe import time_first

    assert time_first([torch.zeros(5, 4, 3)], samples=4).shape == (5, 4, 3)  # [T, N, F]
    assert time_first([torch.zeros(4, 3)], samples=4).shape == (1, 4, 3)  # one step [N, F]
    assert time_first([torch.zeros(4, 3)] * 6, samples=4).shape == (6, 4, 3)  # called per step
    with pytest.warns(RuntimeWarning, match=r"read as \[T, N, \.\.\.\]; where it is one step"):
        assert time_first([torch.zeros(4, 4, 3)], samples=4).shape == (4, 4, 3)
