"""Hostile inputs: a checkpoint, config, graph or study file that tries to run code, leak state, write where it
must not or print a number that is not what it says. Each test is one family of attack; every refusal is one
line naming the input and the fix."""

import functools
import re
import sys
from pathlib import Path

import pytest
import torch
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser

from plifnet import checkpoints, runs
from plifnet.models import SpikingNet
from plifnet.module import SpikingClassifier

SPY = """
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
"""


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
    torch.save(
        {
            "pytorch-lightning_version": "2.6.0",
            "state_dict": {"w": torch.zeros(1)},
            "epoch": 0,
            "global_step": 0,
            "optimizer_states": [],
            "loops": {},
            "hyper_parameters": hyper_parameters,
        },
        path,
    )
    return path


def schema(cls, prefix: str) -> dict:
    """The keys that the CLI's parser builds for ``cls`` (as LightningCLI adds the model) with their types."""
    parser = LightningArgumentParser(exit_on_error=False)
    if isinstance(cls, type):
        parser.add_class_arguments(cls, prefix, fail_untyped=False, sub_configs=True)  # add_lightning_class_args' call
    else:  # a builder such as SpikingNet.paper, named by a config's class_path
        parser.add_function_arguments(cls, prefix, fail_untyped=False, sub_configs=True)
    return {
        action.dest[len(prefix) + 1 :]: getattr(action, "_typehint", None)
        for action in parser._actions
        if action.dest.startswith(f"{prefix}.")
    }


def spy_placements() -> list[tuple[str, dict]]:
    """A spy named under every key of the model's schema, as a string and as a class_path, and under every
    argument of the classes the configs put there (the network, an optimizer, a schedule with a callable)."""
    placements = []
    for key in schema(SpikingClassifier, "model"):
        placements += [(key, {key: "spymod.Evil"}), (f"{key}.class_path", {key: {"class_path": "spymod.Evil"}})]
    for class_path, builder in (
        ("plifnet.models.SpikingNet", SpikingNet),
        ("plifnet.models.SpikingNet.paper", SpikingNet.paper),
    ):
        for key in schema(builder, "net"):  # options.tau: a field of the network's NeuronOptions
            argument = functools.reduce(lambda value, name: {name: value}, reversed(key.split(".")), "spymod.evil")
            placements.append(
                (f"{class_path}: net.init_args.{key}", {"net": {"class_path": class_path, "init_args": argument}})
            )
    placements += [
        (
            "lr_scheduler.init_args.lr_lambda",
            {
                "lr_scheduler": {
                    "class_path": "torch.optim.lr_scheduler.LambdaLR",
                    "init_args": {"lr_lambda": "spymod.evil"},
                }
            },
        ),
        (
            "optimizer.init_args.params",
            {
                "optimizer": {
                    "class_path": "torch.optim.Adam",
                    "init_args": {"lr": 0.1},
                    "dict_kwargs": {"foreach": "spymod.evil"},
                }
            },
        ),
        ("_class_path", {"_class_path": "spymod.Evil"}),
        ("net reached through plifnet", {"net": "plifnet.cli.shutil.rmtree"}),
    ]
    return placements


def test_the_schema_walk_reaches_the_keys_that_name_code():
    keys = schema(SpikingClassifier, "model")
    assert {"net", "loss", "optimizer", "lr_scheduler", "tau_lr"} <= set(keys)
    assert {"layers", "neuron", "options.surrogate", "options.tau"} <= set(schema(SpikingNet, "net"))
    assert {"arch", "neuron", "options.surrogate", "options.backend"} <= set(schema(SpikingNet.paper, "net"))


