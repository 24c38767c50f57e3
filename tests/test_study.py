"""``plifnet study`` (``python ablation.py`` in a clone): a grid of plifnet fits, results read back from the runs, resume, any logger, DDP."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import wandb_files

from conftest import ROOT, WITHOUT_FIGURES
from plifnet import grid, report, study
from plifnet.grid import NEURON, TAU


@pytest.fixture
def run_study(run_cli):
    """``run_study(*args, cwd=...)``: ``plifnet study ARGS`` in this process (its settings' fits are processes of
    their own, as for a user), with kill_probe importable by those fits."""
    env = {"WANDB_SILENT": "true", "PYTHONPATH": str(ROOT / "tests")}
    return lambda *args, cwd: run_cli(*args, cwd=cwd, env=env, main=study.main)


def quick(data_root, epochs, paper_network=True):
    """cli.py options that make a setting's epoch 8 training batches of 8 small images (a test may add its own),
    and the paper's network T = 2 (a network of one's own takes its own options)."""
    return [
        "--",
        "--data.root",
        data_root,
        "--data.num_workers",
        "0",
        "--data.batch_size",
        "8",
        *(["--model.net.time_steps", "2"] if paper_network else []),
        "--trainer.max_epochs",
        epochs,
        "--trainer.log_every_n_steps",
        "5",
        "--trainer.limit_train_batches",
        "8",
        *WITHOUT_FIGURES,  # no test here reads them
    ]


def table_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return {row["setting"]: row for row in csv.DictReader(f)}


def checkpoint(folder: Path) -> dict:
    return torch.load(report.newest(folder, "last.ckpt"), map_location="cpu", weights_only=False)


@pytest.mark.multiprocess  # each setting is a process of its own
def test_default_logger_grid_results_match_the_runs_and_are_not_rerun(run_study, tiny_digits, tmp_path):
    out = tmp_path / "results"
    args = [
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--out",
        out,
        "--grid",
        "plif:16",
        "lif:16",
        *quick(tiny_digits, 3),
    ]
    result = run_study(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = table_rows(out)
    assert set(rows) == {"PLIF tau0=16", "LIF tau=16"}
    for name, label, neuron in (
        ("plif_tau16_seed2020", "PLIF tau0=16", "plif"),
        ("lif_tau16_seed2020", "LIF tau=16", "lif"),
    ):
        folder = out / name
        state = checkpoint(folder)
        net = state["hyper_parameters"]["net"]["init_args"]
        assert net["neuron"] == neuron and net["options"]["tau"] == 16
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
    again = run_study(*args, cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.count("finished earlier, not run again") == 2
    assert logs == {path: path.stat().st_mtime_ns for path in out.rglob("fit.log")}

    # another budget: the finished results are not this command's, refused in one line; --rerun trains again
    changed = run_study(*args, "--trainer.max_epochs", "1", cwd=tmp_path)
    assert changed.returncode == 1 and "table" not in changed.stdout, changed.stdout[-2000:]
    assert (
        changed.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: plif_tau16_seed2020 finished with another command (this command adds --trainer.max_epochs 1; see "
        )
    )
    assert "add --rerun to train it again" in changed.stderr and logs == {
        p: p.stat().st_mtime_ns for p in out.rglob("fit.log")
    }
    rerun = run_study("--rerun", *args, "--trainer.max_epochs", "1", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert table_rows(out)["PLIF tau0=16"]["epochs"] == "1" and checkpoint(out / "plif_tau16_seed2020")["epoch"] == 0
    old = out / ".replaced" / "plif_tau16_seed2020.0"
    assert (old / "done.json").is_file() and checkpoint(old)["epoch"] == 2  # the earlier run is kept whole
    (out / "plif_tau16_seed2020" / "done.json").unlink()  # an unfinished run of another command: refused
    refused = run_study(*args, "--trainer.max_epochs", "2", cwd=tmp_path)
    assert refused.returncode != 0 and "unfinished run of a different command" in refused.stderr


@pytest.mark.multiprocess
@pytest.mark.parametrize("stop", ["SIGKILL to the group", "SIGTERM to the runner"])
def test_a_stopped_setting_resumes_from_its_checkpoint(stop, run_study, tiny_digits, tmp_path):
    """Killed with its fit (a machine's loss), or sent SIGTERM alone (a preemption, a user's kill), the study
    resumes the setting from its newest checkpoint when run again; after a SIGTERM the runner passes it on to the
    fit (which saves its state) and starts no other setting, recording no failure."""
    out = tmp_path / "results"
    args = [
        "-m",
        "plifnet",
        "study",
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--out",
        out,
        "--grid",
        "plif:2",
        *(["lif:2"] if stop == "SIGTERM to the runner" else []),  # a second setting, which must not start
        *quick(tiny_digits, 4),
    ]
    folder, other = out / "plif_tau2_seed2020", out / "lif_tau2_seed2020"
    process = subprocess.Popen(
        [sys.executable, *map(str, args)],
        cwd=tmp_path,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(folder.rglob("last.ckpt")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    if stop == "SIGKILL to the group":
        os.killpg(process.pid, signal.SIGKILL)  # the runner and its cli.py fit
        process.wait()
    else:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 1 and stderr.strip().splitlines()[-1] == (
            "plif_tau2_seed2020: stopped by SIGTERM (exit code 143), its state saved; the study stops here: "
            "run the same command again to resume"
        ), stderr[-3000:]
        assert list(folder.rglob("interrupted.ckpt")) and not (folder / "failed.json").exists()
        assert not other.exists()  # no other setting started
    killed_after = checkpoint(folder)["epoch"]
    assert killed_after < 3 and not (folder / "done.json").exists()
    before = folder.joinpath("history.csv").read_text().splitlines()

    result = run_study(*args[3:], cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "plif_tau2_seed2020: resuming" in result.stdout
    assert "resuming from " in (folder / "fit.log").read_text()  # cli.py's --ckpt_path last found the checkpoint
    after = folder.joinpath("history.csv").read_text().splitlines()
    assert after[: len(before)] == before  # the rows of the stopped run are kept, not recomputed
    epochs, steps = zip(*((int(line.split(",")[0]), int(line.split(",")[1])) for line in after[1:]))
    assert epochs == (0, 1, 2, 3)
    assert steps == tuple(steps[0] * e for e in (1, 2, 3, 4))  # no epoch run twice
    assert checkpoint(folder)["global_step"] == steps[-1]
    assert (other / "done.json").exists() == (stop == "SIGTERM to the runner")


@pytest.mark.multiprocess
def test_grid_under_ddp_with_tensorboard_only(run_study, tiny_digits, tmp_path):
    out = tmp_path / "results"
    result = run_study(
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--config",
        ROOT / "configs" / "trainer" / "ddp.yaml",
        "--out",
        out,
        "--grid",
        "plif:2",
        *quick(tiny_digits, 1),
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.logger",
        "lightning.pytorch.loggers.TensorBoardLogger",
        "--trainer.logger.save_dir",
        "runs",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = out / "plif_tau2_seed2020"
    with open(folder / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 1 and history[0]["step"] == "3"  # one row, from rank 0 only
    row = table_rows(out)["PLIF tau0=2"]
    assert float(row["A: best test acc (%)"]) == pytest.approx(100 * float(history[0]["test/acc"]), abs=0.005)
    assert row["final tau conv1"] not in ("-", "2.000")  # tau.csv in TensorBoard's run folder


def test_bad_grid_entries_are_refused_with_the_form_expected():
    for entry, message in (
        ("alif:2", "is not NEURON:TAU"),
        ("plif", "is not NEURON:TAU"),
        ("lif:x", "is not a number"),
    ):
        with pytest.raises(SystemExit, match=message):
            grid.parse_grid([entry], [1])


def test_report_only_reads_existing_folders(tmp_path):
    folder = tmp_path / "plif_tau2_seed1"
    folder.mkdir()
    (folder / "history.csv").write_text(
        "epoch,step,seconds,test/acc,val/acc,test/acc_at_best_val\n0,10,60,0.5,0.6,0.5\n1,20,120,0.7,0.55,0.5\n"
    )
    (folder / "runs").mkdir()
    (folder / "runs" / "tau.csv").write_text("step,conv1,fc1\n0,2,2\n10,1.9,2.5\n20,1.8,3.25\n")
    table = report.report(tmp_path, grid.parse_grid(["plif:2"], [1]))
    assert "| PLIF tau0=2 | 1 | 2 (stopped) | 70.00 | 50.00 | 1.800 | 3.250 | 2.0 min |" in table
    assert json.loads(json.dumps(table_rows(tmp_path)))["PLIF tau0=2"]["final tau fc1"] == "3.250"


def test_a_full_disk_under_out_is_one_line_and_the_last_results_stay(tmp_path):
    """results.md's next write goes to /dev/full (its temporary name links there): the kernel's own ENOSPC."""
    from plifnet.files import temporary_name

    folder = tmp_path / "plif_tau2_seed1"
    folder.mkdir()
    (folder / "history.csv").write_text("epoch,step,seconds,test/acc\n0,10,60,0.5\n")
    (tmp_path / "results.md").write_text("the last results\n")
    temporary_name(tmp_path / "results.md").symlink_to("/dev/full")
    with pytest.raises(SystemExit) as stopped:
        study.main(["--out", str(tmp_path), "--grid", "plif:2", "--seeds", "1", "--report-only"])
    assert str(stopped.value) == (
        f"error: could not write {tmp_path / 'results.md'}: No space left on device. The files "
        f"written before are intact; free disk space or make the folder writable, or write "
        f"elsewhere with --out DIR"
    )
    assert (tmp_path / "results.md").read_text() == "the last results\n"
    assert not temporary_name(tmp_path / "results.md").is_symlink()  # the temporary name is cleaned up


def test_settings_file_names_a_product_of_axes_and_named_settings(tmp_path):
    (tmp_path / "study.yaml").write_text(
        "settings:\n  alif: --model.net.neuron plifnet_example.ALIF --model.net.options.tau 2\n"
        "axes:\n  model.net.neuron: [plif, lif]\n  model.net.options.tau: [2, 16]\nseeds: [1, 2]\n"
    )
    settings = grid.read_settings_file(tmp_path / "study.yaml", [2020])
    assert [s.folder for s in settings] == [
        "alif_seed1",
        "alif_seed2",
        "plif_tau2_seed1",
        "plif_tau2_seed2",
        "plif_tau16_seed1",
        "plif_tau16_seed2",
        "lif_tau2_seed1",
        "lif_tau2_seed2",
        "lif_tau16_seed1",
        "lif_tau16_seed2",
    ]
    assert settings[-1].overrides == ("--model.net.neuron", "lif", "--model.net.options.tau", "16")
    assert settings[0].option(NEURON) == "plifnet_example.ALIF" and settings[0].option(TAU) == "2"
    for bad, message in (
        ("axes: [1, 2]\n", "must be a mapping"),
        ("settings:\n  a/b: --model.net.options.tau 2\n", "must be a folder name"),
    ):
        (tmp_path / "bad.yaml").write_text(bad)
        with pytest.raises(SystemExit, match=message):
            grid.read_settings_file(tmp_path / "bad.yaml", [1])
    with pytest.raises(SystemExit, match="task 5 does not exist: the study has tasks 0..1"):
        study.main(["--config", "c.yaml", "--out", str(tmp_path / "o"), "--grid", "plif:2", "lif:2", "--only", "5"])
    with pytest.raises(SystemExit, match="settings named twice"):
        study.main(["--out", str(tmp_path / "o"), "--grid", "plif:2", "plif:2", "--report-only"])


def test_settings_files_of_settings_alone_or_axes_alone_and_names_given_twice(tmp_path):
    (tmp_path / "named.yaml").write_text(
        "settings:\n  plif2: --model.net.options.tau 2\n  lif16: --model.net.neuron lif --model.net.options.tau 16\n"
    )
    assert [s.folder for s in grid.read_settings_file(tmp_path / "named.yaml", [7])] == ["plif2_seed7", "lif16_seed7"]
    (tmp_path / "axes.yaml").write_text("axes:\n  model.net.options.tau: [2, 16]\n")
    assert [s.folder for s in grid.read_settings_file(tmp_path / "axes.yaml", [7])] == ["tau2_seed7", "tau16_seed7"]
    (tmp_path / "twice.yaml").write_text(
        "settings:\n  a: --model.net.options.tau 2\n  b: --model.net.options.tau 4\n  a: --model.net.options.tau 16\n"
    )
    with pytest.raises(SystemExit) as refused:
        grid.read_settings_file(tmp_path / "twice.yaml", [7])
    assert (
        str(refused.value) == f"error: {tmp_path / 'twice.yaml'}: 'a' is given twice (line 4); every setting and "
        f"option needs its own name"
    )


def test_report_only_on_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(SystemExit) as refused:
        study.main(["--out", str(tmp_path / "absent"), "--grid", "plif:2", "--report-only"])
    assert str(refused.value) == (
        f"error: --out {tmp_path / 'absent'} does not exist: run the study first (the same "
        f"command without --report-only), or name the folder it wrote"
    )


@pytest.mark.multiprocess  # each setting is a process of its own
def test_a_failing_setting_is_recorded_and_the_study_goes_on(run_study, tiny_digits, tmp_path):
    """The first setting's option is misspelt: it fails in one line, the second trains, the results page names
    the failure; after the fix, the same command runs the failed setting alone."""
    out = tmp_path / "study"
    common = [
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--out",
        out,
        "--setting",
        "good",
        "--model.net.options.tau 4",
        *quick(tiny_digits, 1),
        "--trainer.limit_train_batches",
        "2",
        "--trainer.limit_val_batches",
        "1",
    ]
    result = run_study("--setting", "bad", "--model.tua 3", *common, cwd=tmp_path)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    reason = json.loads((out / "bad_seed2020" / "failed.json").read_text())
    assert reason == {
        "exit_code": 1,
        "last_line": "error: unrecognized arguments: --model.tua 3. Accepted options: plifnet fit --help",
    }
    assert (out / "good_seed2020" / "done.json").is_file()
    assert result.stderr.strip().splitlines() == [
        f"error: bad_seed2020 failed (exit code 1): {reason['last_line']} (log: {out / 'bad_seed2020' / 'fit.log'})",
        "fix what the log says and run the same command again: finished settings are not run again, the others run "
        "again (from their newest checkpoint where they have one)",
    ]
    assert f"- bad_seed2020 failed: exit code 1: {reason['last_line']}" in (out / "results.md").read_text()
    assert table_rows(out)["bad"]["epochs"] == "0 (failed)" and table_rows(out)["good"]["epochs"] == "1"

    fixed = run_study("--setting", "bad", "--model.net.options.tau 3", *common, cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stdout[-2000:] + fixed.stderr[-2000:]
    assert "good_seed2020: finished earlier, not run again" in fixed.stdout
    assert (out / "bad_seed2020" / "done.json").is_file() and not (out / "bad_seed2020" / "failed.json").exists()


@pytest.mark.multiprocess  # each setting is a process of its own
def test_a_second_runner_on_the_same_out_leaves_a_claimed_setting_alone(run_study, tiny_digits, tmp_path):
    """This test holds the claim of the first setting, as a runner training it would; plifnet study trains the
    other one only, reports the first as running and says so."""
    out = tmp_path / "study"
    with report.claim(out / "plif_tau2_seed2020") as mine:
        assert mine
        result = run_study(
            "--config",
            ROOT / "configs" / "mnist.yaml",
            "--out",
            out,
            "--grid",
            "plif:2",
            "lif:2",
            *quick(tiny_digits, 1),
            "--trainer.limit_train_batches",
            "2",
            "--trainer.limit_val_batches",
            "1",
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        assert "plif_tau2_seed2020: running in another process, not run here" in result.stdout
        assert (
            f"still running in another process: plif_tau2_seed2020; when they end: plifnet study --out {out} "
            f"--report-only" in result.stdout
        )
        assert (
            not (out / "plif_tau2_seed2020" / "fit.log").exists()
            and (out / "lif_tau2_seed2020" / "done.json").is_file()
        )
        assert table_rows(out)["PLIF tau0=2"]["epochs"] == "0 (running)"
    assert report.collect(out / "plif_tau2_seed2020")["status"] == "stopped"  # the claim ends with its holder


@pytest.mark.multiprocess
def test_a_study_as_a_slurm_array_reports_what_a_sequential_run_reports(run_study, tiny_digits, tmp_path):
    """Two settings (a grid point and a plug-in neuron by class path), wandb offline as the logger: run one
    after another, and as the SLURM array that --slurm-array writes, each task's command run as SLURM would
    (SLURM_ARRAY_TASK_ID set; task 1 signalled for requeue mid-epoch, killed, run again). The reports are
    equal bit for bit but for wall time, and wandb holds one group with a run per setting."""
    settings = ["--grid", "plif:2", "--setting", "alif", "--model.net.neuron plifnet_example.ALIF"]
    fit = [
        *quick(tiny_digits, 1),
        "--trainer.limit_train_batches",
        "6",
        "--trainer.callbacks+=kill_probe.RequeueFromParentAtStep",
    ]
    sequential = run_study(
        "--config", ROOT / "configs" / "mnist.yaml", "--out", tmp_path / "study", *settings, *fit, cwd=tmp_path
    )
    assert sequential.returncode == 0, sequential.stdout[-3000:] + sequential.stderr[-3000:]

    array = tmp_path / "array" / "study"  # the same study as a SLURM array, with wandb (offline) as logger too
    fit += ["--trainer.logger", ROOT / "configs" / "logger" / "wandb.yaml"]
    written = run_study(
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--out",
        array,
        *settings,
        "--slurm-array",
        "--sbatch",
        "time=00:30:00",
        *fit,
        cwd=tmp_path,
    )
    assert written.returncode == 0, written.stderr[-3000:]
    script = (array / "study.sbatch").read_text()
    assert subprocess.run(["bash", "-n", array / "study.sbatch"]).returncode == 0
    for line in (
        "#SBATCH --array=0-1",
        "#SBATCH --requeue",
        "#SBATCH --signal=SIGUSR1@120",
        "#SBATCH --time=00:30:00",
        "#SBATCH --job-name=study",
    ):
        assert line in script.splitlines() or any(written.startswith(line + " ") for written in script.splitlines()), (
            line
        )
    task = next(line for line in script.splitlines() if line.startswith("srun ")).removeprefix("srun ")
    assert '--only "$SLURM_ARRAY_TASK_ID"' in task and "slurm.yaml" in task and "--slurm-array" not in task

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT / "tests"),
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "study",
        "SLURM_JOB_ID": "4242",
        "SLURM_ARRAY_JOB_ID": "4240",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "WANDB_SILENT": "true",
        "PLIFNET_REQUEUE_TASK": "1",
        "PLIFNET_REQUEUE_AT": "3",
    }
    cwd = script.split("\ncd ")[1].split("\n")[0]
    for index in (0, 1, 1):  # task 1 twice: requeued (and killed) at step 3 of 6, then run again
        env = dict(os.environ, **slurm, SLURM_ARRAY_TASK_ID=str(index))
        done = subprocess.run(
            ["bash", "-c", task], cwd=cwd, env=env, capture_output=True, text=True, timeout=900, start_new_session=True
        )  # its own process group: the requeue kills the whole group
        folder = array / ["plif_tau2_seed2020", "alif_seed2020"][index]
        if index == 1 and not (folder / "done.json").exists():
            assert done.returncode == -9 and "requeue" in (tmp_path / "scontrol.log").read_text()
            assert list(folder.glob("hpc_ckpt_*.ckpt")), "the requeue saved no checkpoint"
            assert sorted(p.name for p in array.iterdir()) == [
                "alif_seed2020",
                "plif_tau2_seed2020",
                "slurm",
                "study.sbatch",
            ]
        else:
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            assert (folder / "done.json").exists()
    assert not (array / "results.csv").exists()  # tasks write their own folders only
    report = run_study("--out", array, *settings, "--report-only", cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    ours, theirs = table_rows(tmp_path / "study"), table_rows(array)
    assert set(ours) == {"PLIF tau0=2", "alif"}
    for label, row in ours.items():
        assert {k: v for k, v in row.items() if k != "wall time"} == {
            k: v for k, v in theirs[label].items() if k != "wall time"
        }
    assert ours["alif"]["final tau conv1"] not in ("-", "2.000")  # the plug-in's learnable tau, followed

    for folder, neuron, tags in (
        ("plif_tau2_seed2020", "plif", ["neuron=plif", "tau=2", "seed=2020"]),
        ("alif_seed2020", "plifnet_example.ALIF", ["neuron=plifnet_example.ALIF", "seed=2020"]),
    ):
        # the requeued task's first process and the one that finished it: two runs of one name in the group
        run_files = sorted((array / folder / "runs" / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(run_files) == (2 if folder == "alif_seed2020" else 1), run_files
        # the finished one is the run whose history reached the test; which file that is cannot be told by
        # name (both may carry the same second) nor by time (the killed run's wandb service writes on
        # after its process is killed), and the killed one may hold nothing
        run_file = wandb_files.wait_for(
            lambda: run_files, lambda path: any("test/acc" in row for row in wandb_files.history(path))
        )
        (run,) = wandb_files.records(run_file, "run")
        assert (run.run_group, run.display_name, run.job_type, list(run.tags)) == (
            "study",
            folder.removesuffix("_seed2020"),
            neuron,
            tags,
        )
        config = {
            item.key: json.loads(item.value_json)
            for record in wandb_files.records(run_file, "config")
            for item in record.update
        }
        config.update({item.key: json.loads(item.value_json) for item in run.config.update})
        assert config["cli"]["model"]["net"]["init_args"]["neuron"] == neuron
        assert config["cli"]["seed_everything"] == 2020
        keys = set().union(*wandb_files.history(run_file))
        assert {"tau/conv1", "tau/fc2", "firing_rate/conv1", "val/acc", "test/acc"} <= keys


@pytest.mark.multiprocess  # each setting is a process of its own
def test_a_study_of_peer_networks_reads_their_tau(run_study, tiny_digits, tmp_path):
    """SpikingJelly and snnTorch networks as two settings: each trains, and the results page gives the tau
    of each of their layers as the trained weights define it (1/sigmoid(w), 1/(1 - beta))."""
    pytest.importorskip("spikingjelly")
    pytest.importorskip("snntorch")
    out = tmp_path / "results"
    result = run_study(
        "--config",
        ROOT / "configs" / "mnist.yaml",
        "--out",
        out,
        "--setting",
        "sj",
        "--model.net plifnet_example.spikingjelly_net.Net",
        "--setting",
        "snn",
        "--model.net plifnet_example.snntorch_net.Net",
        *quick(tiny_digits, 1, paper_network=False),
        "--trainer.limit_train_batches",
        "4",
        "--model.optimizer.lr",
        "0.01",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = table_rows(out)
    sj, snn = checkpoint(out / "sj_seed2020")["state_dict"], checkpoint(out / "snn_seed2020")["state_dict"]
    for index in (2, 6, 10):
        tau = 1 / torch.sigmoid(sj[f"net.features.{index}.w"]).item()
        assert float(rows["sj"][f"final tau features.{index}"]) == pytest.approx(tau, abs=1e-3)
    for index in (1, 2, 3):
        tau = 1 / (1 - snn[f"net.lif{index}.beta"].clamp(0, 1).item())
        assert float(rows["snn"][f"final tau lif{index}"]) == pytest.approx(tau, abs=1e-3)
    assert float(rows["snn"]["final tau lif1"]) != pytest.approx(2.0, abs=1e-4)  # learnt
