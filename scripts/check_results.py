"""Re-run the start of every committed result and compare it with its record.

    python scripts/check_results.py [NAME ...] [--datasets ../shared/datasets] [--keep DIR] [--at REV]

For each run of ``docs/results/runs.yaml`` (or those NAMEd): a git worktree of the commit it ran at, the
same ``cli.py fit`` command that ``ablation.py`` ran for it, stopped after its first ``step`` optimiser
steps (or, for a run recorded per epoch only, its first epoch, or the one its ``check`` names), and the values
logged there compared with
the committed record, to float32 rounding (1e-6 relative; accuracy: the table's two decimals).

The same commit gives the same bits where oneDNN, which runs the convolutions, uses the same kernels: it
picks them by instruction set, so each run names the set it ran with (``onednn_isa``) and the re-run is
limited to it (``ONEDNN_MAX_CPU_ISA``). On a CPU without that set the kernels round differently from the
first step and training amplifies it; there the check says so and allows 2e-3 relative at a step, 1 point
after an epoch: it then confirms the command, the data order and the recipe, not the bits. Float32 runs
also depend on MKL's sgemm (the Linear layers), whose code path follows the CPU's vendor: a float32 record
made on an AMD CPU differs on an Intel one whatever the limit (docs/RESULTS.md). One line per run; the exit status is the number of runs
that differ. A result is only as good as its recipe to reproduce it: this is that recipe, checked.

``--at REV`` re-runs the same commands at another commit (``--at main``) and says how far today's code is
from each record: what differs, by how much.

Each run takes one to a few minutes on 2 cores (numba compiles the kernels once per worktree).
"""

from __future__ import annotations

import argparse
import csv
import math
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "docs" / "results" / "runs.yaml"


def rows_at(table: Path, key: str, value: int, needs: str | None = None) -> dict[str, float]:
    """The row of a CSV file whose ``key`` column is ``value`` (``step`` 100, ``epoch`` 0), as floats; the
    first such row with a value in column ``needs`` (metrics.csv has a row per logging call)."""
    with open(table) as file:
        for row in csv.DictReader(file):
            if (
                row.get(key) not in (None, "")
                and int(float(row[key])) == value
                and row.get(needs or key) not in (None, "")
            ):
                return {name: float(cell) for name, cell in row.items() if cell not in ("", None) and name != key}
    raise SystemExit(f"error: {table} has no row with {key} = {value}" + (f" and a {needs}" if needs else ""))


def logged_loss(metrics: Path, step: int) -> dict[str, float]:
    """The training loss that Lightning logged at optimiser step ``step`` (metrics.csv counts from 0)."""
    row = rows_at(metrics, "step", step - 1, needs="train/loss_step")
    return {"train/loss_step": row["train/loss_step"]}


