"""An MNIST classifier written as SpikingJelly 2.0's users write it (multi-step mode, the image
repeated T times, no reset of its own: SpikingJelly's training loop calls ``functional.reset_net``,
plifnet's ``ResetState`` does it here). Train it: ``--model.net plifnet_example.spikingjelly_net.Net``."""

import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn


class Net(nn.Module):
    """Conv-BN-PLIF-pool, Conv-BN-PLIF-pool, Linear-PLIF on ``[N, 1, 28, 28]``; spikes ``[T, N, 10]``."""

    classes = 10

    def __init__(self, time_steps: int = 4, channels: int = 8, tau: float = 2.0):
        super().__init__()
        self.time_steps = time_steps

        def plif():
            return neuron.ParametricLIFNode(init_tau=tau, surrogate_function=surrogate.ATan(), detach_reset=True)

        self.features = nn.Sequential(
            layer.Conv2d(1, channels, 3, padding=1, bias=False),
            layer.BatchNorm2d(channels),
            plif(),
            layer.MaxPool2d(2),
            layer.Conv2d(channels, channels, 3, padding=1, bias=False),
            layer.BatchNorm2d(channels),
            plif(),
            layer.MaxPool2d(2),
            layer.Flatten(),
            layer.Linear(channels * 7 * 7, self.classes, bias=False),
            plif(),
        )
        functional.set_step_mode(self, "m")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x.unsqueeze(0).repeat(self.time_steps, 1, 1, 1, 1))
