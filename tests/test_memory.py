"""``memory="checkpoint"``: each block's input kept, the block recomputed in backward. The spikes, every
gradient and BatchNorm's running statistics must be those of the stored path, bit for bit (the
recomputation runs the same operations on the same input, dropout's masks from the same random state),
for fewer saved bytes."""

import copy

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from conftest import ROOT, active_network
from plifnet import SpikingNet
from plifnet.module import SpikingClassifier

NETWORKS = {  # [input], network: a static one (encoder once, constant current), an event one with dropout
    "mnist": (lambda: torch.rand(4, 1, 28, 28), lambda: SpikingNet("mnist", time_steps=4)),
    "events": (lambda: (torch.rand(5, 3, 2, 32, 32) < 0.3).float(),
               lambda: SpikingNet(layers="c16 p c16 p d f64 d f100", in_channels=2, size=32)),
}


def step(net, x, precision):
    """Output, parameter gradients, buffers after one training forward + backward, and the bytes that
    autograd kept for backward (distinct storages, parameters excluded)."""
    kept, parameters = {}, {p.untyped_storage().data_ptr() for p in net.parameters()}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    torch.manual_seed(7)  # dropout's masks
    net.zero_grad()
    with saved_tensors_hooks(pack, lambda tensor: tensor), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        out = net(x)
    out.float().square().sum().backward()
    return (out.detach(), {name: p.grad.clone() for name, p in net.named_parameters()},
            {name: b.clone() for name, b in net.named_buffers()}, sum(kept.values()))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("network", NETWORKS)
def test_recomputation_gives_the_stored_paths_spikes_gradients_and_statistics_bit_for_bit(network, precision):
    make_input, make_net = NETWORKS[network]
    torch.manual_seed(0)
    x = make_input()
    stored = active_network(make_net(), x).train()
    recomputed = copy.deepcopy(stored)
    recomputed.memory = "checkpoint"
    out, grads, buffers, kept = step(stored, x, precision)
    out_r, grads_r, buffers_r, kept_r = step(recomputed, x, precision)
    assert torch.equal(out_r, out) and 0 < out.float().mean() < 1
    assert grads_r.keys() == grads.keys() and all(torch.equal(grads_r[name], grads[name]) for name in grads)
    assert all(grads[name].abs().sum() > 0 for name in grads), "a layer got no gradient"
    # the running statistics moved once, as in the stored path (the recomputation's move is undone)
    assert all(torch.equal(buffers_r[name], buffers[name]) for name in buffers)
    assert kept_r < kept / 3, (kept_r, kept)


def test_memory_is_an_option_of_the_module_and_a_bad_value_says_which_exist():
    assert SpikingClassifier("mnist", memory="checkpoint").net.memory == "checkpoint"
    with pytest.raises(ValueError, match="memory must be one of store, checkpoint, got 'bits'"):
        SpikingNet("mnist", memory="bits")
    with pytest.raises(ValueError, match="compile and memory 'checkpoint' do not combine"):  # dynamo fails inside
        SpikingClassifier("mnist", memory="checkpoint", compile=True)


def test_compile_with_recomputation_is_refused_in_one_line(run_cli, tiny_digits, tmp_path):
    result = run_cli("fit", "--config", ROOT / "configs" / "mnist.yaml", "--data.root", tiny_digits,
                     "--model.memory", "checkpoint", "--model.compile", "true", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "compile and memory 'checkpoint' do not combine" in result.stderr.strip().splitlines()[-1]
