"""Synaptic operations and energy (plifnet/energy.py and the SynapticOps callback), against brute-force
counts written here: a dense convolution of each layer's recorded input spikes with an all-ones kernel."""

import csv
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import active_network
from plifnet import PLIF, SpikingClassifier, SpikingNet
from plifnet.callbacks import SynapticOps
from plifnet.data.static import StaticDataModule
from plifnet.energy import TECHNOLOGIES, SynapticCounter, estimate
from plifnet.neurons import IF


def recorded_inputs(model, x):
    """{layer name: [inputs of each call]} of every Conv2d and Linear, named conv<i> / fc<i> in order in a
    SpikingNet, by module path in any other network."""
    inputs, counts, hooks = {}, {"conv": 0, "fc": 0}, []
    for path, module in model.named_modules():
        kind = "conv" if isinstance(module, nn.Conv2d) else "fc" if isinstance(module, nn.Linear) else None
        if kind:
            counts[kind] += 1
            name = f"{kind}{counts[kind]}" if isinstance(model, SpikingNet) else path
            inputs[name] = []
            hooks.append(
                module.register_forward_hook(lambda m, i, o, name=name: inputs[name].append((m, i[0].clone())))
            )
    with torch.no_grad():
        model.eval()(x)
    for hook in hooks:
        hook.remove()
    return inputs


def brute_force_sops(module, x):
    """Every input spike x its fan-out, counted from the output side: for each output position, the
    spikes inside its window (a dense convolution with an all-ones kernel), times the output channels."""
    if isinstance(module, nn.Linear):
        return x.double().sum().item() * module.out_features
    x = x.reshape(-1, *x.shape[-3:]).double()
    ones = torch.ones(module.groups, module.in_channels // module.groups, *module.kernel_size, dtype=torch.float64)
    per_output = F.conv2d(x, ones, None, module.stride, module.padding, module.dilation, module.groups)
    return per_output.sum().item() * (module.out_channels // module.groups)


class BorderNet(nn.Module):
    """Convolutions whose fan-out differs at the borders: stride 2, padding 2 with dilation 2, groups,
    an odd size, and 'same' padding; PLIF neurons in between; a plug-in network, not a SpikingNet."""

    classes = 3

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(2, 8, 3, stride=2, padding=1),
                nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4),
                nn.Conv2d(8, 6, (3, 5), padding="same"),
            ]
        )
        self.neurons = nn.ModuleList([PLIF() for _ in range(4)])
        self.fc = nn.Linear(6 * 7 * 7, 3)
        for conv in self.convs:
            conv.weight.data *= 12  # every layer fires

    def forward(self, x):  # [T, N, 2, 13, 13] event frames
        for conv, neuron in zip(self.convs, self.neurons):
            x = neuron(conv(x.flatten(0, 1)).unflatten(0, x.shape[:2]))
        return self.neurons[3](self.fc(x.flatten(2)) * 3)


@pytest.mark.parametrize("case", ["mnist", "nmnist", "borders"])
def test_sops_of_every_layer_equal_a_brute_force_count(case):
    if case == "borders":
        model, x = BorderNet(), (torch.rand(5, 3, 2, 13, 13) < 0.4).float()  # binary events: conv1 is spike-fed too
    else:
        shape = SpikingNet.paper(case).input_shape
        x = torch.randn(3, *shape) if case == "mnist" else torch.poisson(torch.full((6, 3, *shape), 0.3))
        model = active_network(SpikingNet.paper(case), x)  # every layer fires
    report = estimate(model, x)
    inputs = recorded_inputs(model, x)
    assert [row.name for row in report.layers] == list(inputs)
    images = x.shape[1] if x.dim() == 5 else x.shape[0]
    spike_fed = 0
    for row in report.layers:
        ((module, layer_input),) = inputs[row.name]
        binary = bool(((layer_input == 0) | (layer_input == 1)).all())
        assert row.input == ("spikes" if binary else "values")
        if binary:
            spike_fed += 1
            assert row.sops * images == brute_force_sops(module, layer_input)
            assert 0 < row.input_rate < 1 and row.input_rate == pytest.approx(layer_input.mean().item())
            assert row.energy_pj == pytest.approx(row.sops * TECHNOLOGIES["45nm_fp32"][1])
        else:  # the encoder: dense MACs at every step it runs
            steps = layer_input.numel() // layer_input[0].numel() if layer_input.dim() == 4 else layer_input.shape[0]
            assert row.sops == pytest.approx(row.macs * steps / images)
            assert row.energy_pj == pytest.approx(row.sops * TECHNOLOGIES["45nm_fp32"][0])
            assert math.isnan(row.input_rate)
        assert row.ann_energy_pj == pytest.approx(row.macs * 4.6)
    assert spike_fed == len(report.layers) - (0 if case == "borders" else 1)
    if case == "borders":  # a rate x T x MACs estimate overcounts where windows leave the map
        row = report.layers[1]
        assert row.sops < row.input_rate * 5 * row.macs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("odd", [None, 0.5, 2.0, -1.0, 1 - 2**-8, 1e-30, float("nan"), -0.0])
