"""A study's results: each setting's history and tau read from its folder, gathered into results.md /
results.csv (protocols A and B, final tau per layer, wall time, what ran, failed or is still running) and
the figures of test accuracy and tau against time."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
from pathlib import Path

from plifnet import plots
from plifnet.files import write_atomically
from plifnet.grid import NEURON, TAU, Setting

SILENT = 1e-4  # a layer's validation firing rate below this is silent (FiringRateMonitor's default warning level)


def newest(folder: Path, pattern: str) -> Path | None:
    found = list(folder.rglob(pattern))
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


@contextlib.contextmanager
def claim(folder: Path):
    """Yield whether this process holds the task's claim: an exclusive lock on ``folder/.claim``, kept while
    the task runs and released by the kernel when this process ends, however it ends. A second runner on the
    same ``--out`` (another shell, a requeued array task) skips a claimed task instead of training it too."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".claim", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True


def claimed_elsewhere(folder: Path) -> bool:
    if not (folder / ".claim").exists():
        return False
    with claim(folder) as mine:
        return not mine


def read_csv(path: Path, numbers: bool = True) -> list[dict]:
    """The rows of a CSV file, their non-empty values as floats (``numbers``) or as the strings they are."""
    with open(path, newline="") as f:
        return [
            {key: float(value) if numbers else value for key, value in row.items() if value not in ("", None)}
            for row in csv.DictReader(f)
        ]


def collect(folder: Path) -> dict:
    """One setting's results from its folder: history.csv (per epoch) and tau.csv (per logged step)."""
    history = read_csv(folder / "history.csv") if (folder / "history.csv").exists() else []
    tau_csv, shapes_csv = newest(folder, "tau.csv"), newest(folder, "tau_shapes.csv")
    tau_rows = read_csv(tau_csv) if tau_csv else []
    test = [row["test/acc"] for row in history if "test/acc" in row]
    last = history[-1] if history else {}
    failed = json.loads((folder / "failed.json").read_text()) if (folder / "failed.json").exists() else None
    return {
        "failure": failed and f"exit code {failed['exit_code']}: {failed.get('last_line', '')}",
        "epochs": len(history),
        "test_acc": test,
        "protocol_a": max(test) if test else None,
        "protocol_b": last.get("test/acc_at_best_val"),
        "seconds": last.get("seconds"),
        "silent": [
            key.split("/", 1)[1] for key, rate in last.items() if key.startswith("firing_rate/") and rate < SILENT
        ],
        "tau_steps": [int(row["step"]) for row in tau_rows],
        "tau": {name: [row[name] for row in tau_rows] for name in (tau_rows[0] if tau_rows else {}) if name != "step"},
        "shapes": read_csv(shapes_csv, numbers=False) if shapes_csv else [],  # per-neuron time constants
        "status": (
            "finished"
            if (folder / "done.json").exists()
            else "failed"
            if (folder / "failed.json").exists()
            else "running"
            if claimed_elsewhere(folder)
            else "stopped"
            if folder.is_dir()
            else "not started"
        ),
    }


