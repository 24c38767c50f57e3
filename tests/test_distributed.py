"""Two-process DDP on the CPU (gloo) through cli.py, compiled and eager: ranks agree on tau and weights at every step."""

import csv
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

pytestmark = pytest.mark.multiprocess


def cli(*args, cwd, env):
    result = subprocess.run(
        [sys.executable, ROOT / "cli.py", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_two_process_ddp_fit_then_single_process_test(tiny_digits, tmp_path):
    """The fit compiles the network (--model.compile true) in both processes; test and predict rebuild the
    checkpoint's model as it was trained, compiled too (a --model option beside --ckpt_path is refused)."""
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "tests"), PLIFNET_PROBE_DIR=str(tmp_path / "probe"), PYTHONUNBUFFERED="1"
    )
    common = [
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
    ]
    ddp = [
        "--config",
        ROOT / "configs" / "trainer" / "ddp.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
    ]
    cli(
        "fit",
        *common,
        *ddp,
        "--model.compile",
        "true",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "5",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.callbacks+=ddp_probe.RankProbe",
        cwd=tmp_path,
        env=env,
    )

    ranks = [torch.load(tmp_path / "probe" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and len(ranks[0]["taus"]) == 5
    for step0, step1 in zip(ranks[0]["taus"], ranks[1]["taus"]):  # tau equal on both ranks at every step
        assert all(torch.equal(step0[name], step1[name]) for name in step0)
    assert ranks[0]["taus"][-1]["fc1"].item() != pytest.approx(2.0, abs=1e-5)  # and it was trained
    for name, value in ranks[0]["parameters"].items():
        assert torch.equal(value, ranks[1]["parameters"][name]), name
    assert not any(name.endswith(".v") for name in ranks[0]["buffers"])  # neuron state is no buffer

    ckpt = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    runs = tmp_path / "runs" / "lightning_logs"
    accuracies = []
    for devices in (ddp, ["--trainer.devices", "1"]):  # each test writes the run's own <run>/test/, the latest kept
        cli("test", *common, *devices, "--ckpt_path", ckpt, cwd=tmp_path, env=env)
        with open(runs / "version_0" / "test" / "metrics.csv") as f:
            accuracies += [float(row["test/acc"]) for row in csv.DictReader(f) if row.get("test/acc")]
    assert len(accuracies) == 2 and accuracies[0] == pytest.approx(accuracies[1])

    # predict under DDP: each rank writes the samples it saw, indexed in the whole set
    cli("predict", *common, *ddp, "--ckpt_path", ckpt, cwd=tmp_path, env=env)
    indices = []
    for rank in (0, 1):
        with open(runs / "version_0" / "predict" / f"predictions_rank{rank}.csv") as f:
            indices += [int(row["index"]) for row in csv.DictReader(f)]
    assert sorted(indices) == list(range(40))


def test_two_process_ddp_fit_with_the_first_block_recomputed_in_groups(tiny_digits, tmp_path):
    """memory first_block under DDP: every parameter of the first block is used once per group and again
    in the recomputation; the ranks' gradients still meet once per step, and tau and weights agree."""
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "tests"), PLIFNET_PROBE_DIR=str(tmp_path / "probe"), PYTHONUNBUFFERED="1"
    )
    cli(
        "fit",
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
        "--model.net.memory",
        "first_block",
        "--config",
        ROOT / "configs" / "trainer" / "ddp.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.callbacks+=ddp_probe.RankProbe",
        cwd=tmp_path,
        env=env,
    )
    ranks = [torch.load(tmp_path / "probe" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and len(ranks[0]["taus"]) == 3
    for step0, step1 in zip(ranks[0]["taus"], ranks[1]["taus"]):
        assert all(torch.equal(step0[name], step1[name]) for name in step0)
    assert ranks[0]["taus"][-1]["conv1"].item() != pytest.approx(2.0, abs=1e-5)  # the split layer's tau was trained
    for name, value in ranks[0]["parameters"].items():
        assert torch.equal(value, ranks[1]["parameters"][name]), name


@pytest.mark.parametrize("family", ["snntorch", "spikingjelly"])
def test_two_process_ddp_fit_of_a_peer_network(family, tiny_digits, tmp_path):
    """snnTorch keeps its hidden state in buffers, which DDP broadcasts; SpikingJelly in plain memories:
    either way, tau, the neurons' buffers (snnTorch's state, reset: empty on both ranks) and the weights agree
    at every step."""
    pytest.importorskip(family)
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "tests"), PLIFNET_PROBE_DIR=str(tmp_path / "probe"), PYTHONUNBUFFERED="1"
    )
    cli(
        "fit",
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--config",
        ROOT / "examples" / "plugin" / "configs" / f"{family}.yaml",
        "--data.root",
        tiny_digits,
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "4",
        "--model.optimizer.lr",
        "0.01",
        "--config",
        ROOT / "configs" / "trainer" / "ddp.yaml",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "4",
        "--trainer.limit_val_batches",
        "2",
        "--trainer.callbacks+=ddp_probe.RankProbe",
        cwd=tmp_path,
        env=env,
    )
    ranks = [torch.load(tmp_path / "probe" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and len(ranks[0]["taus"]) == 4 and len(ranks[0]["taus"][0]) == 3
    for step0, step1 in zip(ranks[0]["taus"], ranks[1]["taus"]):
        assert all(torch.equal(step0[name], step1[name]) for name in step0)
    for step0, step1 in zip(ranks[0]["step_buffers"], ranks[1]["step_buffers"]):
        assert step0.keys() == step1.keys() and all(torch.equal(step0[name], step1[name]) for name in step0)
    if family == "snntorch":
        assert all(ranks[0]["step_buffers"][-1][f"lif{i}.mem"].numel() == 0 for i in (1, 2, 3))  # reset after the step
    first = next(iter(ranks[0]["taus"][-1]))
    assert ranks[0]["taus"][-1][first].float().mean().item() != pytest.approx(2.0, abs=1e-5)  # trained
    for name, value in ranks[0]["parameters"].items():
        assert torch.equal(value, ranks[1]["parameters"][name]), name


def test_two_process_ddp_fit_of_a_recurrent_adaptive_network(tmp_path):
    """The ecg recipe (recurrent ALIF, a membrane and an adaptation tau per neuron, a readout per step) on two
    processes: the ranks agree on every tau and every weight after each step."""
    from test_ecg_data import write_files

    root = write_files(tmp_path / "ecg", sequences=(24, 4), steps=40)
    env = dict(
        os.environ, PYTHONPATH=str(ROOT / "tests"), PLIFNET_PROBE_DIR=str(tmp_path / "probe"), PYTHONUNBUFFERED="1"
    )
    cli(
        "fit", "--config", "ecg", "--data.root", root, "--data.num_workers", "0", "--data.batch_size", "4",
        "--model.net.hidden", "[8]", "--config", ROOT / "configs" / "trainer" / "ddp.yaml",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.callbacks+=ddp_probe.RankProbe", cwd=tmp_path, env=env,
    )  # fmt: skip
    ranks = [torch.load(tmp_path / "probe" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and len(ranks[0]["taus"]) == 2
    for step0, step1 in zip(ranks[0]["taus"], ranks[1]["taus"]):
        assert step0.keys() == {"layers.0.neuron"} and torch.equal(step0["layers.0.neuron"], step1["layers.0.neuron"])
    assert ranks[0]["taus"][-1]["layers.0.neuron"].numel() == 8  # a tau per neuron
    for name, value in ranks[0]["parameters"].items():
        assert torch.equal(value, ranks[1]["parameters"][name]), name
    assert "net.layers.0.neuron.w_adapt" in ranks[0]["parameters"]