@pytest.mark.parametrize("where,hyper_parameters", spy_placements(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_checkpoint_names_no_code_under_any_key(where, hyper_parameters, spy, tmp_path):
    """Where the CLI merges a checkpoint's hyperparameters (test, fit --ckpt_path), and load_from_checkpoint:
    nothing named in the file is imported, built or called. Where jsonargparse would have imported the spy
    (the same hyperparameters parsed without the check), the check refuses it in one line naming the key."""
    path = checkpoint_with(tmp_path, hyper_parameters)
    config = Namespace(ckpt_path=str(path), model=Namespace())
    refused = None
    try:
        runs.check_hyperparameters(config, [], checkpoints.read(path))
    except checkpoints.CheckpointError as error:
        refused = str(error)
    try:
        SpikingClassifier.load_from_checkpoint(path)
    except Exception as error:  # refused, or (a value that is data) failed as data would
        assert refused is None or str(error) == refused.replace(
            "name it in this run's command line or config (e.g. --model.net.neuron VALUE)",
            "pass allow_class_paths=[VALUE] (python -m plifnet.export: --allow_class_path VALUE)",
        )
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


@pytest.mark.parametrize(
    "hyper_parameters,shown",
    [
        ({"net": "spymod.Evil"}, "net = 'spymod.Evil'"),
        ({"optimizer": "this.Zen"}, "optimizer = 'this.Zen'"),
        (
            {
                "lr_scheduler": {
                    "class_path": "torch.optim.lr_scheduler.LambdaLR",
                    "init_args": {"lr_lambda": "os.umask"},
                }
            },
            "lr_scheduler.init_args.lr_lambda = 'os.umask'",
        ),
    ],
    ids=["net", "stdlib-import", "callable-argument"],
)
def test_the_issue_attacks_through_the_commands(hyper_parameters, shown, spy, run_cli, tmp_path):
    """cli.py test, fit --ckpt_path and plifnet export: one line naming the key and the option that allows it;
    nothing imported (``this`` prints on import), no umask changed."""
    import os

    from plifnet import export

    path = checkpoint_with(tmp_path, hyper_parameters)
    this_before, umask = "this" in sys.modules, os.umask(0o022)
    os.umask(umask)
    runs = {
        "test": ["test", "--config", "mnist", "--ckpt_path", path],
        "fit": ["fit", "--config", "mnist", "--ckpt_path", path],
    }
    for name, args in runs.items():
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 1, (name, result.stderr[-2000:])
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith("error: checkpoint ") and shown in line and "--model.net.neuron VALUE" in line, line
        assert "Traceback" not in result.stderr
    result = run_cli("--ckpt_path", path, "--out", tmp_path / "net.nir", cwd=tmp_path, main=export.main)
    assert result.returncode == 1 and shown in result.stderr and "--allow_class_path VALUE" in result.stderr
    assert not (tmp_path / "net.nir").exists()
    assert not spy.exists() and "spymod" not in sys.modules
    assert ("this" in sys.modules) == this_before and "Beautiful is better" not in result.stdout
    assert os.umask(umask) == umask


# --- studies: everything written into a script is escaped or refused; bad study files are one line


def study_main(*args):
    from plifnet import study

    try:
        study.main([str(arg) for arg in args])
    except SystemExit as stop:
        return stop.code
    return 0


@pytest.mark.parametrize(
    "option,value",
    [
        ("--study", "x\necho pwned"),
        ("--sbatch", "time=1:00\ntouch /tmp/pwned"),
        ("--sbatch", "gres=gpu:1 --wrap=id"),
        ("--out", "out\nrm -rf ~"),
    ],
)
def test_study_sbatch_refuses_line_breaks_and_spaces(option, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = [] if option == "--out" else ["--out", tmp_path / "study"]
    code = study_main("--config", "mnist", *out, "--grid", "plif:2", "--slurm-array", option, value)
    assert isinstance(code, str) and code.startswith("error: ") and "\n" not in code, code
    assert repr(value) in code
    assert not list(tmp_path.rglob("study.sbatch"))


def test_study_arguments_after_the_separator_are_quoted_in_the_script(tmp_path, monkeypatch):
    """A value with shell characters reaches the task as one argument: bash reads the script's line back into
    exactly the arguments given."""
    import shlex
    import subprocess

    monkeypatch.chdir(tmp_path)
    weird = "$(touch pwned); `id` 'a b' \"c\""
    assert (
        study_main(
            "--config",
            "mnist",
            "--out",
            tmp_path / "s",
            "--grid",
            "plif:2",
            "--slurm-array",
            "--",
            "--trainer.default_root_dir",
            weird,
        )
        == 0
    )
    line = next(line for line in (tmp_path / "s" / "study.sbatch").read_text().splitlines() if line.startswith("srun "))
    words = subprocess.run(
        ["bash", "-c", 'for w in "$@"; do printf "%s\\0" "$w"; done', "_", *shlex.split(line.removeprefix("srun "))],
        capture_output=True,
        text=True,
    ).stdout
    assert weird in words.split("\0") and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "text,expected",
    [
        ("settings:\n  a: --model.net.options.tau 2\nseeds: [abc]\n", "seed 'abc' is not a whole number"),
        ("settings:\n  a: --model.net.options.tau 2\nseeds: [1.5]\n", "seed 1.5 is not a whole number"),
        ('settings:\n  a: "--model.net.layers \'c8 p"\n', "cannot be split into options (No closing quotation)"),
        ("settings:\n  a: --model.net.options.tau 2\nseeds: []\n", "the study has no tasks"),
    ],
)
def test_bad_study_files_are_one_line(text, expected, tmp_path):
    (tmp_path / "study.yaml").write_text(text)
    code = study_main(
        "--config", "mnist", "--out", tmp_path / "s", "--settings", tmp_path / "study.yaml", "--slurm-array"
    )
    assert isinstance(code, str) and code.startswith("error: ") and expected in code and "\n" not in code, code
    assert not (tmp_path / "s" / "study.sbatch").exists()  # no '#SBATCH --array=0--1'


def test_a_single_seed_is_one_task_and_a_large_grid_is_written_at_once(tmp_path):
    (tmp_path / "one.yaml").write_text("settings:\n  a: --model.net.options.tau 2\nseeds: 5\n")
    assert (
        study_main("--config", "mnist", "--out", tmp_path / "one", "--settings", tmp_path / "one.yaml", "--slurm-array")
        == 0
    )
    assert "#SBATCH --array=0-0" in (tmp_path / "one" / "study.sbatch").read_text()
    (tmp_path / "big.yaml").write_text(
        "axes:\n  model.net.options.tau: [" + ", ".join(str(2 + i) for i in range(1000)) + "]\n"
        "seeds: [" + ", ".join(map(str, range(100))) + "]\n"
    )
    assert (
        study_main("--config", "mnist", "--out", tmp_path / "big", "--settings", tmp_path / "big.yaml", "--slurm-array")
        == 0
    )  # 100,000 tasks: the name check is linear
    assert "#SBATCH --array=0-99999" in (tmp_path / "big" / "study.sbatch").read_text()


def test_a_silent_layer_is_flagged_beside_the_accuracy(tmp_path):
    from plifnet import grid, report

    folder = tmp_path / "lif_tau16_seed1"
    folder.mkdir()
    (folder / "history.csv").write_text(
        "epoch,step,seconds,test/acc,val/acc,firing_rate/conv1,firing_rate/fc2\n0,10,60,0.1,0.1,0.08,0.0\n"
    )
    table = report.report(tmp_path, grid.parse_grid(["lif:16"], [1]))
    assert "| LIF tau=16 | 1 | 1 (stopped) | 10.00 (silent: fc2) |" in table
    assert "(silent: fc2)" in (tmp_path / "results.md").read_text()
    with open(tmp_path / "results.csv") as f:
        row = list(__import__("csv").DictReader(f))[0]
    assert row["A: best test acc (%)"] == "10.00" and row["silent layers"] == "fc2"


# --- NIR graphs and exports: sizes checked before anything is allocated, every value in range


def small_graph(tmp_path, **metadata) -> Path:
    import nir

    from plifnet.nir import to_nir

    net = SpikingNet(layers="c4 p f20", in_channels=1, size=8, classes=2, time_steps=2).eval()
    graph = to_nir(net)
    graph.metadata.update(metadata)
    path = tmp_path / "small.nir"
    nir.write(path, graph)
    return path


def edited(path: Path, node: str, field: str, value=None, declare=None) -> Path:
    """The NIR file with one dataset replaced: by ``value``, or (``declare``) an empty chunked, compressed
    dataset of that shape, which takes a few KB on disk and its full size when read."""
    import h5py
    import numpy as np

    with h5py.File(path, "r+") as f:
        group = f["node"]["nodes"][node]
        dtype = group[field].dtype
        del group[field]
        if declare is not None:
            group.create_dataset(field, shape=declare, dtype=dtype, chunks=True, compression="gzip")
        else:
            group.create_dataset(field, data=np.asarray(value, dtype=dtype))
    return path


def test_a_nir_file_declaring_gigabytes_is_refused_before_reading(tmp_path):
    import resource

    from plifnet.nir import from_nir

    path = edited(small_graph(tmp_path), "fc1", "weight", declare=(1 << 19, 1 << 10))  # 2 GiB of float32
    assert path.stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        ValueError,
        match=r"declares 2,048 MiB of arrays \(the largest: node/nodes/fc1/weight "
        r"\(524288, 1024\)\), over the limit of 1,024 MiB; .* max_bytes=",
    ):
        from_nir(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing near 2 GiB taken


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda p: small_graph(p, time_steps=10**9), "time_steps 1000000000 is not a number of time steps"),
        (lambda p: small_graph(p, dt=0.0), "dt = 0 (the graph's metadata) is not a positive time step"),
        (
            lambda p: edited(small_graph(p), "conv1_lif", "tau", [float("inf")] * 256),
            "conv1_lif: tau holds an infinity",
        ),
        (lambda p: edited(small_graph(p), "fc1", "weight", [[float("nan")] * 64] * 20), "node fc1: weight holds NaN"),
    ],
)
def test_nir_graphs_out_of_range_are_refused_by_name(change, message, tmp_path, run_cli):
    import nir
    import numpy as np

    from plifnet.nir import from_nir

    path = change(tmp_path)
    if "tau holds" in message:  # the same shape as written: [4, 8, 8]
        edited(path, "conv1_lif", "tau", np.full((4, 8, 8), np.inf))
    with pytest.raises(ValueError, match=re.escape(message)):
        from_nir(path)
    result = run_cli(
        "test", "--config", "mnist", "--model.net", "plifnet.nir.NIRNet", "--model.net.path", path, cwd=tmp_path
    )  # through a run: one line, no traceback, before any data is read
    assert result.returncode == 1 and message in result.stderr.strip().splitlines()[-1], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert nir.read  # the file itself stays readable by NIR


