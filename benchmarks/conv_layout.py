"""channels_last against NCHW under bf16 autocast: Conv2d + BatchNorm2d forward + backward at the
networks' layer shapes, timed in alternating rounds (ratios taken within a round).

    python benchmarks/conv_layout.py
"""

import statistics

import torch
from neuron_kernels import alternating_rounds

# (name, input channels, output channels, images = T x N, size): MNIST's two convolutions at batch
# 16 (conv1 once per image, conv2 at every step of T = 8), and a 256-channel input at CIFAR-10's
# second-stage size, batch 4 x T 8
SHAPES = [("mnist conv1", 1, 128, 16, 28), ("mnist conv2", 128, 128, 128, 14), ("256-channel conv", 256, 128, 32, 16)]


def step_of(layout, c_in, c_out, images, size):
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False).to(memory_format=layout)
    norm = torch.nn.BatchNorm2d(c_out)
    x = torch.randn(images, c_in, size, size).to(memory_format=layout).requires_grad_()

    def step():
        x.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(conv(x))
        y.float().sum().backward()

    return step


def main(rounds=9):
    torch.manual_seed(0)
    for name, *shape in SHAPES:
        steps = {
            layout: step_of(fmt, *shape)
            for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last))
        }
        times = alternating_rounds(steps, rounds, "cpu")
        ms = {layout: statistics.median(t[layout] for t in times) * 1e3 for layout in steps}
        speedup = statistics.median(t["NCHW"] / t["channels_last"] for t in times)
        print(
            f"{name:14} NCHW {ms['NCHW']:6.1f} ms   channels_last {ms['channels_last']:6.1f} ms   "
            f"channels_last speed-up {speedup:.2f}x"
        )


if __name__ == "__main__":
    main()
