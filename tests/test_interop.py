"""plifnet's NIR graphs run by the toolchains' own importers, as shipped (SpikingJelly 2.0, snnTorch 1.0,
Norse 1.1): ``to_nir(target=...)`` against each; their exports read by ``from_nir(dt=...)``; and the
targets that cannot run plifnet's networks (sinabs, Rockpool) or a neuron feature (snnTorch's IF, ...)
refused, with each reason checked against the real library where it is installed."""

import nir
import numpy as np
import pytest
import torch
from test_export import plifnet_spikes, sample_input, spike_counts_and_predictions
from torch import nn

from conftest import SHARED_DATASETS, active_network, paper_net, record_network
from plifnet import SpikingClassifier, SpikingNet  # Lightning's loggers bind stderr on import: before run_cli
from plifnet.export import main as export_main
from plifnet.neurons import IF, PLIF
from plifnet.nir import TARGETS, from_nir, to_nir


def import_spikingjelly(graph, dtype):
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    return import_from_nir(graph, dtype=dtype)  # its default dt, 1e-4 s, is the target's


def import_snntorch(graph, dtype):
    import snntorch.utils
    from snntorch.import_nir import import_from_nir

    module = import_from_nir(graph)  # float32 whatever the file; dt fixed at 1e-4 s
    snntorch.utils.reset(module)  # its neurons keep their state in the modules (init_hidden)
    return module


def import_norse(graph, dtype):
    import norse.torch

    return norse.torch.from_nir(graph)  # float32; its default dt, 1e-3 s, is the target's


IMPORTERS = {"spikingjelly": import_spikingjelly, "snntorch": import_snntorch, "norse": import_norse}


def run_imported(target: str, graph: nir.NIRGraph, x: torch.Tensor, dtype=torch.float32) -> list[torch.Tensor]:
    """The spikes [T, N, features] of each of the graph's neuron layers (not the pooling's spike nodes),
    run by the target's importer: the image at every one of the metadata's T steps, or frame t at step t;
    the state passed from step to step as nirtorch's modules take it."""
    module = IMPORTERS[target](graph, dtype)
    static = graph.metadata["input"] == "static"
    steps, batch = (int(graph.metadata["time_steps"]), len(x)) if static else x.shape[:2]
    names = [
        name
        for name, node in graph.nodes.items()
        if isinstance(node, (nir.LIF, nir.IF)) and not name.startswith("pool")
    ]
    spikes = {name: [] for name in names}
    hooks = [
        getattr(module, name).register_forward_hook(
            lambda m, i, out, name=name: spikes[name].append(out[0] if isinstance(out, tuple) else out)
        )
        for name in names
    ]
    state = None
    with torch.no_grad():
        for t in range(steps):
            out = module((x if static else x[t]).to(dtype), state)
            state = out[1] if isinstance(out, tuple) else None
    for hook in hooks:
        hook.remove()
    return [torch.stack(values).reshape(steps, batch, -1) for values in spikes.values()]


def reference_spikes(net, x) -> list[torch.Tensor]:
    return [s.flatten(2) for s in plifnet_spikes(net, x)[1]]


@pytest.mark.parametrize("arch", ["mnist", "nmnist"])
@pytest.mark.parametrize("target", sorted(IMPORTERS))
def test_a_target_export_runs_in_that_targets_own_importer(target, arch, tmp_path):
    """Random networks that fire in every layer (BatchNorm to fold, random tau), images or event frames:
    every spike of every layer equal, SpikingJelly in float64, snnTorch and Norse (float32 only) too."""
    dtype = torch.float64 if target == "spikingjelly" else torch.float32
    x = sample_input(arch, batch=6, time_steps=5).to(dtype)
    net = active_network(SpikingNet.paper(arch, time_steps=5).to(dtype), x)
    path = tmp_path / f"{arch}.nir"
    nir.write(path, to_nir(net, target=target, dtype=np.float64 if dtype == torch.float64 else np.float32))
    graph = nir.read(path)
    assert graph.metadata["dt"] == TARGETS[target].dt and graph.metadata["target"] == target
    expected, got = reference_spikes(net, x), run_imported(target, graph, x, dtype)
    assert len(got) == len(expected) == 4
    for layer, (a, b) in enumerate(zip(expected, got)):
        assert 0 < a.mean() < 1, f"layer {layer} silent or saturated: the comparison would prove nothing"
        assert torch.equal(a.to(b.dtype), b), f"{target}, layer {layer}: {int((a != b).sum())} of {a.numel()} differ"