def test_an_unknown_node_type_is_named(tmp_path):
    import h5py

    from plifnet.nir import from_nir

    path = small_graph(tmp_path)
    with h5py.File(path, "r+") as f:
        f["node"]["nodes"]["fc1"]["type"][()] = b"Teleporter"
    with pytest.raises(ValueError, match=r"a node of unknown type 'Teleporter'"):
        from_nir(path)


PAPER_MNIST_T2 = {"class_path": "plifnet.models.SpikingNet.paper", "init_args": {"arch": "mnist", "time_steps": 2}}
INSTANTIATOR = "lightning.pytorch.cli.instantiate_module"  # what plifnet fit records to rebuild net from its config


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dt", "1e-50"], "tau holds 0, not a positive number at --dt 1e-50 in float32"),
        (["--dt", "1e40"], "tau holds an infinity at --dt 1e+40 in float32"),
        (["--time_steps", "-5"], "time_steps -5 is not a number of time steps"),
        (["--time_steps", "0"], "time_steps 8 "),  # 0 is 'not given': the network's T, said in the message
    ],
)
def test_export_values_out_of_range_write_nothing(args, message, tmp_path, run_cli):
    from plifnet.export import main as export_main

    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=2))
    path = checkpoint_with(tmp_path, {"net": PAPER_MNIST_T2, "_instantiator": INSTANTIATOR})
    torch.save({**torch.load(path, weights_only=True), "state_dict": model.state_dict()}, path)
    result = run_cli("--ckpt_path", path, "--out", tmp_path / "m.nir", *args, cwd=tmp_path, main=export_main)
    if message == "time_steps 8 ":
        assert result.returncode == 0 and "T = 2" in result.stderr  # the checkpoint's T, not the config's 8
        return
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "m.nir").exists()


