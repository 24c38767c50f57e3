"""Checkpoints as they arrive in real runs: killed writes, unwritable folders, broken and foreign files,
URLs (a loopback HTTP server), and ``--ckpt_path last`` choosing among them."""

import functools
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import lightning as L
import pytest
import torch

from conftest import ROOT, paper_net, record_network
from plifnet.models import SpikingNet
from plifnet.module import SpikingClassifier

QUICK = [
    "--config",
    ROOT / "configs" / "mnist.yaml",
    "--data.num_workers",
    "0",
    "--data.batch_size",
    "4",
    "--model.net.time_steps",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.limit_val_batches",
    "0",
    "--trainer.enable_model_summary",
    "false",
]


def cli(*args, cwd, env=None, wait=True, prefix=()):
    command = [*prefix, sys.executable, str(ROOT / "cli.py"), *map(str, args)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT / "tests"), **(env or {}))
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def save(model: SpikingClassifier, path: Path, weights_only: bool = False) -> Path:
    trainer = L.Trainer(logger=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path, weights_only=weights_only)
    return path


@pytest.mark.multiprocess
def test_a_checkpoint_write_killed_half_way_leaves_the_previous_one(tmp_path, tiny_digits):
    """SIGKILL from outside while last.ckpt of epoch 1 is being written, with $TMPDIR on another
    filesystem (tmpfs), where Lightning's default "moves" its temporary file by copying it onto
    last.ckpt. The epoch-0 last.ckpt must survive whole, and `--ckpt_path last` resume from it."""
    tmpdir = Path("/dev/shm")
    if not tmpdir.is_dir() or tmpdir.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a $TMPDIR on another filesystem than the run folder (/dev/shm)")
    run = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints"
    args = [*QUICK, "--data.root", tiny_digits, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "8"]
    fit = cli("fit", *args, cwd=tmp_path, env={"TMPDIR": str(tmpdir)}, wait=False)
    good = None
    while fit.poll() is None:
        last = run / "last.ckpt"
        if good is None and last.exists() and zipfile.is_zipfile(last):  # epoch 0's, complete
            good = (last.stat().st_size, last.stat().st_mtime_ns, last.read_bytes())
        elif good is not None:
            writing = [p for p in run.glob(".last.*") if p.stat().st_size > 0]
            changed = last.exists() and (last.stat().st_size, last.stat().st_mtime_ns) != good[:2]
            if writing or changed:
                fit.send_signal(signal.SIGKILL)
                break
        time.sleep(0.0005)
    fit.communicate()
    assert fit.returncode == -9, "the run ended before the second write of last.ckpt was caught"
    assert (run / "last.ckpt").read_bytes() == good[2]
    assert torch.load(run / "last.ckpt", weights_only=True)["global_step"] == 8

    resumed = cli("fit", *args, "--ckpt_path", "last", cwd=tmp_path, env={"TMPDIR": str(tmpdir)})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from runs/lightning_logs/version_0/checkpoints/last.ckpt" in resumed.stderr
    assert not list(run.glob(".last.*")), "the killed write's temporary file was not cleaned up"
    final = tmp_path / "runs" / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(final, weights_only=True)["global_step"] == 16


