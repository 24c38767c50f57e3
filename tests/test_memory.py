"""Recomputation, ``memory="first_block"`` (the first block) and ``"checkpoint"`` (every block): a block's
input kept, the block recomputed in backward; the first block's convolution, BatchNorm, neuron and pooling
one group of ``CHANNEL_GROUP`` channels at a time. The spikes and BatchNorm's running statistics must be the
stored path's bit for bit (the recomputation runs the same operations on the same input, dropout's masks
from the same random state); the gradients too where no block is split into groups, else to float32
rounding (the groups' shares of a layer-wide tau's gradient are summed group by group); for fewer saved
bytes. With ``first_block`` the later blocks keep their input spikes as bytes, exactly."""

import copy
import ctypes
import ctypes.util
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import ROOT, active_network
from plifnet import SpikingNet, kernels
from plifnet.factory import neuron_factory
from plifnet.module import SpikingClassifier
from plifnet.neurons import LIF
from plifnet.recompute import CHANNEL_GROUP, spikes_kept_as_bytes


def events(channels, **options):
    return (
        lambda: (torch.rand(5, 3, 2, 32, 32) < 0.3).float(),
        lambda: SpikingNet(layers=f"c{channels} p c16 p d f64 d f100", in_channels=2, size=32, **options),
    )


# [input], network, whether the first block is split into groups of channels
NETWORKS = {
    "mnist": (lambda: torch.rand(4, 1, 28, 28), lambda: SpikingNet.paper("mnist", time_steps=4), True),  # encoder once
    "events": (*events(16), False),  # one group: recomputed whole
    "events, 40 channels": (*events(40), True),  # groups of 16, 16 and 8 channels; dropout
    "events, per-channel tau": (*events(40, neuron=neuron_factory("plif", per_channel=True)), True),
}


def step(net, x, precision):
    """Output, parameter gradients and buffers after one training forward + backward."""
    torch.manual_seed(7)  # dropout's masks
    net.zero_grad()
    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        out = net(x)
    out.float().square().sum().backward()
    return (
        out.detach(),
        {name: p.grad.clone() for name, p in net.named_parameters()},
        {name: b.clone() for name, b in net.named_buffers()},
    )


