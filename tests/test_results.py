"""docs/RESULTS.md and its manifest of runs (docs/results/runs.yaml): every committed run names the commit it
ran at, that commit exists, and the manifest holds what scripts/check_results.py needs to re-run it."""

import re
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import check_results  # noqa: E402

RESULTS = ROOT / "docs" / "results"


def test_every_committed_run_is_in_the_manifest_with_its_record_and_an_existing_commit():
    runs = yaml.safe_load((RESULTS / "runs.yaml").read_text())
    committed = {str(path.parent.relative_to(RESULTS)) for path in RESULTS.rglob("history.csv")}
    assert committed <= set(runs), f"committed runs missing from runs.yaml: {sorted(committed - set(runs))}"
    text = (ROOT / "docs" / "RESULTS.md").read_text()
    for name, run in runs.items():
        assert re.fullmatch(r"[0-9a-f]{40}", run["commit"]), name
        found = subprocess.run(
            ["git", "-C", ROOT, "cat-file", "-e", f"{run['commit']}^{{commit}}"], capture_output=True
        )
        assert found.returncode == 0, f"{name}: commit {run['commit']} is not in this repository"
        assert run["commit"][:7] in text, f"RESULTS.md does not name {name}'s commit {run['commit'][:7]}"
        assert run["onednn_isa"] in check_results.ISA_FLAGS and "--seed_everything" in run["fit"], name
        check = run["check"]
        if "step" in check:
            for kind in check["compare"]:
                record = RESULTS / name / {"tau": "tau.csv", "loss": "loss.csv"}[kind]
                assert record.is_file(), f"{name}: no {record.name} to compare with"
        else:
            assert f"{check['test_acc']:.2f}" in text, (
                f"{name}: its test accuracy after epoch {check.get('epoch', 1)}, {check['test_acc']:.2f}, is not in RESULTS.md"
            )


def test_the_check_reads_a_logged_value_at_its_step_and_refuses_a_missing_one(tmp_path):
    """metrics.csv has a row per logging call; the check takes the one with the value at the step (0-based
    in Lightning's file: optimiser step 100 is row step 99)."""
    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,step,train/loss_step,val/acc\n0,49,0.5,\n0,99,,0.9\n0,99,0.25,\n")
    assert check_results.logged_loss(metrics, 100) == {"train/loss_step": 0.25}
    with pytest.raises(SystemExit) as refused:
        check_results.logged_loss(metrics, 150)
    assert str(refused.value) == f"error: {metrics} has no row with step = 149 and a train/loss_step"


def test_a_records_command_is_spelled_for_the_code_it_runs_on(tmp_path):
    """At the record's own commit its command runs as written; on code that takes the network as model.net
    (``--at main``), the neuron and its options move under the network."""
    old, new = tmp_path / "old", tmp_path / "new"
    for tree, models in ((old, "class SpikingNet: ..."), (new, "class SpikingNet:\n    def paper(cls): ...")):
        (tree / "plifnet").mkdir(parents=True)
        (tree / "plifnet" / "models.py").write_text(models)
    args = ["--config", "configs/mnist.yaml", "--model.neuron", "lif", "--model.tau", "16", "--model.tau_lr", "0.1"]
    assert check_results.spelled_for(old, args) == args
    assert check_results.spelled_for(new, args) == [
        "--config",
        "configs/mnist.yaml",
        "--model.net.neuron",
        "lif",
        "--model.net.options.tau",
        "16",
        "--model.tau_lr",
        "0.1",
    ]
