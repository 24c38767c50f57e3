"""The shape of a layer's time constants (plifnet.tau_shapes) against SciPy's fits, and the start and end shapes
that TauMonitor writes for a run, kept across a resume."""

import csv
import shutil
from functools import partial
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from scipy import stats
from test_ecg_data import write_files

from plifnet import report, tau_shapes
from plifnet.callbacks import ResetState, TauMonitor
from plifnet.data import ECGDataModule
from plifnet.grid import Setting
from plifnet.module import SpikingClassifier
from plifnet.neurons import PLIF
from plifnet.options import NeuronOptions
from plifnet.sequences import SequenceNet

SAMPLES = {  # 4000 draws of each family, skewed to different degrees
    "normal": lambda g: 20 + 3 * torch.randn(4000, generator=g, dtype=torch.float64),
    "lognormal": lambda g: torch.exp(3 + 0.6 * torch.randn(4000, generator=g, dtype=torch.float64)),
    "gamma": lambda g: torch.from_numpy(np.random.default_rng(0).gamma(2.5, 8.0, 4000)),
}


@pytest.mark.parametrize("family", tau_shapes.FAMILIES)
def test_each_familys_fit_is_scipys_and_the_family_drawn_is_the_most_likely(family):
    x = SAMPLES[family](torch.Generator().manual_seed(0))
    shape = tau_shapes.fit(x)
    values = x.numpy()
    a, _, scale = stats.gamma.fit(values, floc=0)
    sigma, _, median = stats.lognorm.fit(values, floc=0)
    mu, sd = stats.norm.fit(values)
    expected = {
        "normal": stats.norm.logpdf(values, mu, sd).mean(),
        "lognormal": stats.lognorm.logpdf(values, sigma, 0, median).mean(),
        "gamma": stats.gamma.logpdf(values, a, 0, scale).mean(),
    }
    for name, value in expected.items():
        assert shape.log_likelihood[name] == pytest.approx(value, rel=1e-7, abs=1e-9), name
    assert tau_shapes.gamma_shape(x) == pytest.approx(a, rel=1e-5)
    assert shape.skewness == pytest.approx(stats.skew(values), rel=1e-9)
    assert (shape.q5, shape.median, shape.q95) == pytest.approx(tuple(np.quantile(values, [0.05, 0.5, 0.95])))
    assert shape.count == 4000 and shape.mean == pytest.approx(values.mean())
    assert shape.best == family


def test_equal_values_have_no_shape_and_values_that_are_not_time_constants_are_refused():
    shape = tau_shapes.fit(torch.full((36,), 20.0))
    assert shape.best == "constant" and shape.log_likelihood is None and shape.median == 20.0
    for bad in (torch.tensor([2.0, float("nan")]), torch.tensor([2.0, 0.0]), torch.tensor([])):
        with pytest.raises(ValueError, match="finite and > 0"):
            tau_shapes.fit(bad)


def read_rows(path):
    with open(path) as f:
        return {(row["time constant"], row["moment"]): row for row in csv.DictReader(f)}


