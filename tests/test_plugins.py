"""Plug-ins through the same door as the built-ins: neurons, surrogates and networks from an installed
package (entry points, ``examples/plugin``), from ``class_path`` and from YAML, trained by ``cli.py fit``."""

import csv
import importlib.metadata
import re
import shlex

import pytest
import tomllib
import torch
import yaml

from conftest import ROOT
from plifnet import kernels
from plifnet.contract import ADAPTERS
from plifnet.factory import NEURONS, neuron_factory
from plifnet.models import SpikingNet
from plifnet.surrogates import SURROGATES, surrogate

QUICK = [
    "--data.num_workers",
    "0",
    "--data.batch_size",
    "4",
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "3",
    "--trainer.limit_val_batches",
    "2",
    "--trainer.log_every_n_steps",
    "1",
]


@pytest.fixture
def fit(run_cli):
    """``fit(*ARGS, cwd=..., config=..., own_network=...)``: ``cli.py fit`` of a config (None: ARGS bring theirs),
    shrunk to seconds by QUICK, and the paper's network to T = 2 (not with a network of one's own, which
    takes its own options: cli.py refuses --model.net.time_steps there)."""

    def run(*args, cwd, config=ROOT / "configs" / "mnist.yaml", own_network=False):
        shorter = [] if own_network else ["--model.net.time_steps", "2"]
        return run_cli("fit", *(["--config", config] if config else []), *args, *QUICK, *shorter, cwd=cwd)

    return run


def logged(cwd) -> set[str]:
    with open(cwd / "runs" / "lightning_logs" / "version_0" / "metrics.csv") as f:
        return set(next(csv.reader(f)))