@pytest.mark.parametrize("memory", ["first_block", "checkpoint"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("network", NETWORKS)
def test_recomputation_gives_the_stored_paths_spikes_statistics_and_gradients(network, precision, memory):
    make_input, make_net, split = NETWORKS[network]
    torch.manual_seed(0)
    x = make_input()
    stored = active_network(make_net(), x).train()
    if network == "events, 40 channels":  # BatchNorm's cumulative average: its counter must move once per batch
        for module in stored.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = None
    recomputed = copy.deepcopy(stored)
    recomputed.memory = memory
    out, grads, buffers = step(stored, x, precision)
    out_r, grads_r, buffers_r = step(recomputed, x, precision)
    assert torch.equal(out_r, out) and 0 < out.float().mean() < 1
    # the running statistics moved once, as in the stored path (the recomputation's move is undone)
    assert buffers_r.keys() == buffers.keys() and all(torch.equal(buffers_r[name], buffers[name]) for name in buffers)
    assert grads_r.keys() == grads.keys()
    assert all(grads[name].abs().sum() > 0 for name in grads), "a layer got no gradient"
    for name in grads:
        if split:
            torch.testing.assert_close(
                grads_r[name], grads[name], rtol=1e-5, atol=1e-6 * grads[name].abs().max().item()
            )
        else:
            assert torch.equal(grads_r[name], grads[name]), name


def resident_kib():
    return int(re.search(r"VmRSS:\s+(\d+) kB", Path("/proc/self/status").read_text())[1])


@pytest.mark.skipif(
    not Path("/proc/self/status").exists() or not ctypes.util.find_library("c"),
    reason="resident memory is read from Linux's /proc and glibc's malloc_trim",
)
def test_what_the_forward_keeps_for_backward_on_an_event_network():
    """Measured as benchmarks/memory.py does (the saved tensors are out of reach of Python: the
    recomputation and the byte packing hold them under saved-tensor hooks of their own)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    torch.manual_seed(0)
    x = (torch.rand(2, 1, 2, 128, 128) < 0.2).float()
    kept = {}
    for memory in ("store", "first_block", "checkpoint"):
        net = SpikingNet.paper("cifar10dvs", memory=memory).train()
        net(x).sum().backward()  # kernels compiled, gradients allocated
        libc.malloc_trim(0)
        before = resident_kib()
        out = net(x)
        libc.malloc_trim(0)
        kept[memory] = resident_kib() - before
        out.sum().backward()
    # per sample and step: the first block's convolution and BatchNorm outputs (8 MiB each at 128 channels of
    # 128 x 128) and the spikes into the later convolutions (2.7 MiB as float32) are what store keeps
    assert kept["store"] > 2 * 20 * 1024, kept
    assert kept["first_block"] < 0.35 * kept["store"], kept
    assert kept["checkpoint"] < 0.2 * kept["store"], kept


@pytest.mark.parametrize("binary", [True, False])
def test_spikes_are_kept_as_bytes_exactly_and_other_values_as_they_are(binary):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    x = (torch.rand(6, 4, 10, 10) < 0.3).float() * (1 if binary else 2)
    with spikes_kept_as_bytes(x):
        out = conv(x)
    saved = out.grad_fn._saved_input  # unpacked: given back from bytes, or the tensor itself
    assert saved.dtype == x.dtype and torch.equal(saved, x)
    assert (saved.data_ptr() != x.data_ptr()) == binary
    out.square().sum().backward()
    grad = conv.weight.grad.clone()
    conv.zero_grad()
    conv(x).square().sum().backward()
    assert torch.equal(conv.weight.grad, grad)


def encoder_widths(net, x, backward=True):
    """The output channels of each call of the encoder's convolution in one forward (and backward)."""
    widths = []
    handle = net.encoder[0].register_forward_hook(lambda module, args, out: widths.append(out.shape[1]))
    with torch.set_grad_enabled(backward):
        out = net(x)
        if backward:
            out.sum().backward()
    handle.remove()
    return widths


def test_the_first_block_runs_and_is_recomputed_one_group_of_channels_at_a_time():
    make_input, make_net, _ = NETWORKS["events, 40 channels"]
    x = make_input()
    net = make_net().train()
    assert encoder_widths(net, x) == [40]
    net.memory = "first_block"
    assert CHANNEL_GROUP == 16
    assert sorted(encoder_widths(net, x)) == [8, 8, 16, 16, 16, 16]  # the forward's groups, then the recomputation's
    assert encoder_widths(net, x, backward=False) == [40]  # inference: nothing to recompute, the block runs whole


class ChannelMeanThreshold(LIF):
    """A neuron of one's own whose threshold mixes the channels: the first block cannot be split for it."""

    def threshold(self, state):
        return self.options.v_threshold * (0.5 + state["v"].mean(1, keepdim=True).sigmoid())


def test_a_neuron_with_hooks_of_its_own_is_recomputed_whole_not_split():
    make_input, _, _ = NETWORKS["events, 40 channels"]
    torch.manual_seed(0)
    x = make_input()
    make = neuron_factory(ChannelMeanThreshold, backend="reference")
    stored = active_network(SpikingNet(layers="c40 p c16 p d f64 d f100", in_channels=2, size=32, neuron=make), x)
    recomputed = copy.deepcopy(stored)
    recomputed.memory = "first_block"
    out, grads, _ = step(stored.train(), x, "fp32")
    with pytest.warns(
        UserWarning,
        match="the first block is recomputed whole, not 16 channels at a time, because its "
        "first neuron, ChannelMeanThreshold, has hooks of its own \\(threshold\\)",
    ):
        out_r, grads_r, _ = step(recomputed.train(), x, "fp32")
    assert torch.equal(out_r, out) and 0 < out.mean() < 1
    assert all(torch.equal(grads_r[name], grads[name]) for name in grads)
    with pytest.warns(UserWarning, match="recomputed whole"):
        assert encoder_widths(recomputed, x) == [40, 40]


@pytest.mark.parametrize("memory", ["first_block", "checkpoint"])
def test_memory_is_an_option_of_the_module_and_a_bad_value_says_which_exist(memory):
    assert SpikingClassifier(SpikingNet.paper("mnist", memory=memory)).net.memory == memory
    with pytest.raises(ValueError, match="memory must be one of store, first_block, checkpoint, got 'bits'"):
        SpikingNet.paper("mnist", memory="bits")
    with pytest.raises(ValueError, match=f"compile and memory '{memory}' do not combine"):  # dynamo fails inside
        SpikingClassifier(SpikingNet.paper("mnist", memory=memory), compile=True)


def test_compile_with_recomputation_is_refused_in_one_line(run_cli, tiny_digits, tmp_path):
    result = run_cli(
        "fit",
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--data.root",
        tiny_digits,
        "--model.net.memory",
        "checkpoint",
        "--model.compile",
        "true",
        cwd=tmp_path,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "compile and memory 'checkpoint' do not combine" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("other", [0.5, 2.0, -1.0, float("nan"), float("inf"), 1e-45, 1.0000001])
@pytest.mark.parametrize("layout", ["contiguous (the CPU kernel)", "transposed (torch)"])
def test_only_zeros_and_ones_are_packed_as_bytes(other, layout):
    torch.manual_seed(0)
    x = (torch.rand(3, 5, 7, 33) < 0.3).float()
    x = x if layout.startswith("contiguous") else x.transpose(1, 3)
    assert torch.equal(kernels.binary_as_bytes(x), x.to(torch.uint8))
    x[-1, -1, -1, -1] = other  # the last value: the end of the kernel's vectorised loop
    assert kernels.binary_as_bytes(x) is None