def report(out: Path, settings: list[Setting]) -> str:
    results = {setting: collect(out / setting.folder) for setting in settings}
    layers = list(dict.fromkeys(name for result in results.values() for name in result["tau"]))

    def percent(value):
        return "-" if value is None else f"{100 * value:.2f}"

    def final_tau(setting, result, layer):
        if layer in result["tau"]:
            return f"{result['tau'][layer][-1]:.3f}"
        return f"{setting.option(TAU)} (fixed)" if setting.option(NEURON) == "lif" and setting.option(TAU) else "-"

    def duration(seconds):
        return "-" if seconds is None else f"{seconds / 60:.1f} min"

    header = [
        "setting",
        "seed",
        "epochs",
        "A: best test acc (%)",
        "B: test acc at best val (%)",
        *(f"final tau {layer}" for layer in layers),
        "wall time",
    ]
    rows = [
        [
            setting.title,
            str(setting.seed),
            str(result["epochs"]) + ("" if result["status"] == "finished" else f" ({result['status']})"),
            percent(result["protocol_a"]),
            percent(result["protocol_b"]),
            *(final_tau(setting, result, layer) for layer in layers),
            duration(result["seconds"]),
        ]
        for setting, result in results.items()
    ]
    # a layer that never fires makes the accuracy chance, whatever the neuron: said beside the figure (and in
    # the CSV's last column), not only in the run's fit.log
    shown = [
        [
            row[0],
            row[1],
            row[2],
            row[3] + (f" (silent: {', '.join(result['silent'])})" if result["silent"] else ""),
            *row[4:],
        ]
        for row, result in zip(rows, results.values())
    ]
    table = "\n".join("| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *shown])
    header, rows = (
        header + ["silent layers"],
        [row + [" ".join(r["silent"]) or "-"] for row, r in zip(rows, results.values())],
    )

    shapes = shapes_table(results)
    failures = "".join(
        f"- {setting.folder} failed: {result['failure']}\n" for setting, result in results.items() if result["failure"]
    )
    write_atomically(
        out / "results.md",
        lambda path: path.write_text(
            f"# Ablation results\n\nProtocol A: best test accuracy over the epochs run. Protocol B: test accuracy "
            f"at the epoch of the best validation accuracy. tau of PLIF layers at the last step. Wall time: of the "
            f"fit (training and evaluation), summed over resumed runs. (silent: LAYER): a layer that fired at a rate "
            f"below {SILENT:g} on the validation set in the last epoch, so that the network's output says nothing of "
            f"its neuron.\n\n{table}\n\n"
            + (f"{failures}\n" if failures else "")
            + shapes
            + "![test accuracy](test_acc.png)\n\n![tau](tau.png)\n"
        ),
    )

    def write_csv(path):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])

    write_atomically(out / "results.csv", write_csv)
    curves = {f"{s.title}, seed {s.seed}": r["test_acc"] for s, r in results.items()}
    write_atomically(out / "test_acc.png", lambda path: plots.test_accuracy(curves, path))
    trajectories = {f"{s.title}, seed {s.seed}": (r["tau_steps"], r["tau"]) for s, r in results.items() if r["tau"]}
    fixed = {
        f"{s.title}, seed {s.seed}": float(s.option(TAU))
        for s, r in results.items()
        if not r["tau"] and s.option(NEURON) == "lif" and s.option(TAU)
    }
    write_atomically(out / "tau.png", lambda path: plots.tau_per_layer(layers, trajectories, fixed, path))
    return table


def shapes_table(results: dict) -> str:
    """results.md's section on per-neuron time constants (``tau_shapes.csv`` of each setting): the most likely shape,
    the skewness and the median at the start of training and at the end; empty where no setting has them."""

    def moment(row):
        if row is None or row["median"] == "-":  # not recorded, or not finite
            return "-" if row is None else row["most likely"]
        return f"{row['most likely']}, skewness {row['skewness']}, median {row['median']}"

    lines = []
    for setting, result in results.items():
        rows = {(row["time constant"], row["moment"]): row for row in result["shapes"]}
        for column in dict.fromkeys(name for name, _ in rows):
            start, end = rows.get((column, "start")), rows.get((column, "end"))
            lines.append(f"| {setting.title} | {setting.seed} | {column} | {moment(start)} | {moment(end)} |")
    if not lines:
        return ""
    return (
        "## Per-neuron time constants\n\nThe most likely of a normal, log-normal and gamma shape (maximum "
        "likelihood), at the start of training and at the end: each run's tau_shapes.csv and "
        "tau_distributions.png.\n\n| setting | seed | time constant | start | end |\n|---|---|---|---|---|\n"
        + "\n".join(lines)
        + "\n\n"
    )