@pytest.mark.parametrize("how", ["entry point", "class_path"])
def test_a_plugin_neuron_trains_through_the_cli(how, fit, run_cli, example_plugin, tiny_digits, tmp_path, monkeypatch):
    from plifnet.kernels import compiled

    monkeypatch.setattr(compiled, "_failed", {})  # the classes this process could not compile: none, after the fit
    if how == "entry point":
        args = ["--model.net.neuron", "example_alif", "--model.net.options.surrogate", "gaussian"]
    else:
        args = [
            "--model.net.neuron",
            '{"class_path": "plifnet_example.ALIF", "init_args": {"beta": 0.5, "tau": 3.0}}',
            "--model.net.options.surrogate",
            '{"class_path": "plifnet_example.Gaussian", "init_args": {"alpha": 3.0}}',
        ]
    result = fit("--data.root", tiny_digits, *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # compiled all through: the model summary's FLOP count (a dispatch mode) once sent it to the reference path
    assert compiled._failed == {} and "runs on the reference path" not in result.stderr
    keys = logged(tmp_path)
    assert {"tau/conv1", "tau/fc2", "firing_rate/conv1", "firing_rate/fc2"} <= keys
    checkpoint = torch.load(
        tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    neuron = checkpoint["hyper_parameters"]["net"]["init_args"][
        "neuron"
    ]  # what `cli.py test --ckpt_path` rebuilds it from
    if how == "entry point":
        assert neuron == "example_alif"
    else:
        assert neuron["class_path"] == "plifnet_example.ALIF"
        assert (neuron["init_args"]["beta"], neuron["init_args"]["tau"]) == (0.5, 3.0)
        # init_args reached the neurons: tau0 = 3 is w0 = -ln 2, which 3 steps at lr 1e-3 barely move
        assert checkpoint["state_dict"]["net.layers.0.w"].item() == pytest.approx(-0.6931, abs=0.01)
    tested = run_cli(
        "test",
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--data.root",
        tiny_digits,
        "--data.num_workers",
        "0",
        "--ckpt_path",
        tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt",
        cwd=tmp_path,
    )
    assert tested.returncode == 0, tested.stderr[-3000:]
    config = (tmp_path / "runs" / "lightning_logs" / "version_0" / "test" / "config.yaml").read_text()
    assert ("neuron: example_alif" if how == "entry point" else "class_path: plifnet_example.ALIF") in config


def test_networks_from_yaml_and_from_a_users_package_train_with_their_neurons_monitored(
    fit, example_plugin, tiny_digits, tmp_path
):
    (tmp_path / "yaml").mkdir()
    (tmp_path / "yaml" / "net.yaml").write_text(
        "model:\n  net:\n    class_path: plifnet.models.SpikingNet\n    init_args:\n"
        "      layers: c16 p c16 p d f100\n      static: true\n      time_steps: 2\n      neuron: lif\n"
    )
    # no in_channels, size or classes: the data module's input_shape (1, 28, 28) and the output layer give them
    result = fit(
        "--data.root", tiny_digits, "--config", tmp_path / "yaml" / "net.yaml", cwd=tmp_path / "yaml", own_network=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"firing_rate/conv1", "firing_rate/conv2", "firing_rate/fc1"} <= logged(tmp_path / "yaml")
    assert not any(key.startswith("tau/") for key in logged(tmp_path / "yaml"))  # LIF: tau is fixed

    (tmp_path / "own").mkdir()
    result = fit(
        "--data.root",
        tiny_digits,
        "--model.net",
        "plifnet_example.net.TinySNN",
        "--model.net.time_steps",
        "3",
        cwd=tmp_path / "own",
        own_network=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert {"tau/lif1", "tau/lif2", "firing_rate/lif1", "firing_rate/lif2"} <= logged(tmp_path / "own")


def test_paper_networks_still_use_the_fused_kernels(monkeypatch):
    calls = []
    original = kernels.fused_multi_step
    monkeypatch.setattr(kernels, "fused_multi_step", lambda *a, **k: calls.append(1) or original(*a, **k))
    net = SpikingNet.paper("mnist", time_steps=2)
    net(torch.rand(2, 1, 28, 28))
    assert len(calls) == 4  # every PLIF layer of the MNIST network


def test_bad_plugins_get_clear_errors(example_plugin, tmp_path, monkeypatch):
    with pytest.raises(TypeError, match=r"neuron Identity has no reset\(\) method"):
        neuron_factory(torch.nn.Identity)  # a module without state handling, given where a neuron goes
    with pytest.raises(TypeError, match="the neuron factory built a int, not a torch.nn.Module"):
        neuron_factory(lambda: 3)
    with pytest.raises(TypeError, match="not a subclass of plifnet.surrogates.Surrogate"):
        surrogate("torch.nn.Linear")
    with pytest.raises(ValueError, match="neuron class 'nowhere.Neuron' cannot be imported"):
        neuron_factory("nowhere.Neuron")

    # an installed plug-in whose module fails to import: named with its package and error, not skipped
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('missing CUDA toolkit')\n")
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[plifnet.neurons]\nbroken = broken_plugin:Neuron\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ImportError,
        match=r"the neuron plug-in 'broken' of broken-plugin \(broken_plugin:Neuron\) "
        r"failed to import: RuntimeError: missing CUDA toolkit",
    ):
        NEURONS.get("broken")
    assert "broken" in NEURONS.names() and "gaussian" in SURROGATES.names()


def test_a_network_whose_output_does_not_match_the_classes_is_named(fit, tiny_digits, tmp_path):
    result = fit(
        "--data.root",
        tiny_digits,
        "--model.net",
        "torch.nn.Linear",
        "--model.net.in_features",
        "28",
        "--model.net.out_features",
        "5",
        "--model.classes",
        "10",
        cwd=tmp_path,
        own_network=True,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    # found by the model summary's one-sample forward, before any training step; one line
    assert re.fullmatch(
        r"error: Linear returned scores of shape \((\d+), 1, 28, 5\) for input \(\1, 1, 28, 28\); "
        r"expected \[T, N, 10\] or \[N, 10\].*",
        result.stderr.strip().splitlines()[-1],
    ), result.stderr[-2000:]
    assert not (tmp_path / "runs" / "lightning_logs" / "version_0").exists()


def recipes() -> list[str]:
    """The `python cli.py fit` lines of docs/EXTENDING.md."""
    lines = (ROOT / "docs" / "EXTENDING.md").read_text().splitlines()
    return [line for line in lines if line.startswith("python cli.py fit")]


@pytest.mark.parametrize("command", recipes())
def test_the_recipes_of_extending_md_run(command, fit, example_plugin, tiny_digits, tmp_path):
    args = [str(ROOT / arg) if arg.startswith(("configs/", "examples/")) else arg for arg in shlex.split(command)[3:]]
    if "--data" not in args:
        args += ["--data.root", str(tiny_digits)]
    result = fit(*args, cwd=tmp_path, config=None, own_network="--model.net" in command or "examples/" in command)
    assert result.returncode == 0, command + "\n" + result.stderr[-3000:]
    assert (tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt").is_file()


def extending_md_blocks():
    """The fenced code blocks of docs/EXTENDING.md as (language, text)."""
    return re.findall(r"```(\w+)\n(.*?)```", (ROOT / "docs" / "EXTENDING.md").read_text(), re.S)


def test_every_code_block_of_extending_md_runs_or_matches_the_example_package(example_plugin, monkeypatch):
    """Python blocks run as written; the TOML and YAML blocks are what the example package holds (and
    its entry points load); the bash blocks are `python cli.py fit` lines, which the test above runs."""
    for registry in (NEURONS, SURROGATES, ADAPTERS):  # what the blocks register is gone after the test
        monkeypatch.setattr(registry, "entries", dict(registry.entries))
    blocks = extending_md_blocks()
    assert {language for language, _ in blocks} == {"python", "toml", "yaml", "bash"}  # a new kind needs a check here
    for language, text in blocks:
        if language == "python":
            exec(compile(text, "docs/EXTENDING.md", "exec"), {"__name__": "extending_md"})
        elif language == "toml":
            declared = tomllib.loads((ROOT / "examples" / "plugin" / "pyproject.toml").read_text())["project"][
                "entry-points"
            ]
            for group, entries in tomllib.loads(text)["project"]["entry-points"].items():
                assert entries.items() <= declared[group].items(), text
                for name in entries:
                    assert importlib.metadata.entry_points(group=group)[name].load() is not None
        elif language == "yaml":
            configs = [
                yaml.safe_load(path.read_text()) for path in (ROOT / "examples" / "plugin" / "configs").glob("*.yaml")
            ]
            assert yaml.safe_load(text) in configs, text
        else:
            lines = [line for line in text.splitlines() if line.strip()]
            assert all(line.startswith("python cli.py fit ") for line in lines), text
            assert set(lines) <= set(recipes())


def test_a_network_without_an_input_shape_takes_it_from_the_data_module():
    from plifnet.data.common import ClassificationDataModule
    from plifnet.module import SpikingClassifier

    net = SpikingNet(layers="c8 p d f100", static=True, time_steps=2)
    assert not net.built and net.classes == 10
    model = SpikingClassifier(net=net)
    with pytest.raises(
        ValueError, match=r"has no in_channels and size, and there is no data module with an input_shape"
    ):
        model.configure_model()

    class Frames(ClassificationDataModule):
        input_shape = (2, 34, 34)

    model.trainer = type("Trainer", (), {"datamodule": Frames()})()
    model.configure_model()
    assert model.net.encoder[0].in_channels == 2 and model.net.layers[-3].in_features == 8 * 17 * 17
    assert model(torch.rand(3, 2, 34, 34)).shape == (3, 10)
