"""The optimizer and schedule from the config (LightningCLI's OptimizerCallable / LRSchedulerCallable),
the neurons' time constants in a group of their own, the paper's recipe unchanged, and checkpoints of
plifnet 0.1 (whose model built its own network) refused in one line."""

import csv
import re
from functools import partial

import lightning as L
import pytest
import torch

from conftest import ROOT
from plifnet.models import SpikingNet
from plifnet.module import SpikingClassifier

RUN = [
    "--config",
    ROOT / "configs" / "mnist.yaml",
    "--data.num_workers",
    "0",
    "--data.batch_size",
    "8",
    "--model.net.time_steps",
    "2",
    "--trainer.limit_val_batches",
    "1",
    "--trainer.limit_test_batches",
    "1",
]


def last_checkpoint(root, version=0):
    return torch.load(
        root / "runs" / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt", weights_only=True
    )


def test_adamw_and_onecycle_from_the_command_line_with_tau_in_a_group_without_weight_decay(
    run_cli, tiny_digits, tmp_path
):
    result = run_cli(
        "fit",
        *RUN,
        "--data.root",
        tiny_digits,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "4",
        "--model.optimizer",
        "AdamW",
        "--model.optimizer.weight_decay",
        "0.01",
        "--model.lr_scheduler",
        "OneCycleLR",
        "--model.lr_scheduler.max_lr",
        "0.01",
        "--model.lr_scheduler.total_steps",
        "10",
        "--model.lr_interval",
        "step",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = last_checkpoint(tmp_path)
    weights, taus = checkpoint["optimizer_states"][0]["param_groups"]
    assert (weights["weight_decay"], taus["weight_decay"]) == (0.01, 0.0)
    names = list(checkpoint["state_dict"])  # the parameters in the model's order; the w of each PLIF layer
    w_names = [name for name in names if name.endswith(".w")]
    assert len(w_names) == 4 and len(taus["params"]) == 4 and not set(taus["params"]) & set(weights["params"])
    assert taus["initial_lr"] == weights["initial_lr"] == pytest.approx(0.01 / 25)  # OneCycleLR's start: max_lr / 25
    scheduler = checkpoint["lr_schedulers"][0]
    assert scheduler["total_steps"] == 10 and scheduler["last_epoch"] == 4  # OneCycleLR, stepped per batch
    saved = checkpoint["hyper_parameters"]
    assert saved["optimizer"]["class_path"] == "torch.optim.AdamW" and saved["lr_interval"] == "step"
    tested = run_cli(
        "test",
        *RUN,
        "--data.root",
        tiny_digits,
        "--ckpt_path",
        tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt",
        cwd=tmp_path,
    )
    assert tested.returncode == 0, tested.stderr[-3000:]


def train(model, steps=4):
    """Losses of ``steps`` training steps of the MNIST network on fixed random images, seed 0."""
    L.seed_everything(0)
    images, labels = torch.rand(steps, 8, 1, 28, 28), torch.randint(0, 10, (steps, 8))
    optimizer = model.configure_optimizers()["optimizer"]
    losses = []
    model.train()
    for x, y in zip(images, labels):
        loss = torch.nn.functional.mse_loss(model(x), torch.nn.functional.one_hot(y, 10).float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, optimizer


def test_an_optimizer_from_python_gets_the_two_groups():
    sgd = SpikingClassifier(
        SpikingNet.paper("mnist", time_steps=2),
        optimizer=partial(torch.optim.SGD, lr=0.1, weight_decay=1e-4),
        tau_weight_decay=1e-5,
        tau_lr=0.5,
    )
    optimizer = sgd.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.SGD)
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(0.1, 1e-4), (0.5, 1e-5)]


