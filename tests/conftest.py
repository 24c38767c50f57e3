import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from plifnet.neurons import PLIF

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT))  # cli.py lives at the top level, beside the package


@pytest.fixture
def shared_datasets() -> Path:
    """The real datasets beside the checkout (read-only); absent in a user's clone."""
    if not (SHARED_DATASETS / "MNIST" / "raw").is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


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