def test_each_targets_rewrites_are_in_the_graph():
    net = active_network(SpikingNet.paper("mnist"), torch.rand(4, 1, 28, 28))
    kinds = {
        target: [type(node).__name__ for node in to_nir(net, target=target).nodes.values()]
        for target in ("nir", "spikingjelly", "snntorch", "norse")
    }
    assert kinds["nir"][3:5] == ["SumPool2d", "Threshold"] and "Flatten" in kinds["nir"]
    assert kinds["spikingjelly"][3:5] == ["AvgPool2d", "IF"] and "Flatten" in kinds["spikingjelly"]
    for target, pool in (("snntorch", "AvgPool2d"), ("norse", "SumPool2d")):  # their importers flatten the batch
        assert kinds[target][3:5] == [pool, "LIF"] and "Flatten" not in kinds[target] and "Linear" not in kinds[target]
    graph = to_nir(net, target="snntorch")
    fc1 = graph.nodes["fc1"]
    assert isinstance(fc1, nir.Conv2d) and fc1.weight.shape == (2048, 128, 7, 7)
    assert np.array_equal(fc1.weight.reshape(2048, -1), net.layers[7].weight.detach().numpy())
    tau = net.layers[0].tau.item()
    assert graph.nodes["conv1_lif"].tau.flat[0] == pytest.approx(tau * 1e-4, rel=1e-6)
    assert np.allclose(graph.nodes["pool1_lif"].tau, 1e-4) and np.all(graph.nodes["pool1_lif"].v_threshold == 0.125)


@pytest.mark.real_data
def test_a_trained_mnist_network_runs_in_each_toolchain_on_1000_real_test_images(trained_mnist, tmp_path, capsys):
    from plifnet.data.static import StaticDataModule

    data = StaticDataModule("mnist", root=str(SHARED_DATASETS), num_workers=0, batch_size=16)
    model = SpikingClassifier.load_from_checkpoint(trained_mnist, net=SpikingNet.paper("mnist"))
    checkpoint = trained_mnist
    data.setup("test")
    x = torch.stack([data.test_set[i][0] for i in range(1000)])
    labels = torch.tensor([data.test_set[i][1] for i in range(1000)])
    net = model.net.eval()

    def counts_and_predictions(run):  # in parts of 250 images: a layer's spikes of 1000 are 3 GB
        counts, predictions = zip(*[spike_counts_and_predictions(run(part), net.classes) for part in x.split(250)])
        return [sum(layer) for layer in zip(*counts)], torch.cat(predictions)

    counts, predictions = counts_and_predictions(lambda part: reference_spikes(net, part))
    lines = [f"MNIST after 60 steps, 1000 test images: accuracy {(predictions == labels).float().mean():.1%}"]
    for target in sorted(IMPORTERS):
        export_main(["--ckpt_path", str(checkpoint), "--out", str(tmp_path / f"{target}.nir"), "--target", target])
        assert "(4 spiking layers)" in capsys.readouterr().err  # conv1, conv2, fc1, fc2: not the pooling's nodes
        graph = nir.read(tmp_path / f"{target}.nir")
        got_counts, got_predictions = counts_and_predictions(lambda part: run_imported(target, graph, part))
        agree = (got_predictions == predictions).float().mean().item()
        worst = max(abs(a - b) / a for a, b in zip(counts, got_counts))
        lines.append(f"{target}: classes agree on {agree:.1%}, spikes per layer within {worst:.1e} ({got_counts})")
        assert agree >= 0.995 and worst < 1e-3 and min(counts) > 0, lines[-1]
    with capsys.disabled():
        print("\n" + "\n".join(lines))


# ---- what a target cannot run: refused, and the reason checked against the library


def test_targets_that_cannot_run_plifnet_networks_are_refused_in_one_line(tmp_path):
    import lightning as L

    model = SpikingClassifier(SpikingNet.paper("mnist"))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    record_network(tmp_path / "m.ckpt", paper_net("mnist", 8))
    for target, reason in (("sinabs", "subtractive reset"), ("rockpool", "'tau_mem'")):
        with pytest.raises(SystemExit, match=f"error: --target {target}: .*{reason}") as raised:
            export_main(["--ckpt_path", str(tmp_path / "m.ckpt"), "--out", str(tmp_path / "m.nir"), "--target", target])
        assert "\n" not in str(raised.value) and not (tmp_path / "m.nir").exists()
    with pytest.raises(SystemExit, match="assumes dt = 0.0001 and has no option"):
        export_main(
            [
                "--ckpt_path",
                str(tmp_path / "m.ckpt"),
                "--out",
                str(tmp_path / "m.nir"),
                "--target",
                "snntorch",
                "--dt",
                "1e-3",
            ]
        )


