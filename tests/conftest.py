import importlib.metadata
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # pytest-xdist runs one worker per core: each worker's torch, numba and the training processes it spawns
    # share the cores among the workers instead of every one spinning a thread per core (set before torch loads)
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(_name, _threads)

import pytest
import torch
from torch import nn

from plifnet.neurons import PLIF

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
# cli.py options for a fit whose test does not look at its figures: drawing the probe page, the learning curves and
# the confusion matrix is about 2.4 s of a 2-epoch fit of the tests (13 s), measured; the tests of those figures keep them
WITHOUT_FIGURES = ("--drop_callbacks+=Probe", "--drop_callbacks+=LearningCurves", "--drop_callbacks+=ConfusionMatrix")


@pytest.fixture
def shared_datasets() -> Path:
    """The real datasets beside the checkout (read-only); absent in a user's clone."""
    if not (SHARED_DATASETS / "MNIST" / "raw").is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture
def run_cli(capfd, monkeypatch):
    """``run_cli(*args, cwd=..., env=..., main=...)``: ``python cli.py ARGS`` (or another entry point's
    ``main(argv)``, such as ``plifnet.export.main``) run in ``cwd`` in this process, returning
    what the subprocess would (``returncode``, ``stdout``, ``stderr``, read from file descriptors 1 and 2, so
    Lightning's, wandb's and the interpreter's own output is there too). A spawn costs about 8 s of imports
    on this machine; tests spawn one only where a separate process is the point (signals, kills, DDP)."""
    from plifnet import cli

    def run(*args, cwd, env=None, main=None):
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [str(ROOT / "cli.py")])  # not pytest's: LightningCLI reads them too
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        environ = dict(os.environ)  # LightningCLI's seed_everything sets PL_GLOBAL_SEED: keep it to this run
        capfd.readouterr()
        code = 0
        try:
            with warnings.catch_warnings():  # printed to stderr, as in a process of its own, not kept by pytest
                warnings.simplefilter("default")  # and Python's default filters:
                for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                    warnings.filterwarnings("ignore", category=category)
                warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
                    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
                )
                (main or cli.main)([str(arg) for arg in args])
        except SystemExit as stop:  # what the interpreter does with it
            code = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
            if stop.code is not None and not isinstance(stop.code, int):
                print(stop.code, file=sys.stderr)
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            wandb = sys.modules.get("wandb")
            if wandb is not None and wandb.run is not None:
                wandb.finish()  # a process's exit does this
            os.environ.clear()
            os.environ.update(environ)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["cli.py", *map(str, args)], code, out, err)

    return run


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _own_wandb_service(monkeypatch):
    """A test worker that used wandb in-process holds a wandb-core service and names it in WANDB_SERVICE;
    a process the test starts (a study's task, a SLURM task) would inherit the name and log through that
    service, which writes the task's run file only when the worker next flushes it, minutes after the task
    has exited (seen on CI). Each process a test starts gets a service of its own, as a user's would."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


def make_image_folder(root: Path, per_class: int, test_per_class: int, size: int = 28, mode: str = "L") -> Path:
    """Write ``root/{train,test}/<class>/<i>.png``: class c is a bright bar at row 2c plus noise."""
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    channels = 1 if mode == "L" else 3
    for split, count in (("train", per_class), ("test", test_per_class)):
        for c in range(10):
            folder = root / split / str(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = torch.rand(size, size, channels, generator=generator) * 60
                image[2 * c + 2 : 2 * c + 5, 4:-4] = 255
                array = image.to(torch.uint8).squeeze(-1).numpy()
                Image.fromarray(array, mode=None).save(folder / f"{i}.png")
    return root


@pytest.fixture
def tiny_digits(tmp_path) -> Path:
    """A 10-class, 28x28 grayscale image folder: 20 training and 4 test images per class."""
    return make_image_folder(tmp_path / "digits", per_class=20, test_per_class=4)


def active_network(net, x):
    """A random network that fires in every layer: BatchNorm statistics of ``x`` with random affine
    parameters (so that folding them matters), random tau, and linear weights scaled up."""
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 1.0  # running statistics := this batch's
        if isinstance(module, nn.Linear):
            module.weight.data *= 8
        if isinstance(module, PLIF) and not isinstance(module.w, nn.UninitializedParameter):
            module.w.data.uniform_(-2.0, 1.0, generator=generator)
    with torch.no_grad():
        net.train()(x)
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.data.uniform_(0.8, 2.0, generator=generator)
                module.bias.data.uniform_(-0.3, 0.6, generator=generator)
    return net.eval()


@pytest.fixture(scope="session")
def example_plugin():
    """The example plug-in package, installed beside plifnet as README's test command and .ci/run do (a test
    never installs into the environment it runs in)."""
    try:
        importlib.metadata.distribution("plifnet-example-plugin")
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the example plug-in package is not installed: pip install -e examples/plugin (README, 'Tests')")
    import plifnet_example

    return plifnet_example


def paper_net(arch: str, time_steps: int) -> dict:
    """The config of ``SpikingNet.paper(arch, time_steps=...)`` as plifnet fit records it in a checkpoint."""
    return {"class_path": "plifnet.models.SpikingNet.paper", "init_args": {"arch": arch, "time_steps": time_steps}}


def record_network(path: Path, net: dict) -> Path:
    """A checkpoint saved from a script (whose network, an object, is not among its hyperparameters) given the
    network's config as plifnet fit records it, so that the CLI and the exporter rebuild that network."""
    state = torch.load(path, weights_only=True)
    state["hyper_parameters"].update(net=net, _instantiator="lightning.pytorch.cli.instantiate_module")
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def trained_mnist(tmp_path_factory) -> Path:
    """A checkpoint of the paper's MNIST network after 60 training batches on real MNIST (seed 2020), trained once
    for the whole run and shared by the xdist workers (a lock; the first to ask trains it): the NIR tests run the
    same trained network through each toolchain. Skips where ../shared is absent."""
    from filelock import FileLock

    if not (SHARED_DATASETS / "MNIST" / "raw").is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    path = tmp_path_factory.getbasetemp().parent / "trained_mnist.ckpt"  # one folder for all workers
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            import lightning as L

            from plifnet import SpikingClassifier, SpikingNet
            from plifnet.data.static import StaticDataModule

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(2020)
                data = StaticDataModule("mnist", root=str(SHARED_DATASETS), num_workers=0, batch_size=16)
                model = SpikingClassifier(SpikingNet.paper("mnist"))
                trainer = L.Trainer(
                    max_steps=60,
                    limit_val_batches=0,
                    logger=False,
                    enable_checkpointing=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                )
                trainer.fit(model, data)
                trainer.save_checkpoint(path.with_suffix(".part"))
            record_network(path.with_suffix(".part"), paper_net("mnist", 8)).rename(path)
    return path
