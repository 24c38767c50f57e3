"""``torch.compile`` of whole networks: the fused CPU kernels are custom operators with fake
implementations (``plifnet/kernels/cpu_ops.py``) and a neuron's own hooks are traced into the
network's graph, so compiling breaks no graph at a neuron and changes no spike or gradient (a loop over more
time steps than ``UNROLLED_STEPS`` leaves the graph instead of being unrolled); and
``--model.compile true`` trains and validates through the CLI as the eager network does.

In eval mode: in training mode Inductor computes BatchNorm's batch statistics in another order of
additions, so a value that lands exactly on a threshold can fire in one and not the other.

TorchInductor (C++ code) compiles the MNIST and the plug-in-neuron network; the other networks are
compiled with the ``aot_eager`` backend, which captures the same graph (dynamo, fake tensors, the
custom operators' fake implementations, the traced backward) and runs it without generating code:
Inductor's code generation for each of them is what ``benchmarks/compile.py`` runs, at tens of
seconds a network on this machine.
"""

import importlib

import pytest
import torch
from test_cli import read_metrics

from conftest import ROOT, active_network
from plifnet import SpikingNet, contract, kernels
from plifnet.models import ARCHS

PEERS = {"spikingjelly": "spikingjelly", "snntorch": "snntorch", "norse": "norse", "handwritten": None}


def eager_and_compiled(net, x, backend="inductor"):
    """(output, gradients) of the eager and the compiled network, and dynamo's account of the graph."""
    results = []
    for run in (net, torch.compile(net, backend=backend)):
        net.zero_grad()
        contract.reset_state(net)  # a peer's neurons keep their state after a call
        out = run(x)
        out.square().sum().backward()
        results.append((out.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}))
    contract.reset_state(net)
    return results, torch._dynamo.explain(net)(x)


def paper_input(arch, batch=2, time_steps=2):
    spec = ARCHS[arch]
    if spec.static:
        return torch.rand(batch, spec.in_channels, spec.size, spec.size)
    return (torch.rand(time_steps, batch, spec.in_channels, spec.size, spec.size) < 0.3).float()  # event frames


def assert_same(eager, compiled):
    (out, grads), (out_c, grads_c) = eager, compiled
    assert torch.equal(out_c, out) and 0 < out.mean() < 1
    assert any(grad.abs().sum() > 0 for grad in grads.values())
    for name in grads:
        torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("network", ["mnist", "plug-in neuron"])
def test_a_compiled_network_gives_the_eager_spikes_and_gradients_without_graph_breaks(network, example_plugin):
    torch._dynamo.reset()
    torch.manual_seed(0)
    x = torch.rand(4, 1, 28, 28)
    if network == "mnist":  # PLIF's fused kernel and the fused max-pooling
        assert kernels.available("cpu")
        net = SpikingNet.paper("mnist", time_steps=2)
    else:  # ALIF's own hooks, traced into the network's graph
        net = SpikingNet(
            layers="c8 p f100",
            in_channels=1,
            size=28,
            static=True,
            time_steps=4,
            neuron=lambda channels: example_plugin.ALIF(beta=0.3),
        )
    active_network(net, x)  # eval mode: BatchNorm from its running statistics, the same arithmetic compiled
    (eager, compiled), explained = eager_and_compiled(net, x)
    assert explained.graph_break_count == 0
    assert_same(eager, compiled)


@pytest.mark.parametrize("arch", [arch for arch in ARCHS if arch not in ("mnist", "fashion_mnist")])
def test_every_paper_network_compiles_into_one_graph_with_the_eager_spikes_and_gradients(arch):
    torch._dynamo.reset()
    torch.manual_seed(0)
    x = paper_input(arch)
    net = active_network(SpikingNet.paper(arch, time_steps=2), x)
    (eager, compiled), explained = eager_and_compiled(net, x, backend="aot_eager")
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert_same(eager, compiled)