def test_rockpool_cannot_import_a_lif_graph_or_a_convolution():
    from rockpool.nn.modules.torch.nir import from_nir as rockpool_from_nir

    lif = nir.NIRGraph.from_list(
        nir.Affine(weight=np.ones((3, 2)), bias=np.zeros(3)),
        nir.LIF(tau=np.full(3, 2e-3), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3), v_reset=np.zeros(3)),
    )
    with pytest.raises(AttributeError, match="tau_mem"):
        rockpool_from_nir(lif)
    conv = nir.NIRGraph.from_list(
        nir.Conv2d(
            input_shape=(4, 4),
            weight=np.ones((2, 1, 3, 3)),
            stride=1,
            padding=0,
            dilation=1,
            groups=1,
            bias=np.zeros(2),
        )
    )
    with pytest.raises(NotImplementedError, match="Conv2d"):
        rockpool_from_nir(conv)


@pytest.mark.parametrize(
    "target, neuron, feature",
    [
        ("snntorch", lambda channels: IF(), "if"),
        ("snntorch", lambda channels: PLIF(tau=2.0, per_channel=True, channels=channels), "per_channel"),
        ("spikingjelly", lambda channels: PLIF(tau=2.0, per_channel=True, channels=channels), "per_channel"),
        ("snntorch", lambda channels: PLIF(tau=2.0, v_reset=0.1), "v_reset"),
        ("norse", lambda channels: PLIF(tau=2.0, decay_input=False), "decay_input=False"),
        ("norse", lambda channels: PLIF(tau=2.0, v_reset=-0.2), "v_reset"),
    ],
)
def test_a_neuron_feature_the_importer_would_run_wrongly_is_refused_with_its_reason(target, neuron, feature):
    net = SpikingNet.paper("mnist", neuron=neuron).eval()
    with pytest.raises(ValueError, match=f"layer conv1 \\({feature}\\): --target {target}: "):
        to_nir(net, target=target)
    to_nir(net)  # NIR itself has the feature


def test_the_importer_behaviours_behind_the_refusals():
    """Each refusal's reason, as the installed library behaves (a fixed library fails this test: then lift it)."""
    import snntorch as snn
    from snntorch.import_nir import _nir_to_snntorch_module

    ones = np.ones(4)
    imported_if = _nir_to_snntorch_module(nir.IF(r=ones, v_threshold=ones, v_reset=0 * ones))
    assert isinstance(imported_if, snn.Leaky) and imported_if.beta.item() == pytest.approx(0.9)
    assert imported_if.reset_mechanism == "subtract"
    flatten = _nir_to_snntorch_module(nir.Flatten(input_type={"input": np.array([2, 3, 3])}, start_dim=0, end_dim=-1))
    assert flatten(torch.ones(5, 2, 3, 3)).shape == (90,)  # the batch of 5 flattened with the features

    from spikingjelly.activation_based.nir_exchange import import_from_nir

    per_channel = nir.NIRGraph.from_list(
        nir.LIF(
            tau=np.array([2e-4, 3e-4]), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2), v_reset=np.zeros(2)
        )
    )
    with pytest.raises(ValueError, match="tau"):
        import_from_nir(per_channel)

    import norse.torch

    def norse_output(r, v_reset):
        graph = nir.NIRGraph.from_list(
            nir.LIF(
                tau=np.full(3, 2e-3),
                r=np.full(3, r),
                v_leak=np.full(3, v_reset),
                v_threshold=np.full(3, 0.5),
                v_reset=np.full(3, v_reset),
            )
        )
        module, state, out = norse.torch.from_nir(graph, ignore_warnings=True), None, []
        for t in range(4):
            z, state = module(torch.full((1, 3), 0.8), state)
            out.append(state)
        return str(out)

    assert norse_output(1.0, 0.0) == norse_output(2.0, 0.0)  # r = tau / dt = 2 (decay_input=False) runs as r = 1


# ---- the other way: graphs the frameworks export, read by from_nir at their dt


def active_input():
    return torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(0)) * 4


