"""``ablation.py``: a grid of cli.py fits, results read back from the runs, resume, any logger, DDP."""

import csv
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ablation
from conftest import ROOT


def run_ablation(*args, cwd):
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_SILENT="true")
    result = subprocess.run([sys.executable, ROOT / "ablation.py", *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=900)
    return result


def quick(data_root, epochs):
    return ["--", "--data.root", data_root, "--data.num_workers", "0", "--data.batch_size", "8",
            "--model.time_steps", "2", "--trainer.max_epochs", epochs, "--trainer.log_every_n_steps", "5"]


def table_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return {row["setting"]: row for row in csv.DictReader(f)}


def checkpoint(folder: Path) -> dict:
    return torch.load(ablation.newest(folder, "last.ckpt"), map_location="cpu", weights_only=False)


def test_default_logger_grid_results_match_the_runs_and_are_not_rerun(tiny_digits, tmp_path):
    out = tmp_path / "results"
    args = ["--config", ROOT / "configs" / "mnist.yaml", "--out", out, "--grid", "plif:16", "lif:16",
            *quick(tiny_digits, 3)]
    result = run_ablation(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = table_rows(out)
    assert set(rows) == {"PLIF tau0=16", "LIF tau=16"}
    for name, label, neuron in (("plif_tau16_seed2020", "PLIF tau0=16", "plif"), ("lif_tau16_seed2020", "LIF tau=16", "lif")):
        folder = out / name
        state = checkpoint(folder)
        assert state["hyper_parameters"]["neuron"] == neuron and state["hyper_parameters"]["tau"] == 16
        assert state["epoch"] == 2 and (folder / "done.json").is_file()
        # protocols A and B against the CSV logger's own record of the same run
        with open(next(folder.rglob("metrics.csv"))) as f:
            logged = [r for r in csv.DictReader(f) if r.get("test/acc")]
        test_acc = [float(r["test/acc"]) for r in logged]
        assert len(test_acc) == 3 and rows[label]["epochs"] == "3"
        assert float(rows[label]["A: best test acc (%)"]) == pytest.approx(100 * max(test_acc), abs=0.005)
        val_acc = [float(r["val/acc"]) for r in logged]
        best = min(e for e in range(3) if val_acc[e] == max(val_acc))  # the earliest best, as ModelCheckpoint keeps
        assert float(rows[label]["B: test acc at best val (%)"]) == pytest.approx(100 * test_acc[best], abs=0.005)
    # PLIF's final tau is the trained model's, per layer; LIF's is its fixed tau
    weights = checkpoint(out / "plif_tau16_seed2020")["state_dict"]
    for layer, index in (("conv1", 0), ("conv2", 3), ("fc1", 8), ("fc2", 11)):
        tau = 1 / torch.sigmoid(weights[f"net.layers.{index}.w"]).item()
        assert float(rows["PLIF tau0=16"][f"final tau {layer}"]) == pytest.approx(tau, abs=1e-3)
    assert float(rows["PLIF tau0=16"]["final tau conv1"]) != pytest.approx(16.0, abs=1e-3)  # learnt
    assert rows["LIF tau=16"]["final tau fc1"] == "16 (fixed)"
    for png in ("test_acc.png", "tau.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| PLIF tau0=16 | 2020 | 3 |" in (out / "results.md").read_text()

    logs = {path: path.stat().st_mtime_ns for path in out.rglob("fit.log")}
    again = run_ablation(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("finished earlier, not run again") == 2
    assert logs == {path: path.stat().st_mtime_ns for path in out.rglob("fit.log")}

    changed = run_ablation(*args[:-1], "2", cwd=tmp_path)  # a finished folder is kept whatever the budget
    assert changed.returncode == 0
    (out / "plif_tau16_seed2020" / "done.json").unlink()  # an unfinished run of another command: refused
    refused = run_ablation(*args[:-1], "2", cwd=tmp_path)
    assert refused.returncode != 0 and "unfinished run of a different command" in refused.stderr


def test_killed_setting_resumes_from_its_checkpoint(tiny_digits, tmp_path):
    out = tmp_path / "results"
    args = [ROOT / "ablation.py", "--config", ROOT / "configs" / "mnist.yaml", "--out", out, "--grid", "plif:2",
            *quick(tiny_digits, 4)]
    folder = out / "plif_tau2_seed2020"
    process = subprocess.Popen([sys.executable, *map(str, args)], cwd=tmp_path, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(folder.rglob("last.ckpt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)  # the runner and its cli.py fit
    process.wait()
    killed_after = checkpoint(folder)["epoch"]
    assert killed_after < 3 and not (folder / "done.json").exists()
    before = folder.joinpath("history.csv").read_text().splitlines()

    result = run_ablation(*args[1:], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "plif_tau2_seed2020: resuming" in result.stdout
    assert "resuming from " in (folder / "fit.log").read_text()  # cli.py's --ckpt_path last found the checkpoint
    after = folder.joinpath("history.csv").read_text().splitlines()
    assert after[: len(before)] == before  # the rows of the killed run are kept, not recomputed
    epochs, steps = zip(*((int(line.split(",")[0]), int(line.split(",")[1])) for line in after[1:]))
    assert epochs == (0, 1, 2, 3)
    assert steps == tuple(steps[0] * e for e in (1, 2, 3, 4))  # no epoch run twice
    assert checkpoint(folder)["global_step"] == steps[-1]


def test_grid_under_ddp_with_tensorboard_only(tiny_digits, tmp_path):
    out = tmp_path / "results"
    result = run_ablation(
        "--config", ROOT / "configs" / "mnist.yaml", "--config", ROOT / "configs" / "trainer" / "ddp.yaml",
        "--out", out, "--grid", "plif:2", *quick(tiny_digits, 1), "--trainer.accelerator", "cpu",
        "--trainer.devices", "2", "--trainer.limit_train_batches", "3",
        "--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger", "--trainer.logger.save_dir", "runs", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = out / "plif_tau2_seed2020"
    with open(folder / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 1 and history[0]["step"] == "3"  # one row, from rank 0 only
    row = table_rows(out)["PLIF tau0=2"]
    assert float(row["A: best test acc (%)"]) == pytest.approx(100 * float(history[0]["test/acc"]), abs=0.005)
    assert row["final tau conv1"] not in ("-", "2.000")  # tau.csv in TensorBoard's run folder


def wandb_history(run_file: Path) -> list[dict]:
    """The history rows of an offline wandb run, read from its ``.wandb`` file: wandb's 7-byte file
    header (":W&B", magic, version), then a LevelDB log (github.com/google/leveldb, doc/log_format.md:
    32 KiB blocks of chunks, each with a 7-byte header: crc32, uint16 length, uint8 type, FULL = 1,
    FIRST = 2, MIDDLE = 3, LAST = 4) whose records are wandb's own ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    position, pending, rows = 7, b"", []
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        length, kind = struct.unpack("<HB", data[position + 4:position + 7])
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_wandb_only_logger(tiny_digits, tmp_path):
    """With wandb as the only logger, the table's protocols A and B are those of the accuracies that
    wandb itself recorded (read from its offline run file, not from plifnet's history.csv)."""
    out = tmp_path / "results"
    result = run_ablation(
        "--config", ROOT / "configs" / "mnist.yaml", "--out", out, "--grid", "lif:2", *quick(tiny_digits, 3), "--model.lr", "0.05",
        "--trainer.limit_train_batches", "3", "--trainer.logger", "lightning.pytorch.loggers.WandbLogger",
        "--trainer.logger.save_dir", "runs", "--trainer.logger.offline", "true", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    runs = list((out / "lif_tau2_seed2020" / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))  # under the setting's folder
    assert len(runs) == 1
    epochs = [row for row in wandb_history(runs[0]) if "val/acc" in row]
    assert len(epochs) == 3
    test, val = [row["test/acc"] for row in epochs], [row["val/acc"] for row in epochs]
    row = table_rows(out)["LIF tau=2"]
    assert float(row["A: best test acc (%)"]) == pytest.approx(100 * max(test), abs=0.005)
    best = min(e for e in range(3) if val[e] == max(val))  # the earliest best epoch, as ModelCheckpoint keeps
    assert float(row["B: test acc at best val (%)"]) == pytest.approx(100 * test[best], abs=0.005)


def test_bad_grid_entries_are_refused_with_the_form_expected():
    for entry, message in (("alif:2", "is not NEURON:TAU"), ("plif", "is not NEURON:TAU"), ("lif:x", "is not a number")):
        with pytest.raises(SystemExit, match=message):
            ablation.parse_grid([entry], [1])


def test_report_only_reads_existing_folders(tmp_path):
    folder = tmp_path / "plif_tau2_seed1"
    folder.mkdir()
    (folder / "history.csv").write_text("epoch,step,seconds,test/acc,val/acc,test/acc_at_best_val\n"
                                        "0,10,60,0.5,0.6,0.5\n1,20,120,0.7,0.55,0.5\n")
    (folder / "runs").mkdir()
    (folder / "runs" / "tau.csv").write_text("step,conv1,fc1\n0,2,2\n10,1.9,2.5\n20,1.8,3.25\n")
    table = ablation.report(tmp_path, ablation.parse_grid(["plif:2"], [1]))
    assert "| PLIF tau0=2 | 1 | 2 (unfinished) | 70.00 | 50.00 | 1.800 | 3.250 | 2.0 min |" in table
    assert json.loads(json.dumps(table_rows(tmp_path)))["PLIF tau0=2"]["final tau fc1"] == "3.250"
