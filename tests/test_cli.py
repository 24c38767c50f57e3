"""``plifnet`` (``python cli.py`` in a clone) end to end: fit, validate, test and predict on generated data
and real MNIST; configs that compose; the command and its configs as an installed package gives them."""

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Callback

from conftest import ROOT, WITHOUT_FIGURES
from plifnet import commands as plifnet_commands
from plifnet.data.static import StaticDataModule
from plifnet.models import SpikingNet
from plifnet.module import SpikingClassifier
from plifnet.options import NeuronOptions


@pytest.fixture
def cli(run_cli):
    """``cli(*ARGS, cwd=...)``: ``python cli.py ARGS`` in ``cwd`` (where its runs/ folder appears), which must succeed."""

    def run(*args, cwd):
        result = run_cli(*args, cwd=cwd)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        return result

    return run


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def epoch_rows(rows, key):
    return [float(r[key]) for r in rows if r.get(key)]


@pytest.fixture
def quick(tmp_path):
    """Flags that shrink the paper's MNIST recipe to seconds (and draw none of the figures that no test here reads)."""
    return [
        *WITHOUT_FIGURES,
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "8",
        "--model.net.time_steps",
        "2",
    ]


def test_fit_test_predict_on_generated_images(cli, run_cli, tiny_digits, quick, tmp_path):
    cli("fit", *quick, "--data.root", tiny_digits, "--trainer.max_epochs", "2", cwd=tmp_path)
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    rows = read_metrics(run)
    # protocol A and B are logged every epoch, beside validation and test accuracy
    for key in (
        "val/acc",
        "test/acc",
        "val/acc_best",
        "test/acc_best",
        "test/acc_at_best_val",
        "train/loss_epoch",
        "train/acc",
    ):
        assert key in rows[0], key
    assert len(epoch_rows(rows, "test/acc")) == 2
    test_acc = epoch_rows(rows, "test/acc")
    assert epoch_rows(rows, "test/acc_best")[-1] == max(test_acc)
    val_acc = epoch_rows(rows, "val/acc")
    best_epoch = max(range(2), key=lambda e: (val_acc[e], e))  # ties: the later epoch
    assert epoch_rows(rows, "test/acc_at_best_val")[-1] == pytest.approx(test_acc[best_epoch])
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (run / "config.yaml").is_file()
    # the best epoch's checkpoint holds its weights (for test, predict, export); last.ckpt the whole state
    (best,) = (run / "checkpoints").glob("epoch*-acc*.ckpt")
    kept, whole = torch.load(best, weights_only=True), torch.load(ckpt, weights_only=True)
    assert "optimizer_states" not in kept and {"optimizer_states", "lr_schedulers", "loops", "callbacks"} <= set(whole)
    assert kept["state_dict"].keys() == whole["state_dict"].keys() and best.stat().st_size < ckpt.stat().st_size / 2
    refused = run_cli("fit", *quick, "--data.root", tiny_digits, "--ckpt_path", best, cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {best} holds the weights only (the best epoch's, kept for test, predict and export): fit "
        f"cannot resume from it; resume from last.ckpt or a step*.ckpt (--ckpt_path last takes the newest), or test it "
        f"with plifnet test --ckpt_path {best}"
    )
    assert sorted(p.name for p in (tmp_path / "runs" / "lightning_logs").iterdir()) == ["version_0"]  # none left
    # the default monitors and loggers: tau per PLIF layer, firing rates, plots, TensorBoard events
    for key in ("tau/conv1", "tau/fc2", "firing_rate/conv1", "firing_rate/fc2"):
        assert epoch_rows(rows, key), key
    assert all((run / name).stat().st_size > 1000 for name in ("tau.png", "firing_rates.png"))
    with open(run / "tau.csv") as f:
        assert next(csv.reader(f)) == ["step", "conv1", "conv2", "fc1", "fc2"]
    assert list((tmp_path / "runs" / "tensorboard" / "version_0").glob("events.out.tfevents.*"))

    # `test` from the checkpoint gives the accuracy of that model on the 40 test images, and says where it wrote it
    said = cli("test", *quick, "--data.root", tiny_digits, "--ckpt_path", ckpt, cwd=tmp_path).stderr
    assert f"test results: {Path('runs') / 'lightning_logs' / 'version_0' / 'test'}" in said  # the run's own folder
    tested = read_metrics(tmp_path / "runs" / "lightning_logs" / "version_0" / "test")
    model = SpikingClassifier.load_from_checkpoint(ckpt).eval()
    dm = StaticDataModule("mnist", root=str(tiny_digits), num_workers=0)
    dm.setup("test")
    x, y = zip(*[dm.test_set[i] for i in range(len(dm.test_set))])
    with torch.no_grad():
        rates = model(torch.stack(x))
    expected = (rates.argmax(-1) == torch.tensor(y)).float().mean().item()
    assert float(tested[-1]["test/acc"]) == pytest.approx(expected)

    # `predict` writes one row of class probabilities and the true label per test image, in order, and says where
    said = cli("predict", *quick, "--data.root", tiny_digits, "--ckpt_path", ckpt, cwd=tmp_path).stderr
    written = tmp_path / "runs" / "lightning_logs" / "version_0" / "predict" / "predictions.csv"
    assert (
        f"predictions of 40 samples: {Path('runs') / 'lightning_logs' / 'version_0' / 'predict' / 'predictions.csv'}"
        in said
    )
    with open(written) as f:
        predictions = list(csv.DictReader(f))
    assert len(predictions) == 40
    probabilities = torch.tensor([[float(r[f"p{c}"]) for c in range(10)] for r in predictions])
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(40), atol=1e-4, rtol=0)
    assert [int(r["predicted"]) for r in predictions] == probabilities.argmax(-1).tolist()
    assert [int(r["label"]) for r in predictions] == list(y)
    # the trainer's limit bounds it (the smoke config sets one)
    said = cli(
        "predict",
        *quick,
        "--data.root",
        tiny_digits,
        "--ckpt_path",
        ckpt,
        "--trainer.limit_predict_batches",
        "2",
        cwd=tmp_path,
    ).stderr
    with open(written) as f:  # the same folder again: no new version_N for each evaluation
        assert len(list(csv.DictReader(f))) == 16 and "predictions of 16 samples" in said  # 2 batches of 8

    said = cli("validate", *quick, "--data.root", tiny_digits, "--ckpt_path", ckpt, cwd=tmp_path).stderr
    assert f"validate results: {Path('runs') / 'lightning_logs' / 'version_0' / 'validate'}" in said
    assert sorted(p.name for p in (tmp_path / "runs" / "lightning_logs").iterdir()) == ["version_0"]
    assert (tmp_path / "runs" / "tensorboard" / "version_0" / "test").is_dir()  # each logger in its own run folder