@pytest.mark.parametrize("peer", PEERS)
def test_a_peer_network_compiles_with_the_eager_spikes_and_gradients(peer, example_plugin):
    """SpikingJelly's, snnTorch's and a hand-written network compile into one graph; Norse's cells break
    it in Norse's own code (``initial_state`` sets ``requires_grad`` on a tensor, which dynamo cannot
    trace), never in plifnet's."""
    if PEERS[peer]:
        pytest.importorskip(PEERS[peer])
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = importlib.import_module(f"plifnet_example.{peer}_net").Net(time_steps=3, channels=8)
    for module in net.modules():  # weights x 4: every layer of the untrained network fires
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.weight.data *= 4
    x = torch.rand(4, 1, 28, 28)
    active_network(net, x)
    (eager, compiled), explained = eager_and_compiled(net, x, backend="aot_eager")
    assert_same(eager, compiled)
    if peer == "norse":
        assert explained.graph_break_count > 0
        for reason in explained.break_reasons:
            assert "requires_grad" in reason.reason and "/norse/" in reason.user_stack[-1].filename, reason
    else:
        assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_model_compile_trains_and_validates_as_the_eager_network(run_cli, tiny_digits, tmp_path):
    """``--model.compile true``: a compiled fit logs tau and firing rates and checkpoints the eager
    network's names; validating its checkpoint compiled gives the eager validation's metrics exactly,
    the monitors' included (their forward hooks, added at each validation, run in the compiled network)."""
    quick = [
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--data.root",
        tiny_digits,
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "8",
        "--model.net.time_steps",
        "2",
        "--trainer.logger",
        "CSVLogger",
        "--trainer.logger.save_dir",
        "runs",
    ]

    def cli(subcommand, *args):
        torch._dynamo.reset()  # as in a new process: the runs here share one, and dynamo's cache per function
        result = run_cli(subcommand, *quick, *args, cwd=tmp_path)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "recompile_limit" not in result.stderr  # nothing falls back to eager after too many compiles

    cli(
        "fit",
        "--model.compile",
        "true",
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "10",
        "--model.optimizer.lr",
        "0.01",
    )
    runs = tmp_path / "runs" / "lightning_logs"
    fitted = read_metrics(runs / "version_0")
    assert any(r.get("tau/conv1") and float(r["tau/conv1"]) != 2.0 for r in fitted)  # trained
    ckpt = runs / "version_0" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert {k.removeprefix("net.") for k in state if k.startswith("net.")} == set(
        SpikingNet.paper("mnist").state_dict()
    )

    results = []
    for given in ([], ["--model.compile", "true"]):  # each validation writes the run's <run>/validate/, the latest kept
        cli("validate", "--ckpt_path", ckpt, *given)
        results.append(read_metrics(runs / "version_0" / "validate")[-1])
    eager, compiled = results
    keys = [key for key in eager if key.startswith(("val/", "firing_rate/")) and eager[key]]
    assert {"val/acc", "val/sops_per_image", "firing_rate/conv1", "firing_rate/fc2"} <= set(keys)
    assert float(eager["firing_rate/conv1"]) > 0
    assert {key: compiled[key] for key in keys} == {key: eager[key] for key in keys}


def test_forward_hooks_added_or_removed_after_compiling_are_obeyed():
    """plifnet's monitors hook the layers at each validation and unhook them after: a compiled network
    calls a hook added after its first compile, and stops calling it once removed (dynamo's default
    ignores both: the monitors would count nothing, or count training batches)."""
    from plifnet.module import SpikingClassifier

    torch._dynamo.reset()
    net = SpikingNet(layers="c8 p f100", in_channels=1, size=28, static=True, time_steps=2)
    model = SpikingClassifier(net=net, compile=True)
    model.configure_model()
    x = torch.rand(2, 1, 28, 28)
    model(x)
    seen = []
    handle = net.layers[0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    model(x)
    handle.remove()
    model(x)
    assert seen == [torch.Size([2, 2, 8, 28, 28])]


@pytest.mark.parametrize("recurrent", [False, True], ids=["feed-forward", "recurrent"])
def test_a_long_sequence_of_a_neurons_own_hooks_is_not_unrolled_into_the_networks_graph(recurrent, example_plugin):
    """Past ``UNROLLED_STEPS``, torch.compile of a whole network leaves a hook neuron's loop over time out of the graph
    (a break there, said in a warning) instead of unrolling it: the graphs hold as many operations at T = 120 as at T = 40 (unrolled,
    T = 200 took over two minutes to compile on 2 cores), and the outputs and gradients are the eager network's."""
    from plifnet.kernels.compiled import UNROLLED_STEPS
    from plifnet.options import NeuronOptions
    from plifnet.sequences import SequenceNet

    torch._dynamo.reset()
    torch.manual_seed(0)
    net = SequenceNet(
        3, 5, hidden=[16], neuron="plifnet_example.ALIF", options=NeuronOptions(tau=4.0, v_threshold=0.5),
        readout="max", recurrent=recurrent,
    )  # fmt: skip
    operations = {}
    for steps in (40, 120):
        assert steps > UNROLLED_STEPS
        x = torch.rand(steps, 4, 3) * 2
        with pytest.warns(UserWarning, match=f"a loop over {steps} time steps runs outside the compiled network's"):
            (eager, compiled), explained = eager_and_compiled(net, x, backend="aot_eager")
        (out, grads), (out_c, grads_c) = eager, compiled
        torch.testing.assert_close(out_c, out, rtol=1e-5, atol=1e-6)
        assert all(grad.abs().sum() > 0 for grad in grads.values())
        for name in grads:
            torch.testing.assert_close(grads_c[name], grads[name], rtol=1e-4, atol=1e-6, msg=name)
        assert explained.graph_break_count >= 1
        operations[steps] = sum(len(ops) for ops in explained.ops_per_graph)
    assert operations[40] == operations[120], operations