def test_export_to_a_device_leaves_the_device(tmp_path, run_cli):
    import os
    import stat

    from plifnet.export import main as export_main

    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=2))
    path = checkpoint_with(tmp_path, {"net": PAPER_MNIST_T2, "_instantiator": INSTANTIATOR})
    torch.save({**torch.load(path, weights_only=True), "state_dict": model.state_dict()}, path)
    result = run_cli("--ckpt_path", path, "--out", "/dev/null", cwd=tmp_path, main=export_main)
    assert result.returncode == 1 and "could not write /dev/null: it is not a regular file" in result.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    (tmp_path / "folder.nir").mkdir()
    result = run_cli("--ckpt_path", path, "--out", tmp_path / "folder.nir", cwd=tmp_path, main=export_main)
    assert result.returncode == 1 and "not a regular file" in result.stderr and (tmp_path / "folder.nir").is_dir()


# --- a checkpoint decides what it recorded; a resume continues its own run; two runs never share a folder


def small_fit(run_cli, digits, folder, *more, config="mnist"):
    return run_cli(
        "fit",
        "--config",
        config,
        "--data.root",
        digits,
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "8",
        "--model.net.time_steps",
        "2",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
        *more,
        cwd=folder,
    )


def test_resuming_another_datasets_run_is_refused_and_leaves_no_folder(run_cli, tiny_digits, tmp_path):
    assert small_fit(run_cli, tiny_digits, tmp_path).returncode == 0
    runs = tmp_path / "runs" / "lightning_logs"
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    refused = small_fit(
        run_cli, tiny_digits, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last", config="fashion_mnist"
    )
    line = refused.stderr.strip().splitlines()[-1]
    assert (
        refused.returncode == 1
        and line.startswith("error: checkpoint ")
        and "model.net.arch 'mnist'" in line
        and "sets 'fashion_mnist'" in line
    ), refused.stderr[-2000:]
    assert [p.name for p in runs.iterdir()] == ["version_0"]  # no new version folder, no copy of last.ckpt
    # the same network on other data (a config that keeps arch mnist but reads Fashion-MNIST): refused by the data
    (tmp_path / "other.yaml").write_text("data:\n  init_args:\n    dataset: fashion_mnist\n")
    refused = small_fit(
        run_cli,
        tiny_digits,
        tmp_path,
        "--config",
        tmp_path / "other.yaml",
        "--trainer.max_epochs",
        "2",
        "--ckpt_path",
        "last",
    )
    line = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 1 and "trained on other data (dataset 'mnist'; this run's is 'fashion_mnist')" in line
    assert [p.name for p in runs.iterdir()] == ["version_0"]
    resumed = small_fit(run_cli, tiny_digits, tmp_path, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]  # its own data and network: resumed