def test_ckpt_path_last_skips_unreadable_checkpoints_and_refuses_when_there_is_none(run_cli, tmp_path, tiny_digits):
    empty = run_cli(
        "fit", *QUICK, "--data.root", tiny_digits, "--trainer.max_epochs", "1", "--ckpt_path", "last", cwd=tmp_path
    )
    assert empty.returncode != 0
    assert "--ckpt_path last: no readable checkpoint in runs/lightning_logs/*/checkpoints/" in empty.stderr
    assert not (tmp_path / "runs" / "lightning_logs" / "version_0").exists()  # nothing was trained

    folder = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints"
    folder.mkdir(parents=True)
    step = save(SpikingClassifier(SpikingNet.paper("mnist", time_steps=1)), folder / "step0000004.ckpt")
    (folder / "last.ckpt").write_bytes(step.read_bytes()[:100_000])  # newer, and truncated
    (folder / "epoch005.ckpt").write_bytes(b"")  # newer, and empty
    best = save(
        SpikingClassifier(SpikingNet.paper("mnist", time_steps=1)),
        folder / "epoch006-acc0.5000.ckpt",
        weights_only=True,
    )
    os.utime(folder / "last.ckpt", (time.time() + 5,) * 2)
    os.utime(folder / "epoch005.ckpt", (time.time() + 10,) * 2)
    os.utime(best, (time.time() + 15,) * 2)  # newest, readable, and no state to resume: passed over without a word
    ended = subprocess.Popen(["true"])  # a process id that no longer runs: the writer of the files it left
    ended.wait()
    left = [folder.parent / f".tau.{ended.pid}.tmp.csv", folder / f".last.{ended.pid}.tmp.ckpt"]
    writing = folder / f".step0000009.{os.getpid()}.tmp.ckpt"  # a write in progress (this process)
    for path in [*left, writing]:
        path.write_bytes(b"partial")
    resumed = run_cli(
        "fit", *QUICK, "--data.root", tiny_digits, "--trainer.max_epochs", "1", "--ckpt_path", "last", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (
        f"skipping an unreadable checkpoint: checkpoint {Path('runs/lightning_logs/version_0/checkpoints/epoch005.ckpt')} is truncated"
        in resumed.stderr
    )
    assert "checkpoints/last.ckpt is truncated" in resumed.stderr
    assert "resuming from runs/lightning_logs/version_0/checkpoints/step0000004.ckpt" in resumed.stderr
    assert "epoch006" not in resumed.stderr
    assert not any(path.exists() for path in left) and writing.exists()


def without_file_permission_override():
    """Run a child so that file permissions bind it: as root, without CAP_DAC_OVERRIDE (setpriv)."""
    if os.geteuid() != 0:
        return ()
    if not shutil.which("setpriv"):
        pytest.skip("running as root, and setpriv (util-linux) is missing to drop CAP_DAC_OVERRIDE")
    return ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")


def test_a_save_that_fails_stops_the_run_with_the_path_and_the_reason(tmp_path, tiny_digits):
    """The checkpoint folder turns read-only before epoch 1, whose end only last.ckpt is due at."""
    result = cli(
        "fit",
        *QUICK,
        "--data.root",
        tiny_digits,
        "--trainer.max_epochs",
        "2",
        "--trainer.callbacks+=kill_probe.ReadOnlyCheckpoints",
        cwd=tmp_path,
        env={"PLIFNET_READ_ONLY_AT": "1"},
        prefix=without_file_permission_override(),
    )
    folder = tmp_path / "runs" / "lightning_logs" / "version_0" / "checkpoints"
    folder.chmod(0o755)
    assert result.returncode != 0, result.stderr[-2000:]
    assert (
        result.stderr.strip().splitlines()[-1]
        == (
            f"error: could not save checkpoint {Path('runs/lightning_logs/version_0/checkpoints/last.ckpt')}: Permission "
            f"denied. The previous file there (if any) is unchanged. Fix: free disk space or make "
            f"{Path('runs/lightning_logs/version_0/checkpoints')} writable, or write the run elsewhere with "
            f"--trainer.default_root_dir DIR"
        )
        and "Traceback" not in result.stderr
    )
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 2  # epoch 0's, unchanged


@pytest.mark.parametrize("file", ["checkpoints/last.ckpt", "tau.csv"])
def test_a_full_disk_is_one_line_naming_the_file_and_the_earlier_files_stay(file, run_cli, tmp_path, tiny_digits):
    """From epoch 1 on, a write of the file fails with the kernel's ENOSPC (kill_probe.FullDiskAt): the
    checkpoint due at epoch 1's end, or tau.csv at the end of the fit."""
    result = run_cli(
        "fit",
        *QUICK,
        "--data.root",
        tiny_digits,
        "--trainer.max_epochs",
        "2",
        "--trainer.callbacks+=kill_probe.FullDiskAt",
        cwd=tmp_path,
        env={"PLIFNET_FULL_AT": "1", "PLIFNET_FULL_FILE": file},
    )
    run = Path("runs") / "lightning_logs" / "version_0"
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    if file == "tau.csv":
        expected = (
            f"error: could not write {run / file}: No space left on device. The files written before are "
            f"intact; free disk space or make the folder writable, or write elsewhere with "
            f"--trainer.default_root_dir DIR"
        )
    else:
        expected = (
            f"error: could not save checkpoint {run / file}: No space left on device. The previous file there "
            f"(if any) is unchanged. Fix: free disk space or make {run / 'checkpoints'} writable, or write the "
            f"run elsewhere with --trainer.default_root_dir DIR"
        )
    assert result.stderr.strip().splitlines()[-1] == expected
    saved = torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)  # the one before: whole
    assert saved["global_step"] == (2 if file.endswith(".ckpt") else 4)
    assert not [path.name for path in (tmp_path / run).rglob(".*.tmp*")]  # no temporary file is left behind


