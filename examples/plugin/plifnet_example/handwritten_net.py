"""An MNIST classifier in plain PyTorch whose neuron follows plifnet's neuron protocol
(docs/EXTENDING.md) without importing plifnet: ``[T, N, ...]`` in and out, a ``reset()`` that forgets
its state, a learnable ``tau`` (in time steps). Like SpikingJelly's multi-step neurons it continues from
the state the last call left (a long sequence may come in pieces), so it does not reset in ``forward``.
Train it: ``--model.net plifnet_example.handwritten_net.Net``."""

import torch
from torch import nn
from torch.nn import functional as F


class LIF(nn.Module):
    """``V[t] = V[t-1] + (X[t] - V[t-1]) / tau``, spike where ``V >= v_threshold``, then ``V = 0``;
    the sigmoid's slope as the spike's gradient (4 at the threshold)."""

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0):
        super().__init__()
        self.tau = nn.Parameter(torch.tensor(tau))
        self.v_threshold = v_threshold
        self.v = None

    def reset(self):
        self.v = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.zeros_like(x[0]) if self.v is None else self.v
        spikes = []
        for x_t in x:
            v = v + (x_t - v) / self.tau
            surrogate = torch.sigmoid(4 * (v - self.v_threshold))
            spike = (v >= self.v_threshold).to(x.dtype) + (surrogate - surrogate.detach())  # 0 and 1 exactly
            v = v * (1 - spike.detach())
            spikes.append(spike)
        self.v = v
        return torch.stack(spikes)


class Net(nn.Module):
    """Conv-BN-LIF-pool, Conv-BN-LIF-pool, Linear-LIF on ``[N, 1, 28, 28]``; spikes ``[T, N, 10]``."""

    classes = 10

    def __init__(self, time_steps: int = 4, channels: int = 8):
        super().__init__()
        self.time_steps = time_steps
        self.conv1, self.bn1, self.lif1 = (
            nn.Conv2d(1, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            LIF(),
        )
        self.conv2, self.bn2, self.lif2 = (
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            LIF(),
        )
        self.fc, self.lif3 = nn.Linear(channels * 7 * 7, self.classes, bias=False), LIF()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.time_steps
        current = self.bn1(self.conv1(x))
        spikes = self.lif1(current.expand(T, *current.shape))  # [T, N, C, 28, 28]
        pooled = F.max_pool2d(spikes.flatten(0, 1), 2)  # [T N, C, 14, 14]
        spikes = self.lif2(self.bn2(self.conv2(pooled)).unflatten(0, (T, -1)))  # [T, N, C, 14, 14]
        pooled = F.max_pool2d(spikes.flatten(0, 1), 2).unflatten(0, (T, -1))  # [T, N, C, 7, 7]
        return self.lif3(self.fc(pooled.flatten(2)))  # [T, N, 10]