# the /proc/cpuinfo flags that each of oneDNN's instruction-set limits needs
ISA_FLAGS = {
    "AVX2": {"avx2"},
    "AVX512_CORE": {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
    "AVX512_CORE_BF16": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"},
    "AVX512_CORE_AMX": {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16", "amx_bf16", "amx_tile"},
}


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def tolerance(run: dict, exact: bool) -> float:
    """How far the re-run may be from the record, relative (accuracy: in points)."""
    if "step" in run["check"]:
        return 1e-6 if exact else 2e-3
    return 0.005 if exact else 1.0  # the record's table has two decimals


# the model options of a record's command that moved under the network when the LightningModule began to take it
NETWORK_OPTIONS = {"neuron": "net.neuron", "time_steps": "net.time_steps", "variant": "net.variant"}
NEURON_OPTIONS = ("tau", "v_threshold", "v_reset", "detach_reset", "decay_input", "per_channel", "surrogate", "backend")


def spelled_for(tree: Path, args: list[str]) -> list[str]:
    """A record's ``plifnet fit`` arguments as the code of ``tree`` spells them: at its own commit as they are;
    where ``--at`` runs them on code that takes the network as ``model.net``, ``--model.neuron`` is
    ``--model.net.neuron`` and ``--model.tau`` is ``--model.net.options.tau``."""
    if "def paper(" not in (tree / "plifnet" / "models.py").read_text():
        return args
    moved = NETWORK_OPTIONS | {name: f"net.options.{name}" for name in NEURON_OPTIONS}
    return [f"--model.{moved[arg[8:]]}" if arg.startswith("--model.") and arg[8:] in moved else arg for arg in args]


def rerun(name: str, run: dict, commit: str, datasets: Path, scratch: Path) -> tuple[dict, dict]:
    """(recorded, re-run) values of one run, re-run at ``commit``."""
    tree, out = scratch / f"tree-{commit[:7]}", scratch / f"{name.replace('/', '-')}-{commit[:7]}"
    if not tree.exists():
        subprocess.run(
            ["git", "-C", ROOT, "worktree", "add", "--detach", tree, commit], check=True, capture_output=True
        )
    shutil.rmtree(out, ignore_errors=True)  # a run left by an earlier check would be read instead
    check = run["check"]
    epoch = check.get("epoch", 1)  # a run whose output is silent after epoch 1 is compared after a later one
    stop = ["--trainer.max_steps", str(check["step"])] if "step" in check else ["--trainer.max_epochs", str(epoch)]
    command = [
        sys.executable,
        "cli.py",
        "fit",
        *spelled_for(tree, shlex.split(run["fit"].replace("DATASETS", str(datasets)))),
        "--trainer.default_root_dir",
        str(out),
        *stop,
    ]
    with open(out.with_suffix(".log"), "w") as log:
        code = subprocess.call(
            command,
            cwd=tree,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                "PYTHONPATH": str(tree),
                "PATH": "/usr/bin:/bin",
                "HOME": str(Path.home()),
                "WANDB_MODE": "offline",
                "ONEDNN_MAX_CPU_ISA": run["onednn_isa"],
            },
        )
    if code != 0:
        raise SystemExit(f"error: {name}: the re-run failed (exit {code}); its log is {log.name}")
    record = ROOT / "docs" / "results" / name
    if "step" in check:
        recorded, again = {}, {}
        if "tau" in check["compare"]:
            recorded |= rows_at(record / "tau.csv", "step", check["step"])
            again |= rows_at(next(out.rglob("tau.csv")), "step", check["step"])
        if "loss" in check["compare"]:
            recorded |= logged_loss(record / "loss.csv", check["step"])
            again |= logged_loss(next(out.rglob("metrics.csv")), check["step"])
    else:  # the test accuracy after that epoch, as the record's table gives it (percent, two decimals)
        recorded = {"test/acc": check["test_acc"]}
        again = {
            "test/acc": round(
                100 * rows_at(next(out.rglob("metrics.csv")), "epoch", epoch - 1, needs="test/acc")["test/acc"], 2
            )
        }
    return recorded, {key: again.get(key, math.nan) for key in recorded}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="runs of docs/results/runs.yaml (default: all)")
    parser.add_argument("--datasets", type=Path, default=ROOT.parent / "shared" / "datasets")
    parser.add_argument("--at", help="re-run at this commit instead of each run's own (e.g. main)")
    parser.add_argument(
        "--keep", type=Path, help="a folder for the worktrees, runs and logs (default: a temporary one, removed)"
    )
    args = parser.parse_args(argv)
    runs = yaml.safe_load(MANIFEST.read_text())
    unknown = sorted(set(args.names) - set(runs))
    if unknown:
        raise SystemExit(f"error: no run {', '.join(unknown)} in {MANIFEST}; known: {', '.join(runs)}")
    flags = cpu_flags()
    with tempfile.TemporaryDirectory() as temporary:
        scratch = (args.keep or Path(temporary)).resolve()
        scratch.mkdir(parents=True, exist_ok=True)
        differ = 0
        try:
            for name in args.names or runs:
                run = runs[name]
                commit = (
                    run["commit"]
                    if args.at is None
                    else subprocess.run(
                        ["git", "-C", ROOT, "rev-parse", args.at], check=True, capture_output=True, text=True
                    ).stdout.strip()
                )
                recorded, again = rerun(name, run, commit, args.datasets.resolve(), scratch)
                by_step = "step" in run["check"]
                worst = max(
                    math.inf if math.isnan(again[k]) else abs(again[k] - v) / (abs(v) if by_step else 1)
                    for k, v in recorded.items()
                )  # a value the re-run did not log agrees with nothing
                exact = ISA_FLAGS[run["onednn_isa"]] <= flags
                allowed = tolerance(run, exact)
                agrees = worst <= allowed
                differ += not agrees
                where = f"step {run['check']['step']}" if by_step else f"epoch {run['check'].get('epoch', 1)}"
                recorded_at = "" if commit == run["commit"] else f" (recorded at {run['commit'][:7]})"
                kernels = "its kernels" if exact else f"other kernels (this CPU lacks {run['onednn_isa']})"
                print(
                    f"{'agrees ' if agrees else 'DIFFERS'} {name} at {commit[:7]}{recorded_at}, {where}, with {kernels}: "
                    f"{'relative' if by_step else 'points'} difference {worst:.2g} (allowed {allowed:g}); "
                    + ", ".join(f"{k} {v:g} (re-run {again[k]:g})" for k, v in recorded.items()),
                    flush=True,
                )
        finally:
            if args.keep is None:
                for tree in scratch.glob("tree-*"):
                    subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", tree], capture_output=True)
    return differ


if __name__ == "__main__":
    sys.exit(main())