def test_neuron_options_from_the_command_line(cli, tiny_digits, quick, tmp_path):
    out = cli(
        "fit",
        *quick,
        "--data.root",
        tiny_digits,
        "--model.net.neuron",
        "lif",
        "--model.net.options.tau",
        "16",
        "--model.net.options",
        "{v_reset: null}",  # jsonargparse reads a nested null in a class's arguments only in this form
        "--print_config",
        cwd=tmp_path,
    ).stdout
    assert "neuron: lif" in out and "tau: 16.0" in out and "v_reset: null" in out


@pytest.mark.parametrize("surrogate,built", [("sigmoid", "Sigmoid(alpha=4.0)"), ("atan", "ATan(alpha=2.0)")])
def test_a_surrogate_chosen_on_the_command_line_keeps_its_own_alpha(
    surrogate, built, cli, tiny_digits, quick, tmp_path
):
    """The configs leave surrogate_alpha unset: a sigmoid chosen by name trains at its own 4.0, not at the
    arc-tangent's 2.0 (which stays the paper's)."""
    cli(
        "fit",
        *quick,
        "--data.root",
        tiny_digits,
        "--model.net.options.surrogate",
        surrogate,
        "--trainer.max_steps",
        "1",
        "--trainer.limit_val_batches",
        "0",
        cwd=tmp_path,
    )
    model = SpikingClassifier.load_from_checkpoint(
        tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    )
    assert {repr(m.surrogate) for m in model.net.spiking_layers().values()} == {built}


def test_missing_data_folder_fails_with_the_fix(run_cli, tmp_path, quick):
    result = run_cli("fit", *quick, "--data.root", tmp_path / "absent", cwd=tmp_path)
    assert result.returncode != 0
    assert "mnist was not found in" in result.stderr and "--data.download true" in result.stderr


class LossRecorder(Callback):
    """Every training step's loss, in order, written to ``path`` (JSON) when fit ends."""

    def __init__(self, path: str):
        self.path, self.losses = path, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module):
        Path(self.path).write_text(json.dumps(self.losses))


# The first 20 training losses of the paper's MNIST recipe (`fit --config mnist --config trainer/smoke`, seed 2020,
# real MNIST, float64 so that no CPU's rounding of float32 convolutions changes them), recorded at c1f2ee3 with
# that commit's configs (model.arch, model.neuron on the LightningModule) before the network was injected.
MNIST_RECIPE_LOSSES_AT_C1F2EE3 = [
    0.1,
    0.1,
    0.09938671875,
    0.10045312499999999,
    0.095443359375,
    0.0931083984375,
    0.0936513671875,
    0.09101367187500001,
    0.09171484375000001,
    0.0909873046875,
    0.09207128906250002,
    0.09132421875,
    0.0862451171875,
    0.08863476562500001,
    0.09478710937500001,
    0.0861162109375,
    0.0926640625,
    0.09274121093750001,
    0.09485839843749999,
    0.08772265625,
]


