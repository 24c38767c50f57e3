"""A dataset plug-in: a data module is a :class:`plifnet.data.common.ClassificationDataModule` with one
method, ``load``. Train on it with ``python cli.py fit --config configs/mnist.yaml --data plifnet_example.data.Bars``."""

import torch
from torch.utils.data import TensorDataset

from plifnet.data.common import ClassificationDataModule


class Bars(ClassificationDataModule):
    """Ten classes of 28x28 grey images made in memory: class c is a bright bar at rows 2c+2..2c+4
    on noise. A stand-in for your own images; needs no files.

    Args:
        per_class: training images per class (a fifth as many test images);
        the rest: see :class:`plifnet.data.common.ClassificationDataModule`.
    """

    input_shape = (1, 28, 28)

    def __init__(self, per_class: int = 20, **kwargs):
        super().__init__(**kwargs)
        self.per_class = per_class

    def load(self, stage):
        def make(count: int, seed: int) -> TensorDataset:
            generator = torch.Generator().manual_seed(seed)
            labels = torch.arange(10).repeat_interleave(count)
            images = torch.rand(len(labels), 1, 28, 28, generator=generator) * 0.3
            for i, c in enumerate(labels.tolist()):
                images[i, 0, 2 * c + 2 : 2 * c + 5, 4:-4] = 1.0
            dataset = TensorDataset(images, labels)
            dataset.targets = labels  # what the per-class validation split reads
            return dataset

        train = make(self.per_class, 0)
        return train, train, make(max(1, self.per_class // 5), 1)