def compare_with_from_nir(graph, dt, reference, x, steps=6):
    back = from_nir(graph, dt=dt).eval()
    back.time_steps = steps
    with torch.no_grad():
        got = back(x)
    assert 0 < reference.mean() < 1 and torch.equal(reference, got), int((reference != got).sum())
    return back


@pytest.mark.parametrize("decay_input", [True, False])
def test_spikingjellys_export_is_read_by_from_nir_with_equal_output_spikes(decay_input):
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    x = active_input()
    net = nn.Sequential(
        layer.Conv2d(1, 4, 3),
        neuron.LIFNode(tau=3.0, decay_input=decay_input),
        layer.Flatten(),
        layer.Linear(400, 10),
        neuron.LIFNode(tau=2.5, decay_input=decay_input),
    )
    net[3].weight.data *= 12 if decay_input else 4  # the output layer fires, not always
    graph = export_to_nir(net, x)  # dt = 1e-4, its default; nothing in the graph says so
    functional.reset_net(net)
    with torch.no_grad():
        reference = torch.stack([net(x) for _ in range(6)])
    back = compare_with_from_nir(graph, 1e-4, reference, x)
    assert [m.tau.item() for m in back.modules() if isinstance(m, PLIF)] == pytest.approx([3.0, 2.5], rel=1e-6)
    with pytest.raises(ValueError, match=r"at dt = 1 \(the default.*from_nir\(path, dt=\.\.\.\)"):
        from_nir(graph)


def test_snntorchs_export_is_read_by_from_nir_with_equal_output_spikes():
    import snntorch as snn
    import snntorch.utils
    from snntorch.export_nir import export_to_nir

    x = active_input()

    def leaky(shape, beta):  # parameters per neuron: its export of scalar ones fails NIR's type inference (below)
        return snn.Leaky(
            beta=torch.full(shape, beta), threshold=torch.ones(shape), init_hidden=True, reset_mechanism="zero"
        )

    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), leaky((4, 10, 10), 0.7), nn.Flatten(), nn.Linear(400, 10), leaky((10,), 0.6)
    )
    net[3].weight.data *= 4
    graph = export_to_nir(net, x[:1], ignore_dims=[0])  # dt = 1e-4, fixed
    snntorch.utils.reset(net)
    with torch.no_grad():
        reference = torch.stack([net(x) for _ in range(6)])
    back = compare_with_from_nir(graph, 1e-4, reference, x)
    assert [m.tau.item() for m in back.modules() if isinstance(m, PLIF)] == pytest.approx([1 / 0.3, 1 / 0.4], rel=1e-5)

    scalar = nn.Sequential(nn.Linear(4, 3), snn.Leaky(beta=0.9, init_hidden=True))
    with pytest.raises(ValueError, match="Type inference error"):
        export_to_nir(scalar, torch.ones(1, 4), ignore_dims=[0])


def test_norses_export_writes_tau_in_the_wrong_unit_and_from_nir_refuses_its_graph():
    import norse.torch as norse

    net = norse.SequentialState(
        nn.Conv2d(1, 4, 3), norse.LIFBoxCell(), nn.Flatten(), nn.Linear(400, 10), norse.LIFBoxCell()
    )
    graph = norse.to_nir(net, active_input()[:1], dt=1e-3)
    lif = graph.nodes["1"]
    # tau_mem_inv = 100 / s is a time constant of 10 ms (10 steps of 1 ms); Norse writes dt / tau_mem_inv
    assert np.allclose(lif.tau, 1e-3 / 100) and not np.allclose(lif.tau, 1 / 100)
    assert graph.nodes["2"] is None or not isinstance(graph.nodes["2"], nir.Flatten)  # its Flatten is lost
    with pytest.raises(ValueError):
        from_nir(graph, dt=1e-3)


# ---- dt: written, recorded, read back


def test_dt_scales_the_time_constants_and_from_nir_reads_it_from_the_metadata(tmp_path):
    net = active_network(
        SpikingNet.paper("mnist", neuron="plif").double(), torch.rand(4, 1, 28, 28, dtype=torch.float64)
    )
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    for dt in (1.0, 1e-3):
        path = tmp_path / f"dt{dt}.nir"
        nir.write(path, to_nir(net, dtype=np.float64, dt=dt))
        graph = nir.read(path)
        assert graph.metadata["dt"] == dt
        assert graph.nodes["fc1_lif"].tau.flat[0] == pytest.approx(net.layers[8].tau.item() * dt, rel=1e-12)
        back = from_nir(path).eval()  # dt from the metadata
        assert torch.equal(back(x), net(x))
    with pytest.raises(ValueError, match=r"tau / dt must be > 1 .* at dt = 1 \(given\)"):
        from_nir(tmp_path / "dt0.001.nir", dt=1.0)
    net_if = SpikingNet.paper("mnist", neuron="if").eval()
    graph = to_nir(net_if, dt=1e-3)
    assert np.all(graph.nodes["conv1_if"].r == 1000)
    with pytest.raises(ValueError, match=r"IF with r = 1000 .* at dt = 1 \(given\)"):
        from_nir(graph, dt=1)
    assert from_nir(graph) is not None