@pytest.mark.real_data
def test_the_papers_mnist_recipe_gives_the_losses_it_gave_before_the_network_was_injected(
    cli, shared_datasets, tmp_path
):
    cli(
        "fit",
        "--config",
        "mnist",
        "--config",
        "trainer/smoke",
        "--data.root",
        shared_datasets,
        "--data.num_workers",
        "0",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.precision",
        "64-true",
        "--trainer.callbacks+=test_cli.LossRecorder",
        "--trainer.callbacks.path",
        tmp_path / "losses.json",
        cwd=tmp_path,
    )
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert len(losses) == 20 and len(set(losses)) > 10  # the network fires and learns: the losses move
    assert losses == pytest.approx(MNIST_RECIPE_LOSSES_AT_C1F2EE3, rel=1e-9, abs=0)


@pytest.mark.real_data
def test_the_smoke_preset_is_a_run_of_seconds_with_everything_a_full_run_writes(cli, shared_datasets, tmp_path):
    """README's quick first run: configs/trainer/smoke.yaml after the dataset config trains 20 batches of one
    epoch and validates and tests on 5 batches each, with the run folder of a full run."""
    cli(
        "fit",
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--config",
        ROOT / "configs" / "trainer" / "smoke.yaml",
        "--data.root",
        shared_datasets,
        cwd=tmp_path,
    )
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (0, 20)
    rows = read_metrics(run)
    assert epoch_rows(rows, "val/acc") and epoch_rows(rows, "test/acc") and epoch_rows(rows, "tau/conv1")
    assert all(
        (run / name).is_file() for name in ("tau.csv", "tau.png", "firing_rates.csv", "energy.csv", "config.yaml")
    )


DATASETS = ("mnist", "fashion_mnist", "cifar10", "nmnist", "cifar10dvs", "dvs_gesture")


@pytest.mark.parametrize("dataset", DATASETS)
def test_a_dataset_config_holds_its_data_and_network_and_every_run_reads_the_papers_recipe_first(
    dataset, run_cli, tmp_path
):
    held = yaml.safe_load((ROOT / "configs" / f"{dataset}.yaml").read_text())
    assert set(held) == {"model", "data"} and set(held["model"]) == {"net"}
    assert set(held["model"]["net"]["init_args"]) <= {"arch", "time_steps", "variant", "dropout"}
    result = run_cli("fit", "--config", dataset, "--print_config", cwd=tmp_path)  # a shipped config by its name
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load(result.stdout)
    model, net = config["model"], config["model"]["net"]
    # docs/paper.md section 3: PLIF, tau0 = 2, ATan surrogate at its own alpha, Adam lr 1e-3, cosine over 64 epochs
    assert net["class_path"] == "plifnet.models.SpikingNet.paper" and net["init_args"]["arch"] == dataset
    options = net["init_args"]["options"]
    assert (net["init_args"]["neuron"], options["tau"], options["surrogate"]) == ("plif", 2.0, "atan")
    assert (model["optimizer"]["class_path"], model["optimizer"]["init_args"]["lr"]) == ("torch.optim.Adam", 0.001)
    assert (model["lr_scheduler"]["class_path"], model["lr_scheduler"]["init_args"]["T_max"]) == (
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        64,
    )
    assert config["seed_everything"] == 2020 and config["trainer"]["max_epochs"] == 1024
    assert config["data"]["init_args"]["dataset"] == dataset
    built = SpikingNet.paper(**{**net["init_args"], "options": NeuronOptions(**options)})
    assert str(built.layers[0].options.surrogate) == "ATan(alpha=2.0)" and built.arch_name == dataset
    if config["data"]["class_path"].endswith("StaticDataModule"):  # the network repeats each image T = 8 times
        assert built.time_steps == 8
    else:  # event data bring their own T
        assert net["init_args"]["time_steps"] is None
        assert config["data"]["init_args"]["time_steps"] == {"nmnist": 10, "cifar10dvs": 20, "dvs_gesture": 20}[dataset]


def test_a_later_config_overrides_the_recipe(run_cli, tmp_path):
    (tmp_path / "sgd.yaml").write_text(
        "model:\n  net:\n    init_args: {neuron: lif}\n  optimizer:\n    class_path: torch.optim.SGD\n"
        "    init_args: {lr: 0.1}\n"
    )
    result = run_cli(
        "fit",
        "--config",
        "mnist",
        "--config",
        tmp_path / "sgd.yaml",
        "--model.net.options.tau",
        "16",
        "--print_config",
        cwd=tmp_path,
    )
    model = yaml.safe_load(result.stdout)["model"]
    net = model["net"]["init_args"]
    assert (
        net["neuron"],
        net["options"]["tau"],
        model["optimizer"]["class_path"],
        model["optimizer"]["init_args"]["lr"],
    ) == (
        "lif",
        16.0,
        "torch.optim.SGD",
        0.1,
    )
    assert model["lr_scheduler"]["init_args"]["T_max"] == 64  # the rest of the recipe stays


