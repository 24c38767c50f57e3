"""Failures: a NaN loss stops the run and keeps the checkpoints; bad input gets a clear error."""

import csv
import functools
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from conftest import ROOT, make_image_folder
from plifnet.callbacks import StopOnNonFinite
from plifnet.models import SpikingNet
from plifnet.module import SpikingClassifier


def test_nan_loss_stops_before_the_update_and_keeps_the_last_checkpoint(tmp_path):
    class DivergesAtStep6(SpikingClassifier):
        # NaN inputs only silence a spiking network (NaN >= threshold is false), so the loss is made to diverge
        def _loss(self, rates, y):
            loss = super()._loss(rates, y)
            return loss * float("nan") if self.global_step == 6 else loss

    x, y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    model = DivergesAtStep6(SpikingNet.paper("mnist", time_steps=2))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=0, save_last=True)
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[StopOnNonFinite(), checkpoint],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 6 \(epoch 0\).*last\.ckpt"):
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=4))
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN never reached the weights
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 6
    assert all(torch.isfinite(v).all() for k, v in saved["state_dict"].items() if k.startswith("net."))


def spawn_cli(*args, cwd):
    """``python cli.py ARGS`` in a process of its own, for fixtures wider than one test (``run_cli`` is per test)."""
    return subprocess.run(
        [sys.executable, ROOT / "cli.py", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


OWN_NET = [
    "--config",
    ROOT / "configs" / "mnist.yaml",
    "--data.num_workers",
    "0",
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "1",
    "--trainer.limit_val_batches",
    "1",
]  # for a --model.net of one's own
BASE = [*OWN_NET, "--model.net.time_steps", "1"]  # the paper's network at T = 1

CHOOSE = "give a class path (package.module.Class), or install a package that declares it in the entry-point group"
BAD_INPUTS = {  # what is wrong: (extra arguments, the one line it must print; {empty}: an empty folder)
    "misspelt config key": (
        ["--model.tua", "16"],
        "error: unrecognized arguments: --model.tua 16. Accepted options: plifnet fit --help",
    ),
    "unknown neuron": (
        ["--model.net.neuron", "alfi"],
        f"error: bad configuration value: unknown neuron 'alfi'; choose one of ['adlif', 'alif', "
        f"'example_alif', 'if', 'lif', 'plif'], {CHOOSE} 'plifnet.neurons'",
    ),
    "unknown surrogate": (
        ["--model.net.options.surrogate", "tanh"],
        f"error: bad configuration value: unknown surrogate 'tanh'; choose one of ['atan', "
        f"'fast_sigmoid', 'gaussian', 'piecewise_quadratic', 'rectangle', 'sigmoid'], {CHOOSE} "
        f"'plifnet.surrogates'",
    ),
    "tau <= 1": (
        ["--model.net.options.tau", "1.0"],
        "error: bad configuration value: tau must be > 1 (the leak k = 1/tau must lie in (0, 1)), got tau=1.0",
    ),
    "T < 1": (["--model.net.time_steps", "0"], "error: bad configuration value: time_steps must be >= 1, got 0"),
    "CIFAR-10 images into the MNIST network": (
        ["--data.dataset", "cifar10"],
        "error: the mnist network takes [N, C, H, W] images with C, H, W = 1, "
        "28, 28; got shape (1, 3, 32, 32). Check that the data module matches "
        "the network (--model.net).",
    ),
    "empty data folder": (
        ["--data.root", "{empty}"],
        "error: mnist was not found in {empty}. Expected either torchvision's layout ({empty}/MNIST) "
        "or an image folder ({empty}/train/<class>/* and {empty}/test/<class>/*). Fix: pass "
        "--data.download true (needs network) to fetch it, or --data.root DIR to point at a copy you "
        "have.",
    ),
    "batch size 0": (
        ["--data.batch_size", "0"],
        "error: bad configuration value: --data.batch_size must be >= 1, got 0",
    ),
    "a network class that cannot be imported": (
        ["--model.net", "nowhere.Net"],
        "error: --model.net: cannot import nowhere.Net (No module named "
        "'nowhere'); give the class path of an importable class. Accepted "
        "options: plifnet fit --help",
    ),
    "empty layers": (
        ["--model.net", "plifnet.models.SpikingNet", "--model.net.layers="],
        "error: bad configuration value: layers is empty: give the network as tokens, e.g. layers='c128 p "
        "c128 p d f2048 d f100' (c<n> convolution, p max-pooling, d dropout, f<n> linear; 10 output "
        "neurons per class)",
    ),
    "bad layer token": (
        ["--model.net", "plifnet.models.SpikingNet", "--model.net.layers", "c8x", "--model.net.classes", "10"],
        "error: bad layer token 'c8x' in 'c8x': use c<n>, p, d or f<n>",
    ),
    "an option that the network's class does not take": (
        ["--model.net", "plifnet.models.SpikingNet", "--model.net.layers", "c8 p f100", "--model.net.arch", "mnist"],
        "error: --model.net: plifnet.models.SpikingNet: Option 'arch' is not accepted. Accepted options: plifnet fit --help",
    ),
}
LIGHTNING_INFO = ("Seed set to ", "GPU available: ", "TPU available: ", "HPU available: ", "`Trainer(limit_")


def error_lines(stderr: str) -> list[str]:
    """What a failed command printed, less the lines Lightning prints at every start."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(LIGHTNING_INFO)]


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_a_clear_error_and_an_exit_code(case, run_cli, tmp_path, tiny_digits):
    extra, message = BAD_INPUTS[case]
    (tmp_path / "empty").mkdir()
    cifar = tmp_path / "cifar"
    if case.startswith("CIFAR"):
        from conftest import make_image_folder

        make_image_folder(cifar, per_class=2, test_per_class=1, size=32, mode="RGB")
    root = cifar if case.startswith("CIFAR") else tiny_digits
    extra = [str(a).replace("{empty}", str(tmp_path / "empty")) for a in extra]
    result = run_cli("fit", *(OWN_NET if "--model.net" in extra else BASE), "--data.root", root, *extra, cwd=tmp_path)
    assert result.returncode == 1
    printed = error_lines(result.stderr)  # one line, no traceback, no usage screen
    assert printed == [message.replace("{empty}", str(tmp_path / "empty"))], result.stderr[-3000:]
    assert not list(tmp_path.glob("runs/*/version_*")), "a run that failed to start left a run folder"


def test_the_exporter_names_what_it_needs_reads_a_runs_own_config_and_keeps_a_url_whole(run_cli, tiny_digits, tmp_path):
    import socket

    from plifnet import export

    fit = run_cli(
        "fit",
        *OWN_NET,
        "--data.root",
        tiny_digits,
        "--model.net",
        "plifnet.models.SpikingNet",
        "--model.net.layers",
        "c8 p f100",
        "--model.net.classes",
        "10",
        "--model.net.static",
        "true",
        cwd=tmp_path,
    )
    assert fit.returncode == 0, fit.stderr[-3000:]
    run = tmp_path / "runs" / "lightning_logs" / "version_0"
    alone = run_cli(
        "--ckpt_path", run / "checkpoints" / "last.ckpt", "--out", tmp_path / "a.nir", cwd=tmp_path, main=export.main
    )
    assert alone.returncode == 1 and error_lines(alone.stderr) == [
        "error: the checkpoint's network takes its input shape from the data module, which a checkpoint does not hold: "
        "pass the run's config too, --config <run folder>/config.yaml (or the configs it was trained with)"
    ]
    configured = run_cli(
        "--ckpt_path",
        run / "checkpoints" / "last.ckpt",
        "--config",
        run / "config.yaml",
        "--out",
        tmp_path / "b.nir",
        cwd=tmp_path,
        main=export.main,
    )  # config.yaml holds fit's ckpt_path too
    assert configured.returncode == 0 and (tmp_path / "b.nir").is_file(), configured.stderr[-3000:]
    with socket.socket() as closed:  # a port that nothing listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/run/last.ckpt"
    fetched = run_cli("--ckpt_path", url, "--out", tmp_path / "c.nir", cwd=tmp_path, main=export.main)
    assert fetched.returncode == 1 and error_lines(fetched.stderr) == [
        f"error: could not download checkpoint {url}: <urlopen error [Errno 111] Connection refused>. Check the URL and "
        f"the network, or download it yourself and pass the file's path"
    ]


def test_checkpoints_of_another_network_or_truncated_are_refused(run_cli, tmp_path, tiny_digits):
    cifar = SpikingClassifier(SpikingNet.paper("cifar10", time_steps=1))
    trainer = L.Trainer(logger=False, max_epochs=0)
    trainer.strategy.connect(cifar)
    trainer.save_checkpoint(tmp_path / "script.ckpt")
    # a network built in a script is not among the hyperparameters: the run's config builds one, and the
    # checkpoint's weights that do not fit it are named in one line
    result = run_cli("test", *BASE, "--data.root", tiny_digits, "--ckpt_path", tmp_path / "script.ckpt", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            f"error: the weights of checkpoint {tmp_path / 'script.ckpt'} do not fit this run's network "
            f"(size mismatch for net.encoder.0.weight): give the configs that it was trained with"
        )
    )
    checkpoint = torch.load(tmp_path / "script.ckpt", weights_only=True)  # as plifnet fit records the network
    checkpoint["hyper_parameters"]["net"] = {
        "class_path": "plifnet.models.SpikingNet.paper",
        "init_args": {"arch": "cifar10", "time_steps": 1},
    }
    torch.save(checkpoint, tmp_path / "cifar.ckpt")
    result = run_cli("test", *BASE, "--data.root", tiny_digits, "--ckpt_path", tmp_path / "cifar.ckpt", cwd=tmp_path)
    # the checkpoint's network (which its hyperparameters would rebuild) is not the config's: named before any data
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        f"error: checkpoint {tmp_path / 'cifar.ckpt'} was trained with model.net.arch 'cifar10', and a --config file "
        f"of this run sets 'mnist'" in result.stderr
    )

    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((tmp_path / "cifar.ckpt").read_bytes()[:5000])
    result = run_cli("test", *BASE, "--data.root", tiny_digits, "--ckpt_path", truncated, cwd=tmp_path)
    assert result.returncode != 0 and f"checkpoint {truncated} is truncated or is not a checkpoint" in result.stderr


def test_checkpoints_load_with_weights_only_semantics(run_cli, tmp_path, tiny_digits):
    """A checkpoint that would run code when unpickled is refused, not executed."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"state_dict": {}, "payload": Payload()}, tmp_path / "evil.ckpt")
    result = run_cli("test", *BASE, "--data.root", tiny_digits, "--ckpt_path", tmp_path / "evil.ckpt", cwd=tmp_path)
    assert result.returncode != 0 and not (tmp_path / "pwned").exists()
    assert "weights_only" in result.stderr or "Unsupported global" in result.stderr


def kill_and_resume(args, kill_at: int, tmp_path, run_cli):
    """Run ``plifnet fit ARGS`` whole in tmp_path/whole; in tmp_path/killed, SIGKILL it when step
    ``kill_at`` starts and resume it with ``--ckpt_path last``. Returns the three finished runs. Only the
    killed run is a process of its own (SIGKILL is the point); the other two run in this process."""
    (tmp_path / "whole").mkdir()
    (tmp_path / "killed").mkdir()
    whole = run_cli("fit", *args, cwd=tmp_path / "whole")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests"), PLIFNET_KILL_AT=str(kill_at))
    killed = subprocess.run(
        [sys.executable, ROOT / "cli.py", "fit", *map(str, args), "--trainer.callbacks+=kill_probe.KillAtStep"],
        cwd=tmp_path / "killed",
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    resumed = run_cli("fit", *args, "--ckpt_path", "last", cwd=tmp_path / "killed")
    assert whole.returncode == 0, whole.stderr[-2000:]
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return whole, killed, resumed


@pytest.mark.multiprocess
def test_killed_run_resumed_from_last_ends_like_an_uninterrupted_one(run_cli, tmp_path, tiny_digits):
    """SIGKILL at step 7 (after the step-6 checkpoint), then `--ckpt_path last`: the same weights and
    tau at the end as a run that was never interrupted (CPU, seed 2020, with the paper's augmentation
    and dropout, both of which draw random numbers)."""
    args = [
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--data.root",
        tiny_digits,
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "4",
        "--model.net.time_steps",
        "2",
        "--model.optimizer.lr",
        "0.01",
        "--data.augment",
        "true",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "12",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps",
        "3",
        "--trainer.callbacks.save_top_k",
        "0",
        "--trainer.callbacks.save_last",
        "true",
    ]
    _, _, resumed = kill_and_resume(args, 7, tmp_path, run_cli)
    interrupted = torch.load(
        tmp_path / "killed" / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert interrupted["global_step"] == 6
    assert "resuming from runs/lightning_logs/version_0/checkpoints/last.ckpt" in resumed.stderr

    with open(tmp_path / "killed" / "runs" / "lightning_logs" / "version_1" / "metrics.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert steps[0] == 6 and steps[-1] == 11  # the resumed run did steps 6..11 only, not a fresh run

    with open(tmp_path / "killed" / "runs" / "lightning_logs" / "version_1" / "tau.csv") as f:
        tau_steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert tau_steps[0] == 0 and tau_steps[-1] == 12  # the tau history runs across the interruption

    final = [
        torch.load(folder / "runs" / "lightning_logs" / version / "checkpoints" / "last.ckpt", weights_only=True)
        for folder, version in ((tmp_path / "whole", "version_0"), (tmp_path / "killed", "version_1"))
    ]
    assert final[0]["global_step"] == final[1]["global_step"] == 12
    for name, value in final[0]["state_dict"].items():
        torch.testing.assert_close(final[1]["state_dict"][name], value, rtol=1e-5, atol=1e-6, msg=name)
    w = final[0]["state_dict"]["net.layers.0.w"]
    assert w.item() != pytest.approx(0.0, abs=1e-6)  # tau moved, and moved the same in both runs


def test_an_interrupted_checkpoint_write_leaves_the_previous_one_readable(tmp_path, monkeypatch):
    """A write that dies half-way (disk full, kill) must not replace the last good checkpoint."""
    from fsspec.implementations.local import LocalFileOpener

    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=1))
    trainer = L.Trainer(logger=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    good = (tmp_path / "last.ckpt").read_bytes()

    def dies_half_way(self, data):
        LocalFileOpener.__dict__["_write_original"](self, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LocalFileOpener, "_write_original", LocalFileOpener.write, raising=False)
    monkeypatch.setattr(LocalFileOpener, "write", dies_half_way)
    with torch.no_grad():
        model.net.spiking_layers()["fc1"].w.fill_(3.0)
    with pytest.raises(OSError, match="No space left"):
        trainer.save_checkpoint(tmp_path / "last.ckpt")
    monkeypatch.undo()
    assert (tmp_path / "last.ckpt").read_bytes() == good
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["state_dict"]
    assert [v.item() for k, v in state.items() if k.endswith(".w")] == [0.0] * 4  # tau0 = 2, not the w of 3.0


@pytest.mark.multiprocess
def test_resume_is_exact_with_loader_workers_and_validation(run_cli, tmp_path, tiny_digits):
    """The configs' defaults: 2 loader workers per loader (persistent), validation and test loaders
    every epoch, a sanity check at the start of a fresh run but not of a resumed one. SIGKILL in
    epoch 0, `--ckpt_path last`, and epoch 1 must end with the uninterrupted run's weights: no
    loader may draw its workers' seeds from the global random stream that dropout uses."""
    args = [
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--data.root",
        tiny_digits,
        "--data.num_workers",
        "2",
        "--data.batch_size",
        "4",
        "--model.net.time_steps",
        "2",
        "--model.optimizer.lr",
        "0.01",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "8",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps",
        "3",
        "--trainer.callbacks.save_top_k",
        "-1",
        "--trainer.callbacks.filename",
        "s{step}",
    ]
    _, _, resumed = kill_and_resume(args, 4, tmp_path, run_cli)
    assert "sstep=3.ckpt" in resumed.stderr  # resumed mid-epoch 0, before any validation ran
    final = [
        torch.load(folder / "runs" / "lightning_logs" / version / "checkpoints" / "last.ckpt", weights_only=True)
        for folder, version in ((tmp_path / "whole", "version_0"), (tmp_path / "killed", "version_1"))
    ]
    assert final[0]["global_step"] == final[1]["global_step"] == 16
    for name, value in final[0]["state_dict"].items():
        torch.testing.assert_close(final[1]["state_dict"][name], value, rtol=0, atol=0, msg=name)


def test_a_diverged_run_stops_non_zero_and_saves_no_non_finite_checkpoint(run_cli, tmp_path, tiny_digits):
    """lr 1e30: the weights overflow within a few steps, the network falls silent and the rate loss
    stays at a finite 0.1, so only the gradients or the state (BatchNorm's running variance) show it.
    (Which comes first depends on the kernels: since the tau gradient is exact at k = 0, no NaN comes
    from it at step 1, and the overflowing BatchNorm statistics stop the run at the checkpoint.)"""
    result = run_cli(
        "fit",
        *BASE,
        "--data.root",
        tiny_digits,
        "--model.optimizer.lr",
        "1e30",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "4",
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    stopped = re.fullmatch(
        r"error: .*(is not finite|holds non-finite values, so the checkpoint was not written) at step "
        r"\d+ \(epoch \d\): the run has diverged and is stopped before this reaches the weights or a "
        r"checkpoint\. Last good checkpoint: (.*)\. Lower the learning rate \(--model\.optimizer\.lr\), or check the input data\.",
        last,
    )
    assert stopped, last
    saved = list((tmp_path / "runs").rglob("*.ckpt"))
    # the checkpoint it names is one that exists, not the one it refused to write
    assert stopped.group(2) == "none written yet" if not saved else (tmp_path / stopped.group(2)).is_file(), last
    for path in saved:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(torch.isfinite(value).all() for value in state.values() if value.is_floating_point()), path


def write_idx(path, array):
    """An IDX file as LeCun's page describes it: 0, 0, 0x08 (unsigned bytes), the number of
    dimensions, each dimension as a big-endian uint32, then the bytes."""
    import struct

    path.write_bytes(bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def test_a_truncated_mnist_file_is_named_instead_of_not_found(run_cli, tmp_path):
    import numpy as np
    from torchvision.datasets import MNIST

    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("t10k", 10)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(count, dtype=np.uint8) % 10)
    assert len(MNIST(str(tmp_path / "data"), train=True)) == 40  # torchvision reads the files as written
    images = raw / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-1000])
    result = run_cli("fit", *BASE, "--data.root", tmp_path / "data", cwd=tmp_path)
    assert result.returncode == 1
    printed = error_lines(result.stderr)
    assert len(printed) == 1, result.stderr[-3000:]
    last = printed[0]
    assert f"{images} is {16 + 40 * 784 - 1000} bytes, but its header announces 40x28x28 items" in last, result.stderr[
        -2000:
    ]
    assert "--data.download true" in last and "was not found" not in result.stderr


EVENT_FIT = [
    "fit",
    "--config",
    ROOT / "configs" / "nmnist.yaml",
    "--data.num_workers",
    "0",
    "--data.batch_size",
    "2",
    "--data.time_steps",
    "2",
    "--data.val_fraction",
    "0",
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "2",
]


def test_a_damaged_frames_cache_file_is_rebuilt_and_all_corrupt_recordings_stop_the_run(run_cli, tmp_path):
    import numpy as np
    from test_event_data import make_nmnist

    make_nmnist(tmp_path / "data", per_digit=1, test_per_digit=1)
    assert run_cli(*EVENT_FIT, "--data.root", tmp_path / "data", cwd=tmp_path).returncode == 0
    cached = sorted((tmp_path / "data" / "frames_cache").rglob("*.npy"))
    good = np.load(cached[0])
    cached[0].write_bytes(cached[0].read_bytes()[:100])
    for on_error in ("raise", "skip"):
        result = run_cli(*EVENT_FIT, "--data.root", tmp_path / "data", "--data.on_error", on_error, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        if on_error == "raise":
            assert (
                f"damaged frames cache file {cached[0]}" in result.stderr
                and "rebuilt from the recording" in result.stderr
            )
        np.testing.assert_array_equal(np.load(cached[0]), good)

    for recording in (tmp_path / "data").rglob("*.bin"):
        recording.write_bytes(b"\0\0\0")  # not a whole 5-byte event
    result = run_cli(
        *EVENT_FIT, "--data.root", tmp_path / "data", "--data.cache", "false", "--data.on_error", "skip", cwd=tmp_path
    )
    assert result.returncode != 0
    printed = error_lines(result.stderr)
    assert len(printed) == 1 and printed[0].startswith(
        "error: nmnist: all 10 recordings of a split are corrupt, so there is nothing to load"
    ), result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "runs" / "lightning_logs").iterdir()) == [
        "version_0",
        "version_1",
        "version_2",
    ]


def test_a_checkpoint_of_a_non_finite_state_is_never_written(tmp_path):
    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=1))
    trainer = L.Trainer(logger=False, max_epochs=0, callbacks=[StopOnNonFinite()])
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "good.ckpt")
    model.net.encoder[1].running_var[3] = float("inf")  # BatchNorm statistics overflow in the forward pass
    with pytest.raises(FloatingPointError, match=r"net\.encoder\.1\.running_var .*holds non-finite values"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


def final_metrics(folder: Path) -> dict[str, float]:
    """The last logged value of each metric in a CSV logger's metrics.csv."""
    with open(folder / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return {key: float(row[key]) for row in rows for key in row if row[key] not in ("", None)}


@pytest.mark.multiprocess
def test_resume_keeps_protocols_a_and_b(run_cli, tmp_path, tiny_digits):
    """SIGKILL after epoch 1 of 3 (validation and test loaders every epoch), `--ckpt_path last`: the
    best-accuracy records (protocol A: test/acc_best, protocol B: test/acc_at_best_val) and
    val/acc_best at the end equal the uninterrupted run's, which are re-derived here from its own
    per-epoch accuracies."""
    args = [
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--data.root",
        tiny_digits,
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "17",
        "--model.net.time_steps",
        "2",
        "--model.optimizer.lr",
        "0.01",
        "--trainer.max_epochs",
        "3",
        "--trainer.logger",
        "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir",
        "runs",
    ]
    kill_and_resume(
        args, 20, tmp_path, run_cli
    )  # step 20: the first of epoch 2 (170 training images, 10 batches of 17)
    whole = final_metrics(tmp_path / "whole" / "runs" / "lightning_logs" / "version_0")
    resumed = final_metrics(tmp_path / "killed" / "runs" / "lightning_logs" / "version_1")
    with open(tmp_path / "whole" / "runs" / "lightning_logs" / "version_0" / "metrics.csv") as f:
        epochs = [r for r in csv.DictReader(f) if r.get("val/acc")]
    val, test = [float(r["val/acc"]) for r in epochs], [float(r["test/acc"]) for r in epochs]
    assert len(val) == 3
    first_best = min(e for e in range(3) if val[e] == max(val))
    assert whole["test/acc_at_best_val"] == test[first_best] and whole["test/acc_best"] == max(test)
    for key in ("val/acc_best", "test/acc_best", "test/acc_at_best_val", "val/acc", "test/acc"):
        assert resumed[key] == whole[key], key
    rates = [
        (tmp_path / run / "runs" / "lightning_logs" / version / "firing_rates.csv").read_text()
        for run, version in (("whole", "version_0"), ("killed", "version_1"))
    ]
    assert len(rates[0].splitlines()) == 4 and rates[1] == rates[0]  # the epochs before the kill are kept


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The run that the interrupted ones must end like (2 loader workers, validation, 2 epochs)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    digits = make_image_folder(folder / "digits", per_class=20, test_per_class=4)
    args = [
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--data.root",
        digits,
        "--data.num_workers",
        "2",
        "--data.batch_size",
        "4",
        "--model.net.time_steps",
        "2",
        "--model.optimizer.lr",
        "0.01",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "8",
        "--trainer.limit_val_batches",
        "2",
    ]
    whole = spawn_cli("fit", *args, cwd=folder)
    assert whole.returncode == 0, whole.stderr[-2000:]
    return (
        args,
        whole,
        torch.load(folder / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True),
    )


@pytest.mark.multiprocess
@pytest.mark.parametrize("name,at,saved_step", [("SIGTERM", "train:5", 6), ("SIGINT", "val:0", 9)])
def test_an_interrupted_fit_saves_its_state_says_how_to_resume_and_resumes_exactly(
    name, at, saved_step, tmp_path, uninterrupted
):
    """The signal goes to the whole process group (loader workers too), as Ctrl-C in a terminal and a
    cluster's preemption do: mid-epoch (SIGTERM at step 5), or during validation (SIGINT: the run stops
    after the next training batch). The state is saved, the last line is the command that resumes,
    and that command ends with the uninterrupted run's weights, bit for bit."""
    args, whole, whole_state = uninterrupted
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "tests"), PLIFNET_SIGNAL=name, PLIFNET_SIGNAL_AT=at, PYTHONUNBUFFERED="1"
    )
    interrupted = subprocess.run(
        [sys.executable, ROOT / "cli.py", "fit", *map(str, args), "--trainer.callbacks+=kill_probe.SignalAt"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    assert interrupted.returncode == 128 + signal.Signals[name].value, interrupted.stderr[-3000:]
    saved = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "interrupted.ckpt"
    assert torch.load(saved, weights_only=True)["global_step"] == saved_step
    last_line = interrupted.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"interrupted by {name} at step {saved_step}") and "Traceback" not in interrupted.stderr
    command = shlex.split(last_line.split("resume with: ")[1])
    assert command[-2:] == ["--ckpt_path", "runs/lightning_logs/version_0/checkpoints/interrupted.ckpt"]
    assert command[:2] == [
        sys.executable,
        str(ROOT / "cli.py"),
    ]  # the interpreter that ran, not whichever `python` is first

    resumed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = torch.load(
        tmp_path / "runs" / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert final["global_step"] == whole_state["global_step"] == 16
    for key, value in whole_state["state_dict"].items():
        torch.testing.assert_close(final["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_the_first_screen_counts_flops_and_shows_no_warnings(uninterrupted):
    """The model summary of the README's train command: the network's FLOPs per sample (a forward of
    T = 2 steps of the MNIST network, counted here from the layer sizes: the static image's encoder
    convolution runs once, conv2, fc1 and fc2 at each step; 2 FLOPs per multiply-add), and no warning
    raised inside Lightning or torchdata, nor Lightning's advert."""
    _, whole, _ = uninterrupted
    encoder, per_step = 28 * 28 * 128 * 9, 14 * 14 * 128 * 128 * 9 + 7 * 7 * 128 * 2048 + 2048 * 100
    printed = re.search(r"Total FLOPs: ([\d.]+) M", whole.stdout)
    assert printed, whole.stdout[-2000:]
    assert abs(float(printed.group(1)) - 2 * (encoder + 2 * per_step) / 1e6) < 1
    console = whole.stdout + whole.stderr
    for noise in ("Warning", "deprecated", "💡 Tip", "warn("):
        assert noise not in console, console[-3000:]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    """A real checkpoint of cli.py fit (paper MNIST network, T = 2, 2 steps on a small image folder)."""
    root = tmp_path_factory.mktemp("named_code")
    digits = make_image_folder(root / "digits", per_class=4, test_per_class=2)
    result = spawn_cli(
        "fit",
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--data.root",
        digits,
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "4",
        "--model.net.time_steps",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root, digits, root / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


CRAFTED = {  # hyperparameter (a path into the network's config) -> the value a crafted checkpoint gives it:
    "net.init_args.neuron": "tempfile.mkdtemp",  # each would call tempfile.mkdtemp
    "net.init_args.options.surrogate": "tempfile.mkdtemp",
    "net": {"class_path": "tempfile.TemporaryDirectory", "init_args": {}},
}


def crafted(checkpoint: Path, folder: Path, key: str, value) -> Path:
    """The checkpoint with one hyperparameter replaced: still tensors, strings and numbers only."""
    state = torch.load(checkpoint, weights_only=True)
    if key == "data":  # what a data module would be rebuilt from
        state["datamodule_hyper_parameters"] = {"class_path": "tempfile.TemporaryDirectory"}
    else:
        *above, name = key.split(".")
        functools.reduce(lambda tree, part: tree[part], above, state["hyper_parameters"])[name] = value
    path = folder / f"crafted_{key.replace('.', '_')}.ckpt"
    torch.save(state, path)
    torch.load(path, weights_only=True)  # weights_only-clean
    return path


@pytest.mark.parametrize("key", [*CRAFTED, "data"])
def test_a_checkpoint_that_names_code_runs_nothing(key, run_cli, trained_checkpoint, tmp_path, monkeypatch):
    """cli.py test and fit --ckpt_path, python -m plifnet.export and load_from_checkpoint: refused in one line
    naming the hyperparameter and how to allow it, or (the data module's) never read; no directory appears."""
    import tempfile

    from plifnet import export

    root, digits, checkpoint = trained_checkpoint
    path = crafted(checkpoint, tmp_path, key, CRAFTED.get(key))
    spy = tmp_path / "tmp"
    spy.mkdir()
    monkeypatch.setenv("TMPDIR", str(spy))
    monkeypatch.setattr(tempfile, "tempdir", None)  # TMPDIR is read again
    data = ["--data.root", digits, "--data.num_workers", "0", "--data.batch_size", "4", "--model.net.time_steps", "2"]
    runs = {
        "test": (
            None,
            [
                "test",
                "--config",
                ROOT / "configs" / "mnist.yaml",
                *data,
                "--trainer.limit_test_batches",
                "1",
                "--ckpt_path",
                path,
            ],
        ),
        "fit": (
            None,
            [
                "fit",
                "--config",
                ROOT / "configs" / "mnist.yaml",
                *data,
                "--trainer.max_epochs",
                "2",
                "--trainer.limit_train_batches",
                "1",
                "--trainer.limit_val_batches",
                "1",
                "--ckpt_path",
                path,
            ],
        ),
        "export": (export.main, ["--ckpt_path", path, "--out", tmp_path / "net.nir"]),
    }
    for name, (main, args) in runs.items():
        result = run_cli(*args, cwd=tmp_path, main=main)
        lines = result.stderr.strip().splitlines()
        if key == "data":  # nothing reads a data module's hyperparameters from a checkpoint
            assert result.returncode == 0, result.stderr[-3000:]
        else:
            assert result.returncode == 1, (name, result.stderr[-3000:])
            assert "Traceback" not in result.stderr, result.stderr[-3000:]
            fix = "--allow_class_path VALUE" if name == "export" else "--model.net.neuron VALUE"
            shown = CRAFTED[key] if isinstance(CRAFTED[key], str) else CRAFTED[key]["class_path"]
            where = key if isinstance(CRAFTED[key], str) else f"{key}.class_path"
            assert re.fullmatch(
                rf"error: checkpoint .*crafted_{key.replace('.', '_')}\.ckpt names code this run did not: hyperparameter "
                rf"{re.escape(where)} = '{re.escape(shown)}' is neither built in, a registered plug-in, an "
                rf"installed package's entry point, nor given in this run, so plifnet does not import "
                rf"it; .*{re.escape(fix)}.* to allow it",
                lines[-1],
            ), (name, lines[-1])
        assert not list(spy.iterdir()), f"{name}: something ran tempfile.mkdtemp"
    if key == "data":
        SpikingClassifier.load_from_checkpoint(path)
    else:
        with pytest.raises(
            ValueError,
            match=rf"hyperparameter {re.escape(key)}.* so plifnet does not import it; pass allow_class_paths",
        ):
            SpikingClassifier.load_from_checkpoint(path)
    assert not list(spy.iterdir())


def test_a_named_class_must_be_of_the_right_kind_even_when_allowed(trained_checkpoint, tmp_path):
    _, _, checkpoint = trained_checkpoint
    path = crafted(checkpoint, tmp_path, "net.init_args.neuron", "tempfile.mkdtemp")
    with pytest.raises(
        TypeError, match=r"neuron 'tempfile.mkdtemp' is <function mkdtemp .*>, not a torch.nn.Module class"
    ):
        SpikingClassifier.load_from_checkpoint(path, allow_class_paths=["tempfile.mkdtemp"])


def test_model_options_given_with_ckpt_path_are_refused_where_the_checkpoint_decides(
    run_cli, trained_checkpoint, tmp_path
):
    root, digits, checkpoint = trained_checkpoint
    common = [
        "test",
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--data.root",
        digits,
        "--data.num_workers",
        "0",
        "--trainer.limit_test_batches",
        "1",
        "--ckpt_path",
        checkpoint,
    ]
    refused = run_cli(*common, "--model.loss", "cross_entropy", cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "error: --model.loss 'cross_entropy' differs from the checkpoint's 'rate_mse': with --ckpt_path the checkpoint's "
        "hyperparameters rebuild its model, so --model.loss would be ignored; leave it out, or start a new run from the "
        "weights without --ckpt_path"
    )
    same = run_cli(*common, "--model.net.time_steps", "2", cwd=tmp_path)
    assert same.returncode == 0, same.stderr[-3000:]  # the checkpoint's own value: nothing is dropped


def test_a_refusal_is_one_line_and_any_other_error_keeps_its_traceback(run_cli, tiny_digits, tmp_path, monkeypatch):
    """plifnet's refusals are one type (UserError), which the commands print as one line; an error raised by
    other code (here a ValueError inside a layer's forward, as a bug in a network of one's own would raise)
    keeps its traceback, whatever its kind, so that the bug can be found."""
    from plifnet.errors import UserError

    assert issubclass(UserError, ValueError) and issubclass(UserError, TypeError)
    args = [*BASE, "--data.root", tiny_digits, "--trainer.max_epochs", "1"]
    refused = run_cli("fit", *args, "--model.net.time_steps", "0", cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: bad configuration value: time_steps must be >= 1")

    def deep(self, x):
        raise ValueError("deep inside a layer")

    monkeypatch.setattr(torch.nn.Linear, "forward", deep)
    (tmp_path / "second").mkdir()
    failed = run_cli("fit", *args, cwd=tmp_path / "second")
    assert (
        failed.returncode == 1 and "Traceback" in failed.stderr and "ValueError: deep inside a layer" in failed.stderr
    )