def test_a_layer_counts_as_spike_fed_exactly_when_every_input_is_0_or_1(dtype, odd):
    """The counter's test for spikes, against the plain definition, in float32 and in bfloat16 (autocast's
    activations), with one value that is not a spike (or -0.0, which is 0) among spikes."""
    x = (torch.rand(4, 2, 50, generator=torch.Generator().manual_seed(1)) < 0.4).to(dtype)  # [T, N, features]
    if odd is not None:
        x[2, 1, 7] = odd
    report = estimate(nn.Linear(50, 3).to(dtype), x)
    binary = bool(((x == 0) | (x == 1)).all())
    assert binary == (odd in (None, -0.0))
    assert report.layers[0].input == ("spikes" if binary else "values")


def test_dense_macs_are_those_of_the_paper_network():
    report = estimate(SpikingNet.paper("mnist"), torch.randn(2, 1, 28, 28))
    assert [row.macs for row in report.layers] == [
        128 * 28 * 28 * 1 * 9,
        128 * 14 * 14 * 128 * 9,
        128 * 7 * 7 * 2048,
        2048 * 100,
    ]
    assert report.macs == sum(row.macs for row in report.layers)
    encoder = report.layers[0]
    assert encoder.sops == encoder.macs  # static images: the encoder runs once per image, not T times


def test_technology_tables_and_errors():
    model, x = SpikingNet.paper("mnist"), torch.randn(2, 1, 28, 28)
    fp32, int8 = estimate(model, x), estimate(model, x, "45nm_int8")
    custom = estimate(model, x, (2.0, 1.0))
    assert int8.sops == fp32.sops
    encoder, conv2 = int8.layers[0], int8.layers[1]
    assert encoder.energy_pj == pytest.approx(encoder.macs * 0.23) and conv2.energy_pj == pytest.approx(
        conv2.sops * 0.03
    )
    assert custom.layers[1].energy_pj == pytest.approx(custom.layers[1].sops)
    assert fp32.totals()["ann_to_snn"] == pytest.approx(fp32.ann_energy_pj / fp32.energy_pj)
    with pytest.raises(ValueError, match="unknown technology 'tsmc3'"):
        estimate(model, x, "tsmc3")
    with pytest.raises(ValueError, match="unknown technology"):
        SynapticOps("tsmc3")


def test_callback_logs_writes_energy_csv_and_prints_totals_on_test(tiny_digits, tmp_path, capsys):
    data = StaticDataModule("mnist", root=str(tiny_digits), batch_size=8, num_workers=0, val_fraction=0.0)
    model = SpikingClassifier(SpikingNet.paper("mnist"))
    callback = SynapticOps()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        logger=L.pytorch.loggers.CSVLogger(tmp_path),
        callbacks=[callback],
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
        limit_train_batches=2,
    )
    trainer.fit(model, data)
    assert "val/sops_per_image" in trainer.callback_metrics  # validation: the first loader
    results = trainer.test(model, data)[0]
    report = callback.report
    assert report.images == 40 and results["test/sops_per_image"] == pytest.approx(report.sops, rel=1e-6)
    # the same images through estimate(), one batch of all 40: the same counts
    data.setup("test")
    x = torch.stack([data.test_set[i][0] for i in range(40)])
    direct = estimate(model.net, x)
    assert [row.sops for row in direct.layers] == pytest.approx([row.sops for row in report.layers], rel=1e-9)
    assert results["test/sops/conv2"] == pytest.approx(report.layers[1].sops, rel=1e-6)
    folder = tmp_path / "lightning_logs" / "version_0"
    rows = list(csv.DictReader(open(folder / "energy.csv")))
    assert [row["name"] for row in rows] == ["conv1", "conv2", "fc1", "fc2", "neurons", "total"]
    assert float(rows[-1]["ann_memory_pj"]) == pytest.approx(sum(row.ann_memory_pj for row in report.layers), rel=1e-6)
    assert results["test/crossover_rate"] == pytest.approx(report.totals()["crossover_rate"], rel=1e-6)
    assert float(rows[-1]["sops"]) == pytest.approx(report.sops, rel=1e-6)
    assert (folder / "energy.png").stat().st_size > 1000
    assert "energy per image (45nm_fp32, 40 images)" in capsys.readouterr().out


