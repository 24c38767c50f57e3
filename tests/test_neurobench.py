"""NeuroBench 2.3 (the community's harness, not plifnet's code) on plifnet networks: its synaptic
operations equal plifnet's SynapticOps per image, its sparsities and accuracy what the spikes say."""

import pytest
import torch
from test_export import plifnet_spikes, sample_input
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import active_network, paper_net, record_network
from plifnet import SpikingClassifier, SpikingNet
from plifnet.energy import estimate
from plifnet.neurobench import batch_first, benchmark, main


def plifnet_counts(net, x) -> dict[str, float]:
    """plifnet's operations per image: ACs of spike-fed layers, MACs of value-fed ones (energy.estimate)."""
    report = estimate(net, x)
    counts = {"spikes": 0.0, "values": 0.0}
    for layer in report.layers:
        counts[layer.input] += layer.sops
    return counts


@pytest.mark.parametrize("arch", ["mnist", "nmnist"])
def test_neurobench_counts_the_synaptic_operations_that_plifnet_counts(arch):
    x = sample_input(arch, batch=12, time_steps=4)
    net = active_network(SpikingNet.paper(arch, time_steps=4), x)
    events = x.dim() == 5
    labels = torch.randint(0, 10, (12,), generator=torch.Generator().manual_seed(0))
    dataset = TensorDataset(x.transpose(0, 1) if events else x, labels)  # NeuroBench: samples on dim 0
    results = benchmark(net, DataLoader(dataset, batch_size=5), events=events)  # batches of 5, 5 and 2

    ours = plifnet_counts(net, x)
    assert ours["spikes"] > 0
    assert results["SynapticOperations/Effective_ACs"] == pytest.approx(ours["spikes"], rel=1e-12)
    encoder = net.encoder[0]
    if events:  # event counts (above 1 too): NeuroBench counts the non-zero ones times their fan-out, plifnet
        # the dense MACs of every step; the same frames made 0/1 are spikes to plifnet, counted by fan-out
        first = estimate(net, (x > 0).float()).layers[0]
        assert first.input == "spikes" and ours["values"] > first.sops
        assert results["SynapticOperations/Effective_MACs"] == pytest.approx(first.sops, rel=1e-12)
    else:  # the image's convolution: NeuroBench skips the zero padding that plifnet's dense MACs include
        size = x.shape[-1]
        taps_in_padding = size * size * 9 - (2 * 2 + (size - 2) * 3) ** 2  # 3 x 3, padding 1
        padding = encoder.out_channels * encoder.in_channels * taps_in_padding
        assert results["SynapticOperations/Effective_MACs"] == pytest.approx(ours["values"] - padding, rel=1e-12)

    _, spikes = plifnet_spikes(net, x)
    zeros = sum(float((s == 0).sum()) for s in spikes) / sum(s.numel() for s in spikes)
    assert results["ActivationSparsity"] == pytest.approx(zeros, rel=1e-9) and 0 < zeros < 1
    with torch.no_grad():
        predictions = net(x).mean(0).argmax(-1)
    assert results["ClassificationAccuracy"] == pytest.approx((predictions == labels).float().mean().item())
    weights = [m.weight for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert results["ConnectionSparsity"] == pytest.approx(
        sum(float((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    )
    tensors = [*net.parameters(), *net.buffers()]
    assert results["Footprint"] == sum(t.numel() * t.element_size() for t in tensors)


def test_state_does_not_carry_over_between_neurobench_batches():
    """NeuroBench calls the network once per batch: the same images give the same results whichever batch
    they are in (a membrane carried over from the batch before would change the second batch's spikes)."""
    x = sample_input("mnist", batch=8, time_steps=4)
    net = active_network(SpikingNet.paper("mnist", time_steps=4), x)
    labels = torch.zeros(8, dtype=torch.long)
    once = benchmark(net, DataLoader(TensorDataset(x, labels), batch_size=8))
    twice = benchmark(net, DataLoader(TensorDataset(torch.cat([x, x]), torch.cat([labels, labels])), batch_size=8))
    for key in ("SynapticOperations/Effective_ACs", "ActivationSparsity", "ClassificationAccuracy"):
        assert twice[key] == pytest.approx(once[key], rel=1e-12), key


def test_the_command_runs_a_checkpoint_on_test_images(tiny_digits, tmp_path, capsys):
    import lightning as L

    model = SpikingClassifier(SpikingNet.paper("mnist", time_steps=2))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    record_network(tmp_path / "m.ckpt", paper_net("mnist", 2))
    results = main(
        [
            "--ckpt_path",
            str(tmp_path / "m.ckpt"),
            "--config",
            "mnist",
            "--data.root",
            str(tiny_digits),
            "--data.num_workers",
            "0",
            "--images",
            "15",
        ]
    )
    printed = capsys.readouterr().err
    assert "NeuroBench 2.3 on 15 test images" in printed and "plifnet SynapticOps per image" in printed
    assert results["SynapticOperations/Effective_ACs"] == pytest.approx(results["plifnet/ACs"], rel=1e-9)
    assert set(results) >= {"Footprint", "ConnectionSparsity", "ActivationSparsity", "ClassificationAccuracy"}
    with pytest.raises(SystemExit, match="error: "):
        main(["--ckpt_path", str(tmp_path / "missing.ckpt"), "--config", "mnist", "--data.root", str(tiny_digits)])


def test_event_batches_go_to_neurobench_batch_first():
    frames, labels = torch.zeros(3, 5, 2, 4, 4), torch.arange(5)
    assert batch_first((frames, labels))[0].shape == (5, 3, 2, 4, 4)
