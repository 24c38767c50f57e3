"""Hostile inputs: a checkpoint, config, graph or study file that tries to run code, leak state, write where it
must not or print a number that is not what it says. Each test is one family of attack; every refusal is one
line naming the input and the fix."""

import sys
from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from conftest import ROOT
from plifnet import checkpoints
from plifnet.cli import PlifnetCLI
from plifnet.models import SpikingNet
from plifnet.module import SpikingClassifier

SPY = '''
from pathlib import Path
import torch
Path(__file__).with_name("spy_ran").write_text("imported")

class Evil(torch.nn.Module):
    classes = 10

    def __init__(self, *args, **kwargs):
        super().__init__()
        Path(__file__).with_name("spy_ran").write_text("built")

def evil(*args, **kwargs):
    Path(__file__).with_name("spy_ran").write_text("called")
'''


@pytest.fixture
def spy(tmp_path, monkeypatch):
    """An importable module ``spymod`` that leaves the file ``spy_ran`` when imported, built or called."""
    folder = tmp_path / "spy"
    folder.mkdir()
    (folder / "spymod.py").write_text(SPY)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, "spymod", raising=False)
    yield folder / "spy_ran"
    sys.modules.pop("spymod", None)


def checkpoint_with(folder: Path, hyper_parameters: dict, name="crafted.ckpt") -> Path:
    """A checkpoint of tensors, strings and numbers only (it loads with weights_only=True)."""
    path = folder / name
    torch.save({"pytorch-lightning_version": "2.6.0", "state_dict": {"w": torch.zeros(1)}, "epoch": 0,
                "global_step": 0, "optimizer_states": [], "loops": {}, "hyper_parameters": hyper_parameters}, path)
    return path


def schema(cls, prefix: str) -> dict:
    """The keys that the CLI's parser builds for ``cls`` (as LightningCLI adds the model) with their types."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, prefix, fail_untyped=False, sub_configs=True)  # add_lightning_class_args' call
    return {action.dest[len(prefix) + 1:]: getattr(action, "_typehint", None)
            for action in parser._actions if action.dest.startswith(f"{prefix}.")}


def spy_placements() -> list[tuple[str, dict]]:
    """A spy named under every key of the model's schema, as a string and as a class_path, and under every
    argument of the classes the configs put there (the network, an optimizer, a schedule with a callable)."""
    placements = []
    for key in schema(SpikingClassifier, "model"):
        placements += [(key, {key: "spymod.Evil"}), (f"{key}.class_path", {key: {"class_path": "spymod.Evil"}})]
    for key in schema(SpikingNet, "net"):
        placements.append((f"net.init_args.{key}", {"net": {"class_path": "plifnet.models.SpikingNet",
                                                            "init_args": {key: "spymod.evil"}}}))
    placements += [
        ("lr_scheduler.init_args.lr_lambda", {"lr_scheduler": {"class_path": "torch.optim.lr_scheduler.LambdaLR",
                                                               "init_args": {"lr_lambda": "spymod.evil"}}}),
        ("optimizer.init_args.params", {"optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.1},
                                                      "dict_kwargs": {"foreach": "spymod.evil"}}}),
        ("_class_path", {"_class_path": "spymod.Evil"}),
        ("net reached through plifnet", {"net": "plifnet.cli.shutil.rmtree"}),
    ]
    return placements


def test_the_schema_walk_reaches_the_keys_that_name_code():
    keys = schema(SpikingClassifier, "model")
    assert {"net", "neuron", "surrogate", "optimizer", "lr_scheduler", "tau", "arch"} <= set(keys)
    assert "layers" in schema(SpikingNet, "net")


@pytest.mark.parametrize("where,hyper_parameters", spy_placements(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_checkpoint_names_no_code_under_any_key(where, hyper_parameters, spy, tmp_path):
    """Where the CLI merges a checkpoint's hyperparameters (test, fit --ckpt_path), and load_from_checkpoint:
    nothing named in the file is imported, built or called. Where jsonargparse would have imported the spy
    (the same hyperparameters parsed without the check), the check refuses it in one line naming the key."""
    path = checkpoint_with(tmp_path, hyper_parameters)
    config = Namespace(ckpt_path=str(path), model=Namespace())
    refused = None
    try:
        PlifnetCLI._check_hyperparameters(config, [])
    except checkpoints.CheckpointError as error:
        refused = str(error)
    try:
        SpikingClassifier.load_from_checkpoint(path)
    except Exception as error:  # refused, or (a value that is data) failed as data would
        assert refused is None or str(error) == refused.replace(
            "name it in this run's command line or config (e.g. --model.neuron VALUE)",
            "pass allow_class_paths=[VALUE] (python -m plifnet.export: --allow_class_path VALUE)")
    assert not spy.exists() and "spymod" not in sys.modules, f"{where}: the checkpoint ran {spy.read_text()}"
    if refused is not None:
        assert "\n" not in refused and "names code this run did not: hyperparameter " in refused, refused
        return
    # accepted: then the value must be data to jsonargparse too (parsing it imports nothing)
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(SpikingClassifier, "model")
    try:
        parser.parse_object({"model": hyper_parameters}, defaults=False)
    except Exception:
        pass
    assert "spymod" not in sys.modules, f"{where} was accepted, yet jsonargparse imports what it names"


def test_without_the_check_jsonargparse_would_import_the_spy(spy):
    """What the check stops: parsing a checkpoint's network name imports it (so the test above can fail)."""
    parser = LightningArgumentParser(exit_on_error=False)
    parser.add_lightning_class_args(SpikingClassifier, "model")
    try:
        parser.parse_object({"model": {"net": "spymod.Evil"}}, defaults=False)
    except Exception:
        pass
    assert "spymod" in sys.modules and spy.read_text() == "imported"


@pytest.mark.parametrize("hyper_parameters,shown", [
    ({"net": "spymod.Evil"}, "net = 'spymod.Evil'"),
    ({"optimizer": "this.Zen"}, "optimizer = 'this.Zen'"),
    ({"lr_scheduler": {"class_path": "torch.optim.lr_scheduler.LambdaLR", "init_args": {"lr_lambda": "os.umask"}}},
     "lr_scheduler.init_args.lr_lambda = 'os.umask'"),
], ids=["net", "stdlib-import", "callable-argument"])
def test_the_issue_attacks_through_the_commands(hyper_parameters, shown, spy, run_cli, tmp_path):
    """cli.py test, fit --ckpt_path and plifnet export: one line naming the key and the option that allows it;
    nothing imported (``this`` prints on import), no umask changed."""
    import os

    from plifnet import export

    path = checkpoint_with(tmp_path, hyper_parameters)
    this_before, umask = "this" in sys.modules, os.umask(0o022)
    os.umask(umask)
    runs = {"test": ["test", "--config", "mnist", "--ckpt_path", path],
            "fit": ["fit", "--config", "mnist", "--ckpt_path", path]}
    for name, args in runs.items():
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 1, (name, result.stderr[-2000:])
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("error: checkpoint ") and shown in line and "--model.neuron VALUE" in line, line
        assert "Traceback" not in result.stderr
    result = run_cli("--ckpt_path", path, "--out", tmp_path / "net.nir", cwd=tmp_path, main=export.main)
    assert result.returncode == 1 and shown in result.stderr and "--allow_class_path VALUE" in result.stderr
    assert not (tmp_path / "net.nir").exists()
    assert not spy.exists() and "spymod" not in sys.modules
    assert ("this" in sys.modules) == this_before and "Beautiful is better" not in result.stdout
    assert os.umask(umask) == umask