class Server:
    """A loopback HTTP server for files in a folder."""

    def __init__(self, folder: Path):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_checkpoint_urls_run_no_code_and_are_cached_by_the_whole_url(run_cli, tmp_path, tiny_digits):
    served = tmp_path / "served"
    for name in ("evil", "a", "b"):
        (served / name).mkdir(parents=True)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save(
        {"pytorch-lightning_version": "2.6.0", "state_dict": {}, "payload": Payload()}, served / "evil" / "model.ckpt"
    )
    record_network(
        save(SpikingClassifier(SpikingNet.paper("mnist", time_steps=1)), served / "a" / "model.ckpt"),
        paper_net("mnist", 1),
    )
    cifar = save(SpikingClassifier(SpikingNet.paper("cifar10", time_steps=1)), served / "b" / "model.ckpt")
    record_network(cifar, paper_net("cifar10", 1))  # same file name, other network
    server = Server(served)
    env = {"TORCH_HOME": str(tmp_path / "torch_home")}
    try:
        evil = run_cli(
            "test",
            *QUICK,
            "--data.root",
            tiny_digits,
            "--ckpt_path",
            f"{server.url}/evil/model.ckpt",
            cwd=tmp_path,
            env=env,
        )
        assert evil.returncode != 0 and not (tmp_path / "pwned").exists()
        assert "would run code when loaded" in evil.stderr and "weights_only=True" in evil.stderr

        first = run_cli(
            "test",
            *QUICK,
            "--data.root",
            tiny_digits,
            "--ckpt_path",
            f"{server.url}/a/model.ckpt",
            cwd=tmp_path,
            env=env,
        )
        assert first.returncode == 0, first.stderr[-2000:]
        second = run_cli(
            "test",
            *QUICK,
            "--data.root",
            tiny_digits,
            "--ckpt_path",
            f"{server.url}/b/model.ckpt",
            cwd=tmp_path,
            env=env,
        )
        # the second URL's own file (a CIFAR-10 network), not the first one's cached under the same name
        assert second.returncode != 0
        assert (
            "was trained with model.net.arch 'cifar10', and a --config file of this run sets 'mnist'" in second.stderr
        )

        # in a script: load_from_checkpoint of a URL reads with weights_only too
        os.environ["TORCH_HOME"] = env["TORCH_HOME"]
        with pytest.raises(Exception, match="would run code|Weights only load failed"):
            SpikingClassifier.load_from_checkpoint(f"{server.url}/evil/model.ckpt")
        assert not (tmp_path / "pwned").exists()
        assert SpikingClassifier.load_from_checkpoint(f"{server.url}/b/model.ckpt").net.arch_name == "cifar10"
    finally:
        os.environ.pop("TORCH_HOME", None)
        server.close()


