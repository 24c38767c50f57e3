"""Ablation runner: train a grid of neuron settings on one dataset config, then write a results folder.

    python ablation.py --config configs/mnist.yaml --out results/mnist -- --data.root ../shared/datasets \\
        --trainer.max_epochs 3 --trainer.limit_train_batches 200

Every setting (default: PLIF tau0 in {2, 16}, LIF tau in {2, 16}; ``--grid plif:2 lif:16 ...``) and
seed is one ``cli.py fit`` process with ``--model.neuron``, ``--model.tau`` and ``--seed_everything``
set, everything after ``--`` passed on unchanged (budget, data root, logger, a DDP trainer config via a
second ``--config``). Each writes into its own folder ``OUT/<neuron>_tau<tau>_seed<seed>/``: the
loggers' folders (``--trainer.default_root_dir``), ``fit.log`` and ``history.csv``
(:class:`plifnet.callbacks.RunHistory`). A setting that finished (``done.json``) is not run again; one
that was interrupted resumes from its newest checkpoint. Then ``OUT`` gets:

- ``results.md`` and ``results.csv``: per setting, protocol A (best test accuracy over epochs),
  protocol B (test accuracy at the best validation epoch), the final tau of every layer, epochs and
  wall time of the fit;
- ``test_acc.png``: test accuracy against epoch, all settings on one plot;
- ``tau.png``: tau against step, one panel per layer, one curve per setting.

``python ablation.py --out OUT --report-only`` rewrites these from the folders already there.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from plifnet import plots
from plifnet.files import write_atomically

CLI = Path(__file__).resolve().parent / "cli.py"
GRID = ("plif:2", "plif:16", "lif:2", "lif:16")


@dataclass(frozen=True)
class Setting:
    neuron: str
    tau: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.neuron}_tau{self.tau:g}_seed{self.seed}"

    @property
    def label(self) -> str:
        return f"{self.neuron.upper()} tau{'0' if self.neuron == 'plif' else ''}={self.tau:g}"


def parse_grid(grid: list[str], seeds: list[int]) -> list[Setting]:
    settings = []
    for item in grid:
        neuron, _, tau = item.partition(":")
        if neuron not in ("plif", "lif") or not tau:
            raise SystemExit(f"error: grid entry {item!r} is not NEURON:TAU with NEURON plif or lif, e.g. plif:2")
        try:
            settings += [Setting(neuron, float(tau), seed) for seed in seeds]
        except ValueError:
            raise SystemExit(f"error: grid entry {item!r}: tau {tau!r} is not a number") from None
    return settings


def fit_command(setting: Setting, configs: list[str], passed_on: list[str], folder: Path) -> list[str]:
    command = [sys.executable, str(CLI), "fit"]
    for config in configs:
        command += ["--config", str(Path(config).resolve())]
    return command + passed_on + [
        "--model.neuron", setting.neuron, "--model.tau", str(setting.tau), "--seed_everything", str(setting.seed),
        "--trainer.default_root_dir", str(folder),
        "--trainer.callbacks+=plifnet.callbacks.RunHistory", "--trainer.callbacks.path", str(folder / "history.csv"),
    ]


def newest(folder: Path, pattern: str) -> Path | None:
    found = list(folder.rglob(pattern))
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def run(setting: Setting, configs: list[str], passed_on: list[str], out: Path) -> None:
    """Run one setting to the end, resuming it if an earlier run was interrupted."""
    folder = out / setting.name
    if (folder / "done.json").exists():
        print(f"{setting.name}: finished earlier, not run again", flush=True)
        return
    command = fit_command(setting, configs, passed_on, folder)
    recorded = folder / "command.json"
    if recorded.exists() and json.loads(recorded.read_text()) != command[1:]:
        raise SystemExit(
            f"error: {folder} holds an unfinished run of a different command (see {recorded}); "
            f"rerun with the same options, or use another --out folder"
        )
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(recorded, lambda path: path.write_text(json.dumps(command[1:], indent=1)))
    resume = any(not path.name.startswith(".") for path in folder.rglob("*.ckpt"))  # hidden: a killed write's
    if resume:  # cli.py takes the newest readable checkpoint under the setting's folder, naming broken ones
        command += ["--ckpt_path", "last"]
    print(f"{setting.name}: {'resuming' if resume else 'starting'} (log: {folder / 'fit.log'})", flush=True)
    with open(folder / "fit.log", "a") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
    if code != 0:
        tail = (folder / "fit.log").read_text(errors="replace").splitlines()[-15:]
        raise SystemExit("\n".join(tail) + f"\nerror: {setting.name} failed (exit code {code}); "
                         f"its log is {folder / 'fit.log'}. Run the same command again to resume it.")
    write_atomically(folder / "done.json", lambda path: path.write_text(json.dumps({"exit_code": code})))


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{key: float(value) for key, value in row.items() if value not in ("", None)} for row in csv.DictReader(f)]


def collect(folder: Path) -> dict:
    """One setting's results from its folder: history.csv (per epoch) and tau.csv (per logged step)."""
    history = read_csv(folder / "history.csv") if (folder / "history.csv").exists() else []
    tau_csv = newest(folder, "tau.csv")
    tau_rows = read_csv(tau_csv) if tau_csv else []
    test = [row["test/acc"] for row in history if "test/acc" in row]
    last = history[-1] if history else {}
    return {
        "epochs": len(history),
        "test_acc": test,
        "protocol_a": max(test) if test else None,
        "protocol_b": last.get("test/acc_at_best_val"),
        "seconds": last.get("seconds"),
        "tau_steps": [int(row["step"]) for row in tau_rows],
        "tau": {name: [row[name] for row in tau_rows] for name in (tau_rows[0] if tau_rows else {}) if name != "step"},
        "finished": (folder / "done.json").exists(),
    }


