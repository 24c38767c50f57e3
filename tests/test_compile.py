"""``torch.compile`` of whole networks: the fused CPU kernels are custom operators with fake
implementations (``plifnet/kernels/cpu_ops.py``) and a neuron's own hooks are traced into the
network's graph, so compiling breaks no graph at a neuron and changes no spike or gradient.

In eval mode: in training mode Inductor computes BatchNorm's batch statistics in another order of
additions, so a value that lands exactly on a threshold can fire in one and not the other.
"""

import pytest
import torch

from conftest import active_network
from plifnet import SpikingNet
from plifnet import kernels


def eager_and_compiled(net, x):
    """(output, gradients) of the eager and the compiled network, and the compiled graph's breaks."""
    results = []
    for run in (net, torch.compile(net)):
        net.zero_grad()
        out = run(x)
        out.square().sum().backward()
        results.append((out.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}))
    return results, torch._dynamo.explain(net)(x).graph_break_count


@pytest.mark.parametrize("network", ["mnist", "plug-in neuron"])
def test_a_compiled_network_gives_the_eager_spikes_and_gradients_without_graph_breaks(network, example_plugin):
    torch._dynamo.reset()
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    if network == "mnist":  # PLIF's fused kernel and the fused max-pooling
        assert kernels.available("cpu")
        net = SpikingNet("mnist", time_steps=2)
    else:  # ALIF's own hooks, traced into the network's graph
        net = SpikingNet(layers="c8 p f100", in_channels=1, size=28, static=True, time_steps=4,
                         neuron=lambda channels: example_plugin.ALIF(beta=0.3))
    active_network(net, x)  # eval mode: BatchNorm from its running statistics, the same arithmetic compiled
    ((out, grads), (out_c, grads_c)), breaks = eager_and_compiled(net, x)
    assert breaks == 0
    assert torch.equal(out_c, out) and 0 < out.mean() < 1
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