def test_a_checkpoint_of_plifnet_0_1_is_refused_in_one_line_naming_its_version(run_cli, tiny_digits, tmp_path):
    """plifnet 0.1's model built the paper's network from its own options (arch, neuron, tau, lr, ...): such a
    checkpoint is refused by fit --ckpt_path, test and load_from_checkpoint, naming the version that wrote it."""
    first = run_cli(
        "fit",
        *RUN,
        "--data.root",
        tiny_digits,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    path = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    hyper_parameters = checkpoint["hyper_parameters"]
    del hyper_parameters["net"]
    hyper_parameters.update(arch="mnist", neuron="plif", tau=2.0, time_steps=2, lr=0.002, cosine_t_max=8)
    torch.save(checkpoint, path)
    said = f"checkpoint {path} was written by plifnet 0.1.0 (its model options arch, cosine_t_max, lr, neuron, tau)"
    for subcommand in ("fit", "test"):
        refused = run_cli(subcommand, *RUN, "--data.root", tiny_digits, "--ckpt_path", path, cwd=tmp_path)
        assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith(f"error: {said}")
        assert "Traceback" not in refused.stderr
    with pytest.raises(ValueError, match=re.escape(said)):
        SpikingClassifier.load_from_checkpoint(path)


@pytest.mark.parametrize("family", ["spikingjelly_net", "snntorch_net", "norse_net", "net"])
def test_a_peer_networks_time_constants_get_the_tau_group(example_plugin, family):
    """Through the neuron contract: SpikingJelly's w, snnTorch's beta (not a learnt threshold), Norse's
    tau_mem_inv, PLIF's w in a hand-written network."""
    import importlib

    net = importlib.import_module(f"plifnet_example.{family}").__dict__["TinySNN" if family == "net" else "Net"]()
    model = SpikingClassifier(net=net, classes=10, tau_weight_decay=0.0)
    weights, taus = model.configure_optimizers()["optimizer"].param_groups
    names = {id(p): name for name, p in model.named_parameters()}
    tau_names = sorted(names[id(p)] for p in taus["params"])
    expected = {
        "spikingjelly_net": r"net\.features\.\d+\.w",
        "snntorch_net": r"net\.lif\d\.beta",
        "norse_net": r"net\.tau_mem_inv\.\d",
        "net": r"net\.lif\d\.w",
    }[family]  # Norse: its ParameterList
    assert len(tau_names) >= 2 and all(re.fullmatch(expected, name) for name in tau_names), tau_names
    assert taus["weight_decay"] == 0.0
    assert len(weights["params"]) + len(taus["params"]) == len(names)


def cosine_lrs(total: int) -> list[float]:
    """The lr of each epoch of torch's CosineAnnealingLR(T_max=total) from 1e-3 (an implementation we did not write)."""
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(torch.optim.Adam([torch.zeros(1)], lr=1e-3), T_max=total)
    lrs = []
    for _ in range(total):
        lrs.append(reference.get_last_lr()[0])
        reference.step()
    return lrs


def logged_lrs(folder, group: int, version: int = 0) -> list[float]:
    rows = csv.DictReader(open(folder / "runs" / "lightning_logs" / f"version_{version}" / "metrics.csv"))
    return [float(row[f"lr-Adam/pg{group}"]) for row in rows if row.get(f"lr-Adam/pg{group}")]


def test_the_budget_recipe_anneals_over_max_epochs_as_torchs_cosine_does(run_cli, tiny_digits, tmp_path):
    """``--config recipe/budget``: the paper's Adam lr annealed to 0 over ``--trainer.max_epochs`` (here 4),
    epoch by epoch the lr of torch's CosineAnnealingLR(T_max=4), in both parameter groups. The length is
    the trainer's, not the checkpoint's: a 2-epoch run resumed with max_epochs 4 goes on with epochs 2 and 3
    of the 4-epoch cosine."""
    budget = [*RUN, "--config", "recipe/budget", "--data.root", tiny_digits, "--trainer.limit_train_batches", "2"]
    result = run_cli("fit", *budget, "--trainer.max_epochs", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = last_checkpoint(tmp_path)
    assert checkpoint["hyper_parameters"]["lr_scheduler"]["class_path"] == "plifnet.schedules.CosineToEnd"
    assert "total" not in checkpoint["lr_schedulers"][0]
    expected = cosine_lrs(4)
    assert logged_lrs(tmp_path, 1) == pytest.approx(expected, rel=1e-12) and expected[-1] < 1e-3 / 5
    assert logged_lrs(tmp_path, 2) == pytest.approx(expected, rel=1e-12)  # the tau group

    extended = tmp_path / "extended"
    extended.mkdir()
    assert run_cli("fit", *budget, "--trainer.max_epochs", "2", cwd=extended).returncode == 0
    assert logged_lrs(extended, 1) == pytest.approx(cosine_lrs(2), rel=1e-12)
    resumed = run_cli(
        "fit",
        *budget,
        "--trainer.max_epochs",
        "4",
        "--ckpt_path",
        extended / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt",
        cwd=extended,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged_lrs(extended, 1, version=1) == pytest.approx(expected[2:], rel=1e-12)


def test_the_budget_recipe_refuses_a_run_without_an_end(run_cli, tiny_digits, tmp_path):
    result = run_cli(
        "fit",
        *RUN,
        "--config",
        "recipe/budget",
        "--data.root",
        tiny_digits,
        "--trainer.max_epochs",
        "-1",
        "--trainer.limit_train_batches",
        "2",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: CosineToEnd anneals over the run's length, but the run has no "
        "finite length (-1): set --trainer.max_epochs (or --trainer.max_steps)"
    )
