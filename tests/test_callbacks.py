"""State reset, tau and firing-rate monitors, with every logger (CSV, TensorBoard, offline wandb)."""

import csv
import io
import re
import warnings
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import wandb_files
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from plifnet.callbacks import FiringRateMonitor, ProgressBar, ResetState, TauMonitor, exact_sum
from plifnet.data.static import StaticDataModule
from plifnet.models import SpikingNet
from plifnet.module import SpikingClassifier
from plifnet.neurons import IF, PLIF
from plifnet.options import NeuronOptions

# --- ResetState ----------------------------------------------------------------------------------


class SingleStepModel(L.LightningModule):
    """Steps a single-step PLIF layer through [T, N, F] by hand, so its state survives between calls
    unless something resets it. Records the state it finds at the start of every batch."""

    def __init__(self, fail_at_batch=None):
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)
        self.neuron = PLIF(step_mode="single")
        self.fail_at_batch = fail_at_batch
        self.states_seen = []

    def _run(self, batch, batch_idx):
        self.states_seen.append(self.neuron.v)
        x = batch[0].transpose(0, 1)  # [N, T, F] -> [T, N, F]
        out = 0
        for t, x_t in enumerate(x):
            out = out + self.neuron(self.linear(x_t))
            if batch_idx == self.fail_at_batch and t == 1:
                raise RuntimeError("boom")
        return ((out - 1) ** 2).mean()

    def training_step(self, batch, batch_idx):
        return self._run(batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        self._run(batch, batch_idx)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader(sizes):
    """Batches of the given sizes in a row (the last batch of an epoch is often smaller)."""
    data = TensorDataset(torch.rand(sum(sizes), 4, 3) * 3)
    return DataLoader(data, batch_sampler=[list(range(sum(sizes[:i]), sum(sizes[: i + 1]))) for i in range(len(sizes))])


def trainer(callbacks, **kwargs):
    return L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kwargs,
    )


def test_reset_state_between_batches_of_different_sizes_and_stages():
    model = SingleStepModel()
    trainer([ResetState()]).fit(model, loader([5, 3, 5]), loader([2, 4]))
    assert model.states_seen and all(v is None for v in model.states_seen)  # every batch starts from reset
    assert model.neuron.v is None  # and nothing is left hanging after the last one

    leaky = SingleStepModel()
    with pytest.raises(RuntimeError, match="size of tensor"):  # without the callback: stale state of shape 5
        trainer([], num_sanity_val_steps=0).fit(leaky, loader([5, 3]))


def test_reset_state_after_an_exception_mid_batch():
    model = SingleStepModel(fail_at_batch=1)
    with pytest.raises(RuntimeError, match="boom"):
        trainer([ResetState()], num_sanity_val_steps=0).fit(model, loader([4, 4, 4]))
    assert model.neuron.v is None  # the half-processed batch left no state (nor graph) behind
    model.fail_at_batch, model.states_seen = None, []
    trainer([ResetState()]).validate(model, loader([2, 3]))
    assert model.states_seen == [None, None]


# --- TauMonitor with every logger ----------------------------------------------------------------


class TauProbe(L.Callback):
    """The modules' tau after every optimiser step (runs after TauMonitor in the callback list)."""

    def __init__(self):
        self.seen = {}

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.seen[trainer.global_step] = {n: m.tau.clone() for n, m in pl_module.net.spiking_layers().items()}


def read_wandb_history(run_dir: Path) -> list[dict]:
    """The logged rows of the one offline wandb run under ``run_dir``, once its service has written them."""
    return wandb_files.history(wandb_files.wait_for(lambda: list(run_dir.rglob("run-*.wandb"))))


def make_logger(kind, save_dir):
    if kind == "csv":
        return CSVLogger(save_dir, name="csv")
    if kind == "tensorboard":
        return [CSVLogger(save_dir, name="csv"), TensorBoardLogger(save_dir, name="tb")]
    return [CSVLogger(save_dir, name="csv"), WandbLogger(save_dir=str(save_dir), offline=True, project="plifnet-test")]


def is_png(path: Path) -> bool:
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG" and image.size[0] > 100