def test_a_run_writes_its_time_constants_shapes_at_the_start_and_the_end_and_a_resumed_run_keeps_the_start(tmp_path):
    """ALIF with a membrane and an adaptation tau per neuron, drawn from a gamma distribution: tau_shapes.csv holds
    each at step 0 (the values before the first update) and after the last step, as tau_shapes.fit gives them; a run
    stopped after its first epoch and resumed from the checkpoint reports the start of the first run, not the values
    it resumed from."""
    root = write_files(tmp_path / "ecg", sequences=(16, 8), steps=40)
    options = NeuronOptions(tau=5.0, tau_adapt=20.0, adaptation=0.1, per_channel=True, tau_init="gamma",
                            tau_spread=0.3, v_threshold=0.05)  # fmt: skip

    def fit(epochs, folder, ckpt_path=None):
        torch.manual_seed(3)
        net = SequenceNet(4, 6, hidden=[12], neuron="alif", options=options, readout="step")
        neuron = net.layers[0].neuron
        start = {"layers.0.neuron": neuron.tau.clone(), "layers.0.neuron:tau_adapt": neuron.tau_adapt.clone()}
        model = SpikingClassifier(net, loss="cross_entropy", optimizer=partial(torch.optim.Adam, lr=0.2))
        trainer = L.Trainer(
            max_epochs=epochs,
            logger=CSVLogger(folder, name="run"),
            callbacks=[ResetState(), TauMonitor(every_n_steps=2), ModelCheckpoint(dirpath=folder / "ckpt")],
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(
            model, ECGDataModule(root=str(root), batch_size=4, num_workers=0, val_fraction=0.25), ckpt_path=ckpt_path
        )
        return (
            start,
            {"layers.0.neuron": neuron.tau, "layers.0.neuron:tau_adapt": neuron.tau_adapt},
            folder / "run" / "version_0",
        )

    start, end, run = fit(2, tmp_path / "whole")
    rows = read_rows(run / "tau_shapes.csv")
    assert set(rows) == {(c, m) for c in ("layers.0.neuron", "layers.0.neuron:tau_adapt") for m in ("start", "end")}
    for column in start:
        assert not torch.equal(start[column], end[column])  # trained
        for moment, values in (("start", start[column]), ("end", end[column])):
            shape, row = tau_shapes.fit(values), rows[(column, moment)]
            assert float(row["median"]) == pytest.approx(shape.median, rel=1e-5)
            assert float(row["skewness"]) == pytest.approx(shape.skewness, rel=1e-5, abs=1e-6)
            assert float(row["log-likelihood gamma"]) == pytest.approx(shape.log_likelihood["gamma"], rel=1e-5)
            assert row["most likely"] == shape.best and int(row["count"]) == 12
    assert (run / "tau_distributions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a study's report gathers them: the run as a setting's folder
    shutil.copytree(run, tmp_path / "study" / "alif_seed3" / "runs")
    report.report(tmp_path / "study", [Setting("alif", (), 3)])
    first, last = (rows[("layers.0.neuron:tau_adapt", moment)] for moment in ("start", "end"))
    assert (
        f"| alif | 3 | layers.0.neuron:tau_adapt | {first['most likely']}, skewness {first['skewness']}, median "
        f"{first['median']} | {last['most likely']}, skewness {last['skewness']}, median {last['median']} |"
    ) in (tmp_path / "study" / "results.md").read_text()

    _, stopped, _ = fit(1, tmp_path / "first")  # stopped after its first epoch, then resumed to the second
    _, _, resumed = fit(2, tmp_path / "resumed", ckpt_path=next((tmp_path / "first" / "ckpt").glob("*.ckpt")))
    again = read_rows(resumed / "tau_shapes.csv")
    for column in start:  # the start of the first run, not the values the second one resumed from
        assert again[(column, "start")] == rows[(column, "start")]
        assert float(again[(column, "start")]["median"]) != pytest.approx(tau_shapes.fit(stopped[column]).median)


def test_a_start_that_was_not_kept_and_values_that_are_not_finite_are_said_so_in_their_own_rows(tmp_path):
    """A run resumed from a checkpoint written before TauMonitor kept the start, and a diverged layer: each row says
    why it has no shape, in the column that says the shape, and the report shows that word."""
    neuron = PLIF(tau=4.0, per_channel=True, channels=5)
    other = PLIF(tau=4.0, per_channel=True, channels=3)
    with torch.no_grad():
        other.w[0] = float("nan")
    monitor = TauMonitor()
    monitor.layers = {"a": (neuron, "tau"), "b": (other, "tau")}
    monitor.load_state_dict({"steps": [0], "history": {"a": [4.0], "b": [4.0]}})  # no "start": an older checkpoint
    trainer = SimpleNamespace(loggers=[], global_step=7)
    monitor._write_shapes(trainer, tmp_path)
    rows = read_rows(tmp_path / "tau_shapes.csv")
    assert rows[("a", "start")]["most likely"] == "not recorded" and rows[("a", "start")]["median"] == "-"
    assert rows[("a", "end")]["most likely"] == "constant" and float(rows[("a", "end")]["median"]) == pytest.approx(4)
    assert rows[("b", "end")]["most likely"] == "not finite" and rows[("b", "end")]["count"] == "3"
    assert all(len(row) == 12 and None not in row.values() for row in rows.values())  # aligned with the header
    (tmp_path / "s" / "a_seed1" / "runs").mkdir(parents=True)
    shutil.copy(tmp_path / "tau_shapes.csv", tmp_path / "s" / "a_seed1" / "runs")
    report.report(tmp_path / "s", [Setting("a", (), 1)])
    assert (
        "| a | 1 | a | not recorded | constant, skewness 0, median 4 |" in (tmp_path / "s" / "results.md").read_text()
    )
