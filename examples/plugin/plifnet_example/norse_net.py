"""An MNIST classifier written as Norse 1.1's users write it: cells stepped in a loop over time with
their state passed explicitly (nothing to reset), learnable inverse membrane time constants registered
on the network. Train it: ``--model.net plifnet_example.norse_net.Net``."""

import torch
from norse.torch import LIFCell, LIFParameters
from torch import nn
from torch.nn import functional as F


class Net(nn.Module):
    """Conv-pool-LIF, Conv-pool-LIF, Linear-LIF on ``[N, 1, 28, 28]``; spikes ``[T, N, 10]``."""

    classes = 10

    def __init__(self, time_steps: int = 4, channels: int = 8, tau_mem_inv: float = 500.0):
        super().__init__()
        self.time_steps = time_steps
        self.tau_mem_inv = nn.ParameterList([nn.Parameter(torch.tensor(tau_mem_inv)) for _ in range(3)])
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.lif1 = LIFCell(LIFParameters(tau_mem_inv=self.tau_mem_inv[0]))
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.lif2 = LIFCell(LIFParameters(tau_mem_inv=self.tau_mem_inv[1]))
        self.fc = nn.Linear(channels * 7 * 7, self.classes)
        self.lif3 = LIFCell(LIFParameters(tau_mem_inv=self.tau_mem_inv[2]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = s2 = s3 = None
        spikes = []
        for _ in range(self.time_steps):
            z, s1 = self.lif1(F.max_pool2d(self.conv1(x), 2), s1)
            z, s2 = self.lif2(F.max_pool2d(self.conv2(z), 2), s2)
            z, s3 = self.lif3(self.fc(z.flatten(1)), s3)
            spikes.append(z)
        return torch.stack(spikes)