def test_a_graph_from_another_framework_is_evaluated_and_fine_tuned_from_the_command_line(
    run_cli, tiny_digits, tmp_path
):
    """SpikingJelly's export of a 28 x 28 network, read with --model.net plifnet.nir.NIRNet at its dt:
    ``test`` gives the accuracy of from_nir's network on the same images; ``fit`` fine-tunes it and its
    checkpoint tests; without the dt, one line says which dt was assumed and how to give another."""
    from spikingjelly.activation_based import layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    from plifnet.data.static import StaticDataModule

    torch.manual_seed(0)
    net = nn.Sequential(
        layer.Conv2d(1, 4, 3),
        neuron.LIFNode(tau=3.0),
        layer.Flatten(),
        layer.Linear(4 * 26 * 26, 10),
        neuron.LIFNode(tau=2.0),
    )
    net[0].weight.data *= 8  # fires on the generated digits, with more than one class predicted
    net[3].weight.data *= 6
    nir.write(tmp_path / "sj.nir", export_to_nir(net, torch.rand(2, 1, 28, 28)))
    common = [
        "--config",
        "mnist",
        "--data.root",
        tiny_digits,
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "8",
        "--model.net",
        "plifnet.nir.NIRNet",
        "--model.net.path",
        tmp_path / "sj.nir",
    ]
    tested = run_cli("test", *common, "--model.net.dt", "1e-4", cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr[-2000:]
    data = StaticDataModule("mnist", root=str(tiny_digits), num_workers=0)
    data.setup("test")
    x, labels = (
        torch.stack(column) if i == 0 else torch.tensor(column) for i, column in enumerate(zip(*data.test_set))
    )
    with torch.no_grad():
        scores = from_nir(tmp_path / "sj.nir", dt=1e-4).eval()(x).mean(0)
    assert 0 < scores.mean() < 1 and len(set(scores.argmax(-1).tolist())) > 1
    expected = (scores.argmax(-1) == labels).float().mean().item()
    assert f"test/acc │ {expected:.16g}".replace(" ", "") in tested.stdout.replace(" ", "").replace("\u2502", "│")

    fitted = run_cli(
        "fit",
        *common,
        "--model.net.dt",
        "1e-4",
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "0",
        cwd=tmp_path,
    )
    assert fitted.returncode == 0, fitted.stderr[-2000:]
    (checkpoint,) = (tmp_path / "runs").rglob("last.ckpt")
    again = run_cli("test", *common, "--model.net.dt", "1e-4", "--ckpt_path", checkpoint, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]

    refused = run_cli("test", *common, cwd=tmp_path)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: ") and "at dt = 1 (the default" in refused.stderr
    assert "--model.net.dt" in refused.stderr.strip().splitlines()[-1]


def test_rockpools_export_has_only_dense_layers_and_an_exponential_leak_and_is_refused():
    from rockpool.nn.combinators import Sequential
    from rockpool.nn.modules import LIFNeuronTorch, LinearTorch
    from rockpool.nn.modules.torch.nir import to_nir as rockpool_to_nir

    graph = rockpool_to_nir(Sequential(LinearTorch((4, 3)), LIFNeuronTorch(3, tau_mem=0.02, dt=1e-3)))
    assert [type(node).__name__ for node in graph.nodes.values()] == ["Input", "Linear", "LIF", "Output"]
    lif = graph.nodes["1_LIFNeuronTorch"]  # r = tau exp(-dt / tau) / dt: an exponential leak, not NIR's Euler step
    assert np.allclose(lif.r, 0.02 * np.exp(-1e-3 / 0.02) / 1e-3)
    with pytest.raises(ValueError, match=r"square images or frames \[C, H, H\]; the input is \[1, 4\]"):
        from_nir(graph, dt=1e-3)