@pytest.mark.parametrize("kind", ["csv", "tensorboard", "wandb"])
def test_tau_monitor_logs_every_plif_layer(kind, tiny_digits, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    model = SpikingClassifier(
        SpikingNet.paper("mnist", time_steps=2), optimizer=partial(torch.optim.Adam, lr=0.05)
    )  # a large lr so that tau visibly moves
    dm = StaticDataModule("mnist", root=str(tiny_digits), batch_size=8, num_workers=0)
    probe = TauProbe()
    trainer_ = L.Trainer(
        max_epochs=2,
        limit_train_batches=4,
        log_every_n_steps=3,
        logger=make_logger(kind, tmp_path),
        callbacks=[ResetState(), TauMonitor(every_n_steps=3), probe, FiringRateMonitor()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer_.fit(model, dm)
    layers = ["conv1", "conv2", "fc1", "fc2"]
    run = Path(trainer_.log_dir)

    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("tau/conv1")]
    assert [int(r["step"]) for r in rows] == [0, 3, 6, 8]  # start, every 3 steps, and the end of fit
    for row in rows[1:]:
        for name in layers:
            assert float(row[f"tau/{name}"]) == pytest.approx(probe.seen[int(row["step"])][name].item(), rel=1e-6)
    assert float(rows[0]["tau/conv1"]) == pytest.approx(2.0)
    assert float(rows[-1]["tau/conv1"]) != pytest.approx(2.0, abs=1e-4)  # tau was trained

    with open(run / "tau.csv") as f:
        tau_rows = list(csv.DictReader(f))
    assert list(tau_rows[0]) == ["step", *layers] and len(tau_rows) == 4
    assert float(tau_rows[-1]["fc1"]) == pytest.approx(model.net.spiking_layers()["fc1"].tau.item(), rel=1e-6)
    assert is_png(run / "tau.png") and is_png(run / "firing_rates.png")
    with open(run / "metrics.csv") as f:  # every epoch's rates kept beside each other, as logged
        logged = [r for r in csv.DictReader(f) if r.get("firing_rate/fc1")]
    with open(run / "firing_rates.csv") as f:
        kept = list(csv.DictReader(f))
    assert [r["epoch"] for r in kept] == ["0", "1"] and list(kept[0]) == ["epoch", *layers]
    for row, log in zip(kept, logged, strict=True):
        assert all(float(row[name]) == pytest.approx(float(log[f"firing_rate/{name}"]), rel=1e-6) for name in layers)

    if kind == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(Path(trainer_.loggers[1].log_dir)), size_guidance={"images": 0}).Reload()
        scalars = {e.step: e.value for e in events.Scalars("tau/fc2")}
        assert sorted(scalars) == [0, 3, 6, 8]
        assert scalars[6] == pytest.approx(probe.seen[6]["fc2"].item(), rel=1e-6)
        assert "tau_trajectories" in events.Tags()["images"] and "firing_rates" in events.Tags()["images"]
    if kind == "wandb":
        import wandb

        wandb.finish()  # the CLI's process exit does this; here the run must be closed to be read
        history = read_wandb_history(tmp_path / "wandb")
        logged = {row["trainer/global_step"]: row for row in history if "tau/conv2" in row}
        assert sorted(logged) == [0, 3, 6, 8]
        assert logged[3]["tau/conv2"] == pytest.approx(probe.seen[3]["conv2"].item(), rel=1e-6)
        assert any(key.startswith("tau_trajectories/") for row in history for key in row)  # the image
        assert any("firing_rate/fc1" in row for row in history)
        media = list((tmp_path / "wandb").rglob("media/images/*.png"))
        assert any(p.name.startswith("tau_trajectories") for p in media) and all(is_png(p) for p in media)


def test_per_channel_tau_logs_mean_min_max(tiny_digits, tmp_path):
    model = SpikingClassifier(
        SpikingNet.paper("mnist", time_steps=2, options=NeuronOptions(per_channel=True)),
        optimizer=partial(torch.optim.Adam, lr=0.05),
    )
    dm = StaticDataModule("mnist", root=str(tiny_digits), batch_size=8, num_workers=0, val_fraction=0)
    trainer_ = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        logger=[CSVLogger(tmp_path), TensorBoardLogger(tmp_path, name="tb")],
        callbacks=[TauMonitor(every_n_steps=1)],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer_.fit(model, dm)
    with open(Path(trainer_.log_dir) / "metrics.csv") as f:
        last = [r for r in csv.DictReader(f) if r.get("tau/fc1/mean")][-1]
    tau = model.net.spiking_layers()["fc1"].tau
    assert float(last["tau/fc1/min"]) == pytest.approx(tau.min().item(), rel=1e-6)
    assert float(last["tau/fc1/max"]) == pytest.approx(tau.max().item(), rel=1e-6)
    assert float(last["tau/fc1/min"]) < float(last["tau/fc1/mean"]) < float(last["tau/fc1/max"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(trainer_.loggers[1].log_dir).Reload()
    assert "tau/fc1/hist" in events.Tags()["histograms"]


# --- FiringRateMonitor ---------------------------------------------------------------------------


class ThreeIF(L.LightningModule):
    """Three IF layers fed constant currents 0.5, 0.25 and 0: they fire every 2nd, every 4th step, never."""

    def __init__(self):
        super().__init__()
        self.every2, self.every4, self.silent = IF(), IF(), IF()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def validation_step(self, batch, batch_idx):
        (x,) = batch  # [N, T, F]
        x = x.transpose(0, 1)
        self.every2(x * 0.5)
        self.every4(x * 0.25)
        self.silent(x * 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_spike_sums_are_exact_across_chunks_and_past_float32s_integers(dtype):
    generator = torch.Generator().manual_seed(0)
    spikes = (torch.rand(8, 3, 1001, generator=generator) < 0.3).to(dtype)  # 24024 values: 25 chunks of 1000
    assert exact_sum(spikes, chunk=1000).dtype == torch.float64
    assert exact_sum(spikes, chunk=1000).item() == int((spikes == 1).sum())
    many = torch.ones(2**24 + 3, dtype=dtype)  # one float32 sum of these rounds to an even count
    assert many.sum(dtype=torch.float32).item() != 2**24 + 3
    assert exact_sum(many).item() == 2**24 + 3


def test_firing_rates_match_a_direct_count(tmp_path):
    x = torch.ones(12, 8, 5)  # 12 samples, T = 8
    x[6:, 3:] = 0  # half of the samples get no input after step 3
    expected = {}
    for name, scale in [("every2", 0.5), ("every4", 0.25), ("silent", 0.0)]:
        expected[name] = IF()(x.transpose(0, 1) * scale).mean().item()
    assert expected["every2"] == pytest.approx((4 + 1) / 2 / 8)  # full input: 4 spikes; cut input: 1 spike
    monitor = FiringRateMonitor()
    trainer_ = L.Trainer(
        logger=CSVLogger(tmp_path), callbacks=[monitor], enable_progress_bar=False, enable_model_summary=False
    )
    with pytest.warns(RuntimeWarning, match="spiking layer silent was silent for a whole validation epoch"):
        trainer_.validate(ThreeIF(), DataLoader(TensorDataset(x), batch_size=5))
    assert monitor.rates == pytest.approx(expected)
    with open(Path(trainer_.log_dir) / "metrics.csv") as f:
        row = list(csv.DictReader(f))[-1]
    assert float(row["firing_rate/every4"]) == pytest.approx(expected["every4"])
    assert is_png(Path(trainer_.log_dir) / "firing_rates.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # warned once per layer, not every epoch
        trainer_.validate(ThreeIF(), DataLoader(TensorDataset(x), batch_size=5))


def test_monitors_keep_no_activations(tiny_digits, tmp_path):
    monitor = FiringRateMonitor()
    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=2))
    dm = StaticDataModule("mnist", root=str(tiny_digits), batch_size=8, num_workers=0)
    L.Trainer(
        logger=CSVLogger(tmp_path), callbacks=[monitor], enable_progress_bar=False, enable_model_summary=False
    ).validate(model, dm)
    held = [v for v in vars(monitor).values() if torch.is_tensor(v)]
    held += [v for d in (monitor.sums,) for v in d.values()]
    assert all(t.numel() == 1 for t in held)
    assert all(not layer._forward_hooks for layer in model.net.spiking_layers().values())  # hooks removed


def test_the_progress_bar_is_one_line_of_an_80_column_terminal(tiny_digits, tmp_path):
    """What the console shows while training: the bar, its counts and times, the step's loss and the last
    validation accuracy, without wrapping at 80 columns (Lightning's own bar took 4 lines there)."""
    console = io.StringIO()
    bar = ProgressBar(console_kwargs={"file": console, "force_terminal": True, "width": 80, "color_system": None})
    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=2))
    data = StaticDataModule("mnist", root=str(tiny_digits), batch_size=8, num_workers=0)
    trainer = L.Trainer(
        max_epochs=1024,
        max_steps=8,
        limit_train_batches=4,
        limit_val_batches=2,
        logger=False,
        callbacks=[ResetState(), TauMonitor(every_n_steps=1), bar],
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # where tau.csv goes
    trainer.fit(model, data)
    lines = [line for line in re.split(r"\x1b\[[0-9;?]*[A-Za-z]|[\r\n]", console.getvalue()) if line.strip()]
    training = [line for line in lines if line.startswith("Epoch ")]
    assert training and all(line.startswith(("Sanity Checking ", "Epoch ", "Validation ")) for line in lines), (
        "\n".join(lines)
    )  # none wrapped
    assert max(map(len, lines)) <= 80
    assert re.search(r"^Epoch 1/1023 .* 4/4 .* loss: \d\.\d+ acc: \d\.\d+ *$", training[-1]), training[-1]
    assert "v_num" not in console.getvalue() and "tau" not in console.getvalue()