def test_fits_started_together_never_share_a_version_folder(tmp_path, monkeypatch):
    """Eight claims at once, each listing the folder before any has made its own: every one gets its own."""
    import threading

    from plifnet import cli

    barrier, versions = threading.Barrier(8), []
    listed = Path.glob

    def glob_then_wait(self, pattern):  # all eight list the same (empty) folder, then race to make version_0
        found = list(listed(self, pattern))
        barrier.wait(timeout=30)
        return found

    monkeypatch.setattr(Path, "glob", glob_then_wait)

    def claim():
        log = Namespace(
            class_path="lightning.pytorch.loggers.CSVLogger",
            init_args=Namespace(save_dir=str(tmp_path), name="lightning_logs", version=None),
        )
        cli.claim_versions([log])
        versions.append(log.init_args.version)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(versions) == list(range(8))
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == [f"version_{v}" for v in range(8)]


def test_a_fit_writes_into_the_folder_it_claimed_and_a_failed_start_removes_it(run_cli, tiny_digits, tmp_path):
    (tmp_path / "runs" / "lightning_logs" / "version_3").mkdir(parents=True)
    assert small_fit(run_cli, tiny_digits, tmp_path).returncode == 0
    assert (tmp_path / "runs" / "lightning_logs" / "version_4" / "checkpoints" / "last.ckpt").is_file()
    failed = small_fit(run_cli, tiny_digits, tmp_path, "--data.batch_size", "0")
    assert failed.returncode == 1 and not (tmp_path / "runs" / "lightning_logs" / "version_5").exists()


# --- every bad input one line that names it and the fix