def report(out: Path, settings: list[Setting]) -> str:
    results = {setting: collect(out / setting.name) for setting in settings}
    layers = list(dict.fromkeys(name for result in results.values() for name in result["tau"]))

    def percent(value):
        return "-" if value is None else f"{100 * value:.2f}"

    def final_tau(setting, result, layer):
        if setting.neuron == "lif":
            return f"{setting.tau:g} (fixed)"
        return f"{result['tau'][layer][-1]:.3f}" if layer in result["tau"] else "-"

    def duration(seconds):
        return "-" if seconds is None else f"{seconds / 60:.1f} min"

    header = ["setting", "seed", "epochs", "A: best test acc (%)", "B: test acc at best val (%)",
              *(f"final tau {layer}" for layer in layers), "wall time"]
    rows = [[setting.label, str(setting.seed), str(result["epochs"]) + ("" if result["finished"] else " (unfinished)"),
             percent(result["protocol_a"]), percent(result["protocol_b"]),
             *(final_tau(setting, result, layer) for layer in layers), duration(result["seconds"])]
            for setting, result in results.items()]
    table = "\n".join("| " + " | ".join(row) + " |" for row in [header, ["---"] * len(header), *rows])

    write_atomically(out / "results.md", lambda path: path.write_text(
        f"# Ablation results\n\nProtocol A: best test accuracy over the epochs run. Protocol B: test accuracy "
        f"at the epoch of the best validation accuracy. tau of PLIF layers at the last step. Wall time: of the "
        f"fit (training and evaluation), summed over resumed runs.\n\n{table}\n\n"
        f"![test accuracy](test_acc.png)\n\n![tau](tau.png)\n"))

    def write_csv(path):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerows([header, *rows])

    write_atomically(out / "results.csv", write_csv)
    curves = {f"{s.label}, seed {s.seed}": r["test_acc"] for s, r in results.items()}
    write_atomically(out / "test_acc.png", lambda path: plots.test_accuracy(curves, path))
    trajectories = {f"{s.label}, seed {s.seed}": (r["tau_steps"], r["tau"]) for s, r in results.items() if s.neuron == "plif"}
    fixed = {f"{s.label}, seed {s.seed}": s.tau for s in results if s.neuron == "lif"}
    write_atomically(out / "tau.png", lambda path: plots.tau_per_layer(layers, trajectories, fixed, path))
    return table


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, passed_on = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", action="append", default=[], help="a cli.py config; repeat to add e.g. configs/trainer/ddp.yaml")
    parser.add_argument("--out", required=True, type=Path, help="the results folder")
    parser.add_argument("--grid", nargs="+", default=list(GRID), help="NEURON:TAU settings (default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020], help="one run per seed per setting")
    parser.add_argument("--report-only", action="store_true", help="rewrite the results from finished folders")
    args = parser.parse_args(ours)
    settings = parse_grid(args.grid, args.seeds)
    if not args.report_only:
        if not args.config:
            parser.error("--config is required (a dataset config such as configs/mnist.yaml)")
        for setting in settings:
            run(setting, args.config, passed_on, args.out)
    print(report(args.out, settings))
    print(f"results: {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