def test_a_callback_is_added_and_one_dropped_from_the_command_line(cli, run_cli, tiny_digits, quick, tmp_path):
    cli(
        "fit",
        *quick,
        "--data.root",
        tiny_digits,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--drop_callbacks+=SynapticOps",
        "--drop_callbacks+=plifnet.callbacks.ProgressBar",
        "--trainer.callbacks+=lightning.pytorch.callbacks.EarlyStopping",
        "--trainer.callbacks.monitor",
        "val/acc",
        "--trainer.callbacks.mode",
        "max",
        cwd=tmp_path,
    )
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    paths = [callback["class_path"] for callback in saved["trainer"]["callbacks"]]
    default = yaml.safe_load((ROOT / "configs" / "trainer" / "default.yaml").read_text())["callbacks"]
    dropped = ("SynapticOps", "ProgressBar", *(option.split("=")[1] for option in WITHOUT_FIGURES))  # and quick's
    expected = [c["class_path"] for c in default if not c["class_path"].endswith(dropped)]
    assert paths == expected + ["lightning.pytorch.callbacks.EarlyStopping"]
    assert (
        not (run / "energy.csv").exists() and (run / "tau.csv").is_file()
    )  # SynapticOps wrote nothing, TauMonitor did
    refused = run_cli("fit", *quick, "--data.root", tiny_digits, "--drop_callbacks+=EarlyStop", cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith(
        "error: --drop_callbacks EarlyStop: no such callback in the trainer config (its callbacks: ConfusionMatrix, "
        "FiringRateMonitor,"
    )
    assert "Traceback" not in refused.stderr


def test_a_network_of_ones_own_replaces_the_papers_whole(run_cli, example_plugin, tmp_path):
    """A config whose model.net is another class takes the dataset config's place: the paper network's arch and
    neuron options (which the other class does not take) leave the configuration, nothing of them is applied."""
    result = run_cli(
        "fit",
        "--config",
        "cifar10",
        "--config",
        ROOT / "examples" / "plugin" / "configs" / "handwritten.yaml",
        "--print_config",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    net = yaml.safe_load(result.stdout)["model"]["net"]
    assert net == {"class_path": "plifnet_example.handwritten_net.Net", "init_args": {"time_steps": 4, "channels": 8}}


def test_the_plifnet_command_trains_exports_and_reports_outside_a_clone(run_cli, tiny_digits, tmp_path):
    """The console script of the package: shipped configs by name, from a folder that holds no configs."""
    plifnet = Path(sys.executable).with_name("plifnet")
    env = dict(os.environ, PYTHONPATH="")  # the installed package, not this checkout's folder on sys.path
    result = subprocess.run(
        [
            plifnet,
            "fit",
            "--config",
            "mnist",
            "--config",
            "trainer/smoke",
            "--data.root",
            tiny_digits,
            "--data.num_workers",
            "0",
            "--model.net.time_steps",
            "2",
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.limit_test_batches",
            "1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    exported = run_cli(
        "export", "--ckpt_path", ckpt, "--out", tmp_path / "mnist.nir", cwd=tmp_path, main=plifnet_commands.run
    )
    assert exported.returncode == 0 and (tmp_path / "mnist.nir").stat().st_size > 0, exported.stderr[-2000:]
    absent = run_cli("study", "--out", tmp_path / "none", "--report-only", cwd=tmp_path, main=plifnet_commands.run)
    assert absent.returncode == 1 and "run the study first" in absent.stderr


def test_the_wheel_ships_the_configs_and_the_command(tmp_path):
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "plifnet", tmp_path / "plifnet", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path / "dist",
            tmp_path,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    with zipfile.ZipFile(next((tmp_path / "dist").glob("plifnet-*.whl"))) as wheel:
        names = set(wheel.namelist())
        entry_points = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    shipped = {str(path.relative_to(ROOT)) for path in (ROOT / "plifnet" / "configs").rglob("*.yaml")}
    assert len(shipped) >= 17 and shipped <= names
    assert "plifnet = plifnet.commands:run" in entry_points


def test_plifnet_help_lists_every_command(capsys):
    from plifnet.commands import run

    with pytest.raises(SystemExit) as stop:
        run(["--help"])
    listed = capsys.readouterr().out
    assert stop.value.code == 0
    for command in ("fit", "validate", "test", "predict", "study", "export", "plifnet.neurobench"):
        assert f"  {command} " in listed or command in listed.splitlines()[-1], command