@pytest.mark.parametrize("kind", ["zip, not a checkpoint", "torch.save dict, not Lightning's", "code"])
def test_files_that_are_not_checkpoints_get_one_line_naming_them(kind, run_cli, tmp_path, tiny_digits):
    path = tmp_path / "model.ckpt"
    if kind.startswith("zip"):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
        expected = f"error: checkpoint {path} is a zip archive but not a PyTorch checkpoint"
    elif kind.startswith("torch.save"):
        torch.save({"weights": torch.ones(3)}, path)
        expected = f"error: checkpoint {path} is a PyTorch file but not a Lightning checkpoint (it holds ['weights']"
    else:
        torch.save({"state_dict": {}, "pytorch-lightning_version": "2", "x": Path("/")}, path)
        expected = f"error: checkpoint {path} holds Python objects that would run code when loaded"
    result = run_cli("test", *QUICK, "--data.root", tiny_digits, "--ckpt_path", path, cwd=tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.multiprocess
def test_slurm_requeue_saves_atomically_and_the_requeued_job_ends_like_an_uninterrupted_one(tmp_path, tiny_digits):
    """configs/trainer/slurm.yaml under a SLURM-like environment: SIGUSR1 at step 5 makes Lightning save
    hpc_ckpt_1.ckpt (through plifnet's writer) and call `scontrol requeue <job>` (a stand-in here);
    the job is killed, run again as SLURM would, resumes from it by itself and ends with the weights of
    a run that was never interrupted."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_NTASKS": "1",
        "SLURM_JOB_NAME": "plifnet",
        "SLURM_JOB_ID": "4242",
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "PLIFNET_KILL_AT": "5",
    }
    args = [
        *QUICK,
        "--data.root",
        tiny_digits,
        "--config",
        ROOT / "configs" / "trainer" / "slurm.yaml",
        "--trainer.max_epochs",
        "2",
        "--trainer.limit_train_batches",
        "6",
        "--model.optimizer.lr",
        "0.01",
    ]
    for name in ("whole", "requeued"):
        (tmp_path / name).mkdir()
    whole = cli("fit", *args, cwd=tmp_path / "whole", env=env)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = cli("fit", *args, "--trainer.callbacks+=kill_probe.RequeueAtStep", cwd=tmp_path / "requeued", env=env)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    hpc = tmp_path / "requeued" / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, weights_only=True)["global_step"] == 5
    assert not [p for p in (tmp_path / "requeued").iterdir() if p.name.startswith(".hpc")]  # no temporary left
    again = cli("fit", *args, cwd=tmp_path / "requeued", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    final = [
        torch.load(
            tmp_path / name / "runs" / "lightning_logs" / version / "checkpoints" / "last.ckpt", weights_only=True
        )
        for name, version in (("whole", "version_0"), ("requeued", "version_1"))
    ]
    assert final[0]["global_step"] == final[1]["global_step"] == 12
    for key, value in final[0]["state_dict"].items():
        torch.testing.assert_close(final[1]["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_async_checkpoints_go_through_the_atomic_writer_and_resume(run_cli, tmp_path, tiny_digits):
    from plifnet import cli as plifnet_cli
    from plifnet.checkpoints import AtomicCheckpointIO

    config = ROOT / "configs" / "trainer" / "async_checkpoint.yaml"
    done = plifnet_cli.main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "mnist.yaml"),
            "--config",
            str(config),
            "--data.root",
            str(tiny_digits),
            "--trainer.max_epochs",
            "0",
            "--data.num_workers",
            "0",
            "--trainer.default_root_dir",
            str(tmp_path / "in_process"),
        ]
    )
    assert type(done.trainer.strategy.checkpoint_io.checkpoint_io) is AtomicCheckpointIO

    first = run_cli(
        "fit", *QUICK, "--data.root", tiny_digits, "--config", config, "--trainer.max_epochs", "1", cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = run_cli(
        "fit",
        *QUICK,
        "--data.root",
        tiny_digits,
        "--config",
        config,
        "--trainer.max_epochs",
        "2",
        "--ckpt_path",
        "last",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from runs/lightning_logs/version_0/checkpoints/last.ckpt" in resumed.stderr
    last = tmp_path / "runs" / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 4
