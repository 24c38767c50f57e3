"""MNIST as sequences (plifnet/data/sequences.py): each order's sequence read against the image file itself
(PIL and the paper's normalisation written here), the permutation a fixed function of its seed, batches time
first, and the permutation part of what a resumed run must share with its checkpoint."""

import numpy as np
import pytest
import torch
from PIL import Image

from plifnet.data import SequentialMNISTDataModule
from plifnet.data.sequences import permutation
from plifnet.errors import UserError
from plifnet.module import data_identity

MEAN, STD = 0.1307, 0.3081  # MNIST's normalisation (docs/paper.md section 3)


def first_test_image(root) -> tuple[np.ndarray, int]:
    """The first test image of the image folder (class 0, file 0.png), normalised, and its label."""
    pixels = np.asarray(Image.open(root / "test" / "0" / "0.png"), dtype=np.float32) / 255
    return (pixels - MEAN) / STD, 0


def sequences(root, **options):
    data = SequentialMNISTDataModule(root=str(root), num_workers=0, batch_size=4, **options)
    data.setup("fit")
    return data


@pytest.mark.parametrize("order", ["pixel", "row", "permuted"])
def test_each_order_reads_the_image_as_its_sequence(order, tiny_digits):
    data = sequences(tiny_digits, order=order, permutation_seed=7)
    image, label = first_test_image(tiny_digits)
    sequence, got_label = data.test_set[0]
    if order == "row":  # one row per step: step t is row t
        expected = image
    elif order == "pixel":  # one pixel per step, in reading order
        expected = image.reshape(-1, 1)
    else:  # pixel k of the sequence is pixel permutation[k] of the image
        expected = image.reshape(-1)[permutation(7).numpy()].reshape(-1, 1)
    assert got_label == label and tuple(sequence.shape) == expected.shape == (*data.sequence_shape,)
    np.testing.assert_allclose(sequence.numpy(), expected, rtol=1e-6, atol=1e-6)
    assert tuple(data.example_input().shape) == (data.sequence_shape[0], 1, data.sequence_shape[1])


def test_the_permutation_is_the_seeds_alone():
    first, again, other = permutation(2020), permutation(2020), permutation(2021)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.equal(first.sort().values, torch.arange(784))  # a permutation of every pixel
    torch.manual_seed(123)  # the global random stream plays no part
    assert torch.equal(permutation(2020), first)


def test_a_batch_is_time_first(tiny_digits):
    data = sequences(tiny_digits, order="row")
    x, y = next(iter(data.train_dataloader()))
    assert tuple(x.shape) == (28, 4, 28) and tuple(y.shape) == (4,)
    first = [data.test_set[i] for i in range(4)]
    batch, labels = data.collate_fn(first)
    assert all(torch.equal(batch[:, n], first[n][0]) for n in range(4))  # sample n is column n of every step
    assert labels.tolist() == [label for _, label in first]


def test_the_permutation_is_part_of_the_data_a_resumed_run_must_share(tiny_digits):
    a = data_identity(SequentialMNISTDataModule, vars(sequences(tiny_digits, order="permuted", permutation_seed=1)))
    b = data_identity(SequentialMNISTDataModule, vars(sequences(tiny_digits, order="permuted", permutation_seed=2)))
    assert a["order"] == "permuted" and (a["permutation_seed"], b["permutation_seed"]) == (1, 2)


def test_an_unknown_order_is_refused_in_one_line(tiny_digits):
    with pytest.raises(UserError, match=r"--data.order must be one of pixel, row, permuted, got 'column'"):
        SequentialMNISTDataModule(order="column", root=str(tiny_digits))