def test_memory_access_same_precision_ann_and_crossover_rate_against_a_hand_count():
    """Two Linear layers of IF neurons, two steps, spikes in: every figure counted by hand from the
    published constants (Horowitz 2014, 45 nm fp32: 4.6 pJ per MAC, 0.9 per AC, 10 pJ per 64-bit SRAM
    word, so 5 per 32-bit word) and the accounting of plifnet/energy.py's docstring."""
    fc1, fc2 = nn.Linear(2, 3, bias=False), nn.Linear(3, 2, bias=False)
    fc1.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    fc2.weight.data = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    net = nn.Sequential(fc1, IF(), fc2, IF())
    x = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # [T=2, N=1, 2]
    # fc1: 2 input spikes x 3 targets = 6 ACs (rate 2/4); IF1 fires [1, 0, 1] then [0, 1, 1] (0 + 1 + 1 at t=1)
    # fc2: 4 input spikes x 2 targets = 8 ACs (rate 4/6); IF2 fires [1, 1], [1, 1]; neurons: 3 x 2 + 2 x 2 = 10 updates
    with SynapticCounter(net) as counter, torch.no_grad():
        net(x)
    report = counter.report(images=1)
    mac, ac, word = 4.6, 0.9, 5.0
    assert TECHNOLOGIES["45nm_fp32"] == (mac, ac, word)
    rows = {row.name: row for row in report.layers}
    rows["fc1"], rows["fc2"] = rows.pop("0"), rows.pop("2")  # named by module path, as tau and rates name neurons
    assert (rows["fc1"].sops, rows["fc2"].sops, report.neuron_updates) == (6, 8, 10)
    assert rows["fc1"].energy_pj == pytest.approx(6 * ac) and rows["fc2"].energy_pj == pytest.approx(8 * ac)
    assert rows["fc1"].memory_pj == pytest.approx(3 * 6 * word)  # a weight, a membrane read and write per AC
    assert rows["fc2"].memory_pj == pytest.approx(3 * 8 * word)
    assert report.neuron_pj == pytest.approx(10 * (mac + 2 * word))  # the leak, a membrane read and write
    for row in rows.values():  # the same layer as an ANN, one pass: 6 MACs, 2 reads each, 3 or 2 outputs written
        assert row.ann_energy_pj == pytest.approx(6 * mac)
    assert rows["fc1"].ann_memory_pj == pytest.approx((2 * 6 + 3) * word)
    assert rows["fc2"].ann_memory_pj == pytest.approx((2 * 6 + 2) * word)
    totals = report.totals()
    snn = 6 * ac + 8 * ac + 3 * 14 * word + 10 * (mac + 2 * word)
    ann = 12 * mac + (2 * 12 + 5) * word
    assert totals["energy_with_memory_uj"] == pytest.approx(snn / 1e6)
    assert totals["ann_energy_with_memory_uj"] == pytest.approx(ann / 1e6)
    assert totals["ann_to_snn"] == pytest.approx(12 * mac / (14 * ac))  # operations alone: the SNN wins 4.4x
    rate = (6 * 2 / 4 + 8 * 4 / 6) / 14  # the spike-fed layers' input rates, weighted by their ACs
    per_rate = (14 * ac + 3 * 14 * word) / rate  # what the ACs cost, per unit of rate
    assert totals["input_rate"] == pytest.approx(rate)
    assert totals["crossover_rate"] == pytest.approx((ann - 10 * (mac + 2 * word)) / per_rate)
    assert 0 < totals["crossover_rate"] < rate and snn > ann  # with memory, at its rate, this SNN loses
    int8 = counter.report(1, "45nm_int8").totals()  # a bit-matched int8 ANN against int8 ACs
    assert int8["ann_energy_with_memory_uj"] == pytest.approx((12 * 0.23 + 29 * 1.25) / 1e6)
    assert counter.report(1, (4.6, 0.9)).totals()["energy_with_memory_uj"] == pytest.approx((14 * ac + 10 * mac) / 1e6)


@pytest.mark.parametrize(
    "snn, ann, sentence", [(1.0, 7.9, "7.9x less"), (7.9, 1.0, "7.9x more"), (2.0, 2.0, "1x less")]
)
def test_the_printed_comparison_is_true_in_its_direction(snn, ann, sentence):
    from plifnet.energy import compared

    assert compared(snn, ann) == f"the SNN uses {sentence} energy"
