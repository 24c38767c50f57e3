import pytest
import torch
from torch import nn

from plifnet.factory import neuron_factory
from plifnet.models import ARCHS, SharedDropout, SpikingNet, Vote
from plifnet.neurons import IF, LIF, PLIF


def conv_bn(cin, cout):
    return cin * cout * 9 + 2 * cout  # conv k3 without bias, BN weight and bias


# Parameter counts written out from docs/paper.md section 2, independently of the layer table.
EXPECTED = {
    "mnist": conv_bn(1, 128) + conv_bn(128, 128) + 128 * 7 * 7 * 2048 + 2048 * 100,
    "fashion_mnist": conv_bn(1, 128) + conv_bn(128, 128) + 128 * 7 * 7 * 2048 + 2048 * 100,
    "cifar10": conv_bn(3, 256) + 5 * conv_bn(256, 256) + 256 * 8 * 8 * 2048 + 2048 * 100,
    "nmnist": conv_bn(2, 128) + conv_bn(128, 128) + 128 * 8 * 8 * 2048 + 2048 * 100,
    "cifar10dvs": conv_bn(2, 128) + 3 * conv_bn(128, 128) + 128 * 8 * 8 * 2048 + 2048 * 100,
    "dvs_gesture": conv_bn(2, 128) + 4 * conv_bn(128, 128) + 128 * 4 * 4 * 512 + 512 * 110,
}
SPIKING = {"mnist": 4, "fashion_mnist": 4, "cifar10": 8, "nmnist": 4, "cifar10dvs": 6, "dvs_gesture": 7}
INPUT = {
    "mnist": (1, 28),
    "fashion_mnist": (1, 28),
    "cifar10": (3, 32),
    "nmnist": (2, 34),
    "cifar10dvs": (2, 128),
    "dvs_gesture": (2, 128),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_output_shape_and_parameter_count(arch):
    with torch.device("meta"):  # shapes without the arithmetic
        net = SpikingNet.paper(arch)
        channels, size = INPUT[arch]
        if net.arch.static:
            x = torch.empty(3, channels, size, size)
        else:
            x = torch.empty(5, 3, channels, size, size)
        out = net(x)
    classes = 11 if arch == "dvs_gesture" else 10
    T = net.time_steps if net.arch.static else 5
    assert out.shape == (T, 3, classes)
    assert net.time_steps == {"nmnist": 10, "cifar10dvs": 20, "dvs_gesture": 20}.get(arch, 8)
    n_plif = SPIKING[arch]
    assert len(net.spiking_layers()) == n_plif
    assert sum(p.numel() for p in net.parameters()) == EXPECTED[arch] + n_plif  # one w per PLIF layer
    assert all(m.bias is None for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_paper_variant_switches():
    code, paper = SpikingNet.paper("cifar10", variant="code"), SpikingNet.paper("cifar10", variant="paper")
    dropouts = lambda net: sum(isinstance(m, SharedDropout) for m in net.modules())
    assert (dropouts(code), dropouts(paper)) == (1, 2)
    with torch.device("meta"):
        widths = [
            m.out_features
            for m in SpikingNet.paper("cifar10dvs", variant="paper").modules()
            if isinstance(m, nn.Linear)
        ]
    assert widths == [512, 100]
    with pytest.raises(ValueError, match="variant must be"):
        SpikingNet.paper("mnist", variant="table")


def test_neuron_is_a_constructor_argument():
    with torch.device("meta"):
        lif = SpikingNet.paper("mnist", neuron=neuron_factory("lif", tau=16.0))
        plif = SpikingNet.paper("mnist", neuron=neuron_factory("plif", tau=16.0, per_channel=True))
        if_net = SpikingNet.paper("mnist", neuron=neuron_factory("if"))
    assert all(isinstance(m, LIF) and m.tau == 16.0 for m in lif.spiking_layers().values())
    assert all(isinstance(m, IF) for m in if_net.spiking_layers().values())
    assert [m.w.shape[0] for m in plif.spiking_layers().values()] == [128, 128, 2048, 100]
    assert list(plif.spiking_layers()) == ["conv1", "conv2", "fc1", "fc2"]
    assert isinstance(SpikingNet.paper("mnist").spiking_layers()["fc1"], PLIF)


@pytest.mark.parametrize("train", [False, True])
def test_static_encoder_once_equals_encoder_every_step(train):
    net = SpikingNet.paper("mnist", time_steps=4).train(train)
    x = torch.randn(3, 1, 28, 28)
    torch.manual_seed(1)
    once = net(x)
    # the same network, running the encoder on every step's copy of the image
    x_seq = x.unsqueeze(0).repeat(4, 1, 1, 1, 1)
    torch.manual_seed(1)
    every = net.layers(net.encoder(x_seq.flatten(0, 1)).unflatten(0, (4, 3)))
    torch.testing.assert_close(once, every)
    assert once.shape == (4, 3, 10)


def test_dropout_uses_one_mask_for_all_steps():
    drop = SharedDropout(0.5).train()
    y = drop(torch.ones(6, 4, 50))
    assert torch.equal(y[0], y[5]) and set(y.unique().tolist()) == {0.0, 2.0}
    assert 0.3 < (y[0] == 0).float().mean() < 0.7
    assert torch.equal(drop.eval()(torch.ones(6, 4, 50)), torch.ones(6, 4, 50))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_drops_a_fraction_p_and_scales_the_rest(dtype):
    torch.manual_seed(0)
    y = SharedDropout(0.2).train()(torch.ones(2, 400, 250, dtype=dtype))
    dropped = (y[0] == 0).float().mean().item()
    assert abs(dropped - 0.2) < 0.005  # 100k draws: the standard error is 0.0013
    assert torch.all((y == 0) | (y == torch.tensor(1 / 0.8, dtype=dtype)))


def test_vote_averages_groups_of_ten():
    x = torch.zeros(2, 1, 30)
    x[:, :, 10:13] = 1.0  # three neurons of class 1
    x[1, :, 25:] = 1.0  # five neurons of class 2 at t = 1
    out = Vote()(x)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.3, 0.0]], [[0.0, 0.3, 0.5]]]))


def test_event_network_takes_frame_t_at_step_t():
    net = SpikingNet.paper("nmnist").eval()
    x = torch.rand(3, 2, 2, 34, 34)
    out = net(x)
    assert out.shape == (3, 2, 10)
    # changing only the last frame cannot change the earlier steps (causality)
    x2 = x.clone()
    x2[2] = 5.0
    assert torch.equal(net(x2)[:2], out[:2])


def test_input_of_the_wrong_shape_names_the_problem():
    net = SpikingNet.paper("mnist")
    with pytest.raises(
        ValueError,
        match=r"mnist network takes \[N, C, H, W\] images with C, H, W = 1, 28, 28; got shape \(2, 3, 32, 32\)",
    ):
        net(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="unknown network 'imagenet'"):
        SpikingNet.paper("imagenet")
    with pytest.raises(ValueError, match="time_steps must be >= 1"):
        SpikingNet.paper("mnist", time_steps=0)
