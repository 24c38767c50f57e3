"""An MNIST classifier written as snnTorch 1.0's tutorials write it (``init_hidden=True``, a loop over
time steps, ``output=True`` on the last layer, learnable beta; no reset of its own: snnTorch's training
loop calls ``utils.reset``, plifnet's ``ResetState`` does it here, for this network's neurons only).
Train it: ``--model.net plifnet_example.snntorch_net.Net``."""

import snntorch as snn
import torch
from snntorch import surrogate
from torch import nn
from torch.nn import functional as F


class Net(nn.Module):
    """Conv-pool-Leaky, Conv-pool-Leaky, Linear-Leaky on ``[N, 1, 28, 28]``; spikes ``[T, N, 10]``."""

    classes = 10

    def __init__(self, time_steps: int = 4, channels: int = 8, beta: float = 0.5):
        super().__init__()
        self.time_steps = time_steps
        spike_grad = surrogate.atan()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1)
        self.lif1 = snn.Leaky(beta=beta, learn_beta=True, spike_grad=spike_grad, init_hidden=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.lif2 = snn.Leaky(beta=beta, learn_beta=True, spike_grad=spike_grad, init_hidden=True)
        self.fc = nn.Linear(channels * 7 * 7, self.classes)
        self.lif3 = snn.Leaky(beta=beta, learn_beta=True, spike_grad=spike_grad, init_hidden=True, output=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spikes = []
        for _ in range(self.time_steps):
            spk = self.lif1(F.max_pool2d(self.conv1(x), 2))
            spk = self.lif2(F.max_pool2d(self.conv2(spk), 2))
            spk, mem = self.lif3(self.fc(spk.flatten(1)))
            spikes.append(spk)
        return torch.stack(spikes)
