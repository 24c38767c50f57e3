"""``python cli.py`` end to end: fit, validate, test and predict on generated data, and real MNIST."""

import csv
from pathlib import Path

import pytest
import torch

from conftest import ROOT
from plifnet.data.static import StaticDataModule
from plifnet.module import SpikingClassifier


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
    """Flags that shrink the paper's MNIST recipe to seconds."""
    return [
        "--config", ROOT / "configs" / "mnist.yaml",
        "--data.num_workers", "0", "--data.batch_size", "8",
        "--model.time_steps", "2",
    ]


def test_fit_test_predict_on_generated_images(cli, tiny_digits, quick, tmp_path):
    cli("fit", *quick, "--data.root", tiny_digits, "--trainer.max_epochs", "2", cwd=tmp_path)
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    rows = read_metrics(run)
    # protocol A and B are logged every epoch, beside validation and test accuracy
    for key in ("val/acc", "test/acc", "val/acc_best", "test/acc_best", "test/acc_at_best_val", "train/loss_epoch", "train/acc"):
        assert key in rows[0], key
    assert len(epoch_rows(rows, "test/acc")) == 2
    test_acc = epoch_rows(rows, "test/acc")
    assert epoch_rows(rows, "test/acc_best")[-1] == max(test_acc)
    val_acc = epoch_rows(rows, "val/acc")
    best_epoch = max(range(2), key=lambda e: (val_acc[e], e))  # ties: the later epoch
    assert epoch_rows(rows, "test/acc_at_best_val")[-1] == pytest.approx(test_acc[best_epoch])
    ckpt = run / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and (run / "config.yaml").is_file()
    # the default monitors and loggers: tau per PLIF layer, firing rates, plots, TensorBoard events
    for key in ("tau/conv1", "tau/fc2", "firing_rate/conv1", "firing_rate/fc2"):
        assert epoch_rows(rows, key), key
    assert all((run / name).stat().st_size > 1000 for name in ("tau.png", "firing_rates.png"))
    with open(run / "tau.csv") as f:
        assert next(csv.reader(f)) == ["step", "conv1", "conv2", "fc1", "fc2"]
    assert list((tmp_path / "runs" / "tensorboard" / "version_0").glob("events.out.tfevents.*"))

    # `test` from the checkpoint gives the accuracy of that model on the 40 test images
    cli("test", *quick, "--data.root", tiny_digits, "--ckpt_path", ckpt, cwd=tmp_path)
    tested = read_metrics(tmp_path / "runs" / "lightning_logs" / "version_1")
    model = SpikingClassifier.load_from_checkpoint(ckpt).eval()
    dm = StaticDataModule("mnist", root=str(tiny_digits), num_workers=0)
    dm.setup("test")
    x, y = zip(*[dm.test_set[i] for i in range(len(dm.test_set))])
    with torch.no_grad():
        rates = model(torch.stack(x))
    expected = (rates.argmax(-1) == torch.tensor(y)).float().mean().item()
    assert float(tested[-1]["test/acc"]) == pytest.approx(expected)

    # `predict` writes one row of class probabilities per test image, in order
    cli("predict", *quick, "--data.root", tiny_digits, "--ckpt_path", ckpt, cwd=tmp_path)
    with open(tmp_path / "runs" / "lightning_logs" / "version_2" / "predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    assert len(predictions) == 40
    probabilities = torch.tensor([[float(r[f"p{c}"]) for c in range(10)] for r in predictions])
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(40), atol=1e-4, rtol=0)
    assert [int(r["predicted"]) for r in predictions] == probabilities.argmax(-1).tolist()

    cli("validate", *quick, "--data.root", tiny_digits, "--ckpt_path", ckpt, cwd=tmp_path)


def test_neuron_options_from_the_command_line(cli, tiny_digits, quick, tmp_path):
    out = cli("fit", *quick, "--data.root", tiny_digits, "--model.neuron", "lif", "--model.tau", "16",
              "--model.v_reset", "null", "--print_config", cwd=tmp_path).stdout
    assert "neuron: lif" in out and "tau: 16.0" in out and "v_reset: null" in out


@pytest.mark.parametrize("surrogate,built", [("sigmoid", "Sigmoid(alpha=4.0)"), ("atan", "ATan(alpha=2.0)")])
def test_a_surrogate_chosen_on_the_command_line_keeps_its_own_alpha(surrogate, built, cli, tiny_digits, quick, tmp_path):
    """The configs leave surrogate_alpha unset: a sigmoid chosen by name trains at its own 4.0, not at the
    arc-tangent's 2.0 (which stays the paper's)."""
    cli("fit", *quick, "--data.root", tiny_digits, "--model.surrogate", surrogate, "--trainer.max_steps", "1",
        "--trainer.limit_val_batches", "0", cwd=tmp_path)
    model = SpikingClassifier.load_from_checkpoint(tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" /
                                                   "last.ckpt")
    assert {repr(m.surrogate) for m in model.net.spiking_layers().values()} == {built}


def test_missing_data_folder_fails_with_the_fix(run_cli, tmp_path, quick):
    result = run_cli("fit", *quick, "--data.root", tmp_path / "absent", cwd=tmp_path)
    assert result.returncode != 0
    assert "mnist was not found in" in result.stderr and "--data.download true" in result.stderr


@pytest.mark.real_data
def test_short_run_on_real_mnist(cli, shared_datasets, tmp_path):
    """Sixty batches of the paper's recipe on real MNIST, then 1,008 test images. Sixty batches leave the
    accuracy between 0.34 and 0.50 (seeds 2020-2023), and rounding-level changes move it within that
    range, so the bound only says that the real-data pipeline learns (chance is 0.1)."""
    args = [
        "--config", ROOT / "configs" / "mnist.yaml", "--data.root", shared_datasets,
        "--data.num_workers", "1", "--data.val_fraction", "0",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "60", "--trainer.limit_val_batches", "0",
        "--trainer.callbacks", "[]",
    ]
    cli("fit", *args, cwd=tmp_path)
    ckpt = next((tmp_path / "runs").rglob("*.ckpt"), None)
    assert ckpt is not None
    cli("test", *args, "--ckpt_path", ckpt, "--trainer.limit_test_batches", "63", cwd=tmp_path)
    rows = read_metrics(tmp_path / "runs" / "lightning_logs" / "version_1")
    assert float(rows[-1]["test/acc"]) > 0.25


@pytest.mark.real_data
def test_the_smoke_preset_is_a_run_of_seconds_with_everything_a_full_run_writes(cli, shared_datasets, tmp_path):
    """README's quick first run: configs/trainer/smoke.yaml after the dataset config trains 20 batches of one
    epoch and validates and tests on 5 batches each, with the run folder of a full run."""
    cli("fit", "--config", ROOT / "configs" / "mnist.yaml", "--config", ROOT / "configs" / "trainer" / "smoke.yaml",
        "--data.root", shared_datasets, cwd=tmp_path)
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (0, 20)
    rows = read_metrics(run)
    assert epoch_rows(rows, "val/acc") and epoch_rows(rows, "test/acc") and epoch_rows(rows, "tau/conv1")
    assert all((run / name).is_file() for name in ("tau.csv", "tau.png", "firing_rates.csv", "energy.csv", "config.yaml"))

