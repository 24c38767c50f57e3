"""A spiking network written in plain PyTorch, using nothing of plifnet but its neuron: train it with
``python cli.py fit --config configs/mnist.yaml --model.net plifnet_example.net.TinySNN``."""

import torch
from torch import nn
from torch.nn import functional as F

from plifnet.neurons import PLIF


class TinySNN(nn.Module):
    """Conv3x3(8)-BN-PLIF-MaxPool-Linear(10)-PLIF on 28x28 grey images, ``time_steps`` steps.

    Input ``[N, 1, 28, 28]``; output spikes of the 10 class neurons ``[T, N, 10]``.
    """

    classes = 10

    def __init__(self, time_steps: int = 4, channels: int = 8):
        super().__init__()
        self.time_steps = time_steps
        self.conv = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.lif1 = PLIF(tau=2.0)
        self.fc = nn.Linear(channels * 14 * 14, self.classes, bias=False)
        self.lif2 = PLIF(tau=2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        current = self.bn(self.conv(x))
        spikes = self.lif1(current.expand(self.time_steps, *current.shape))  # [T, N, C, 28, 28]
        pooled = F.max_pool2d(spikes.flatten(0, 1), 2).unflatten(0, spikes.shape[:2])
        return self.lif2(self.fc(pooled.flatten(2)))
