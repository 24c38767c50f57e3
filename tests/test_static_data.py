import numpy as np
import pytest
import torch
from PIL import Image

from plifnet.data.common import SeededSamples, _mix, stratified_split
from plifnet.data.static import StaticDataModule


def assert_stratified(targets, train, val, fraction):
    """Disjoint, complete, and every class split in the given fraction up to rounding (half a sample)."""
    assert set(train).isdisjoint(val) and sorted(train + val) == list(range(len(targets)))
    targets = torch.as_tensor(targets)
    for c in torch.unique(targets).tolist():
        members = int((targets == c).sum())
        in_val = int((targets[torch.tensor(val, dtype=torch.long)] == c).sum())
        assert abs(in_val - fraction * members) <= 0.5, (c, in_val, members)


def test_stratified_split_is_per_class_disjoint_and_repeatable():
    targets = [c for c in range(4) for _ in range(20 + 10 * c)]  # unbalanced classes: 20, 30, 40, 50
    train, val = stratified_split(targets, 0.15, seed=3)
    assert_stratified(targets, train, val, 0.15)
    assert stratified_split(targets, 0.15, seed=3) == (train, val)
    assert stratified_split(targets, 0.15, seed=4) != (train, val)


def test_image_folder_layout_with_validation_and_test(tiny_digits):
    dm = StaticDataModule("mnist", root=str(tiny_digits), batch_size=8, num_workers=0)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (170, 30, 40)
    assert dm.val_loader_names == ["val", "test"]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(dm.train_dataloader()) == 170 // 8  # drop_last
    names = [len(loader.dataset) for loader in dm.val_dataloader()]
    assert names == [30, 40]
    # normalised with MNIST's statistics: the bright bar (255) maps to (1 - 0.1307) / 0.3081
    x_val, y_val = dm.val_set[0]
    assert x_val.max().item() == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-5)
    assert x_val[0, 2 * y_val + 2, 10].item() == pytest.approx((1 - 0.1307) / 0.3081, rel=1e-5)


def test_without_validation_split_the_test_set_is_the_validation_loader(tiny_digits):
    dm = StaticDataModule("mnist", root=str(tiny_digits), num_workers=0, val_fraction=0.0)
    dm.setup("fit")
    assert dm.val_loader_names == ["test"] and len(dm.train_set) == 200
    assert [len(loader.dataset) for loader in dm.val_dataloader()] == [40]


def test_augmentation_only_on_training_data(tiny_digits):
    dm = StaticDataModule("mnist", root=str(tiny_digits), num_workers=0, val_fraction=0.5)
    dm.setup("fit")
    index = dm.val_set.indices[0]
    train_view, eval_view = dm.train_set.dataset, dm.val_set.dataset
    path, label = eval_view.samples[index]
    # the evaluation view is the image file, normalised with MNIST's statistics and nothing else
    pixels = torch.tensor(np.array(Image.open(path)), dtype=torch.float32) / 255
    torch.testing.assert_close(eval_view[index][0][0], (pixels - 0.1307) / 0.3081)
    torch.manual_seed(0)
    moved = train_view[index][0]
    assert moved.shape == (1, 28, 28) and not torch.equal(moved, eval_view[index][0])  # RandomAffine moved it


def test_seeded_samples_repeat_their_augmentation_and_leave_the_global_stream_alone(tiny_digits):
    dm = StaticDataModule("mnist", root=str(tiny_digits), num_workers=0)
    dm.setup("fit")
    samples = SeededSamples(dm.train_set, seed=7)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = samples[(0, 5)][0]
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream went on as if untouched
    assert torch.equal(samples[(0, 5)][0], first)  # the same sample of the same epoch: the same image
    assert not torch.equal(samples[(1, 5)][0], first)  # another epoch: another affine transform
    # the transform drew from the CPU generator seeded as torch.manual_seed would seed it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_mix(7, 0, 5))
        assert torch.equal(dm.train_set[5][0], first)


def test_missing_data_gives_one_clear_error(tmp_path):
    dm = StaticDataModule("cifar10", root=str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(FileNotFoundError) as error:
        dm.setup("fit")
    message = str(error.value)
    assert "cifar10 was not found in" in message and str(tmp_path / "nowhere") in message
    assert "cifar-10-batches-py" in message and "train/<class>" in message and "--data.download true" in message


def test_image_folder_with_the_wrong_number_of_classes(tmp_path, tiny_digits):
    import shutil

    shutil.rmtree(tiny_digits / "train" / "9")
    dm = StaticDataModule("mnist", root=str(tiny_digits), num_workers=0)
    with pytest.raises(ValueError, match="has 9 class folders .* but mnist has 10 classes"):
        dm.setup("fit")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        StaticDataModule("svhn")
    with pytest.raises(ValueError, match="val_fraction must be in"):
        StaticDataModule("mnist", val_fraction=1.0)


@pytest.mark.real_data
@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_real_mnist_and_fashion_mnist_in_torchvision_layout(shared_datasets, dataset):
    dm = StaticDataModule(dataset, root=str(shared_datasets), num_workers=0)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (51000, 9000, 10000)
    assert_stratified(dm.val_set.dataset.targets, dm.train_set.indices, dm.val_set.indices, 0.15)


@pytest.mark.real_data
def test_real_cifar10_image_folder(shared_datasets):
    dm = StaticDataModule("cifar10", root=str(shared_datasets / "cifar10-jpg"), num_workers=0, val_fraction=0.0)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.test_set)) == (50000, 10000)
    assert dm.train_set.classes[:3] == ["airplane", "automobile", "bird"]
    x, y = dm.test_set[0]
    assert x.shape == (3, 32, 32) and y == 0