def test_a_shared_neuron_object_is_named_not_a_traceback():
    from torch import nn

    from plifnet.neurons import PLIF
    from plifnet.nir import to_nir

    shared = PLIF()
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        shared,
        nn.Conv2d(4, 4, 3, padding=1),
        shared,
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 10),
        PLIF(),
    ).eval()
    net.time_steps = 2
    with pytest.raises(ValueError, match=r"layers 1 and 3 of Sequential are one PLIF object used twice"):
        to_nir(net, input_shape=(1, 8, 8))


@pytest.mark.parametrize(
    "layers,message",
    [
        ("c8 d p f100", "layer token 'p' in 'c8 d p f100' comes after the maps were flattened"),
        ("c8 p p p p p f100", "halves a 1 x 1 map to nothing (input 1 x 28 x 28): use fewer p"),
        ("c0 f100", "layer token 'c0' in 'c0 f100' has no neurons"),
    ],
)
def test_layer_tokens_that_could_not_run_are_refused_when_built(layers, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        SpikingNet(layers=layers, in_channels=1, size=28, classes=10)


def test_a_folder_as_ckpt_path_is_named_as_a_folder(run_cli, tmp_path):
    result = run_cli("test", "--config", "mnist", "--ckpt_path", tmp_path, cwd=tmp_path)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint {tmp_path} is a folder; pass the path of a .ckpt file in it (e.g. {tmp_path}/checkpoints/"
        f"last.ckpt), or --ckpt_path last for the newest under the run folders"
    )


def test_neurobench_of_no_images_is_one_line(run_cli, tmp_path):
    from plifnet import neurobench

    result = run_cli(
        "--ckpt_path", tmp_path / "x.ckpt", "--config", "mnist", "--images", "0", cwd=tmp_path, main=neurobench.main
    )
    assert result.returncode == 1 and result.stderr.strip() == (
        "error: --images 0: give the number of test images to measure, at least 1"
    )


def test_a_broken_adapter_plugin_is_named_with_its_package(run_cli, tiny_digits, tmp_path, monkeypatch):
    from importlib.metadata import EntryPoint

    from plifnet import contract, registry

    broken = EntryPoint(name="broken", value="no_such_adapter_package.adapter:Adapter", group="plifnet.adapters")
    real = registry.entry_points
    monkeypatch.setattr(
        registry,
        "entry_points",
        lambda group=None, **kw: (
            [broken] if group == "plifnet.adapters" and kw.get("name") in (None, "broken") else real(group=group, **kw)
        ),
    )
    monkeypatch.setattr(contract, "_adapters", None)
    monkeypatch.setattr(contract, "_by_class", {})
    result = small_fit(run_cli, tiny_digits, tmp_path)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert last.startswith(
        "error: the adapter plug-in 'broken' of an installed package "
        "(no_such_adapter_package.adapter:Adapter) failed to import: ModuleNotFoundError"
    ), last


def test_a_nan_tau_is_said(tmp_path):
    import warnings

    import lightning as L

    from plifnet.callbacks import TauMonitor

    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=2))
    monitor = TauMonitor(every_n_steps=1)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    monitor.layers, monitor.labels = {}, {}
    layer = model.net.spiking_layers()["conv1"]
    layer.w.data.fill_(float("nan"))
    monitor.layers["conv1"], monitor.history["conv1"] = (layer, "tau"), []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monitor._record(trainer, model)
        monitor._record(trainer, model)
    said = [str(w.message) for w in caught if "tau/conv1 is nan at step 0" in str(w.message)]
    assert len(said) == 1 and "--model.tau_lr" in said[0]  # once per layer


class FailsAtFirstBatch(__import__("lightning").pytorch.Callback):
    """A resumed run that stops before its first step, as a refusal at the first batch does."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        raise ValueError("refused at the first batch")


def test_a_resume_that_fails_before_its_first_step_leaves_no_folder(run_cli, tiny_digits, tmp_path):
    assert small_fit(run_cli, tiny_digits, tmp_path).returncode == 0
    failed = small_fit(
        run_cli,
        tiny_digits,
        tmp_path,
        "--trainer.max_epochs",
        "2",
        "--ckpt_path",
        "last",
        "--trainer.callbacks+=test_trust.FailsAtFirstBatch",
    )
    assert failed.returncode == 1 and "refused at the first batch" in failed.stderr
    assert [p.name for p in (tmp_path / "runs" / "lightning_logs").iterdir()] == ["version_0"]
