"""Studies: train any grid of settings on one dataset config, on this machine one setting after another
or as one SLURM array task per setting, then gather the results into one folder.

    plifnet study --config mnist --out results/mnist -- --data.root ../shared/datasets \\
        --trainer.max_epochs 3 --trainer.limit_train_batches 200
    plifnet study ... --slurm-array [--submit] [--sbatch gres=gpu:1 --sbatch time=24:00:00]
    plifnet study --out results/mnist --report-only      # with the same settings options

(``python ablation.py ARGS`` in a clone.)

A setting is a name and a set of ``plifnet fit`` overrides. ``--grid plif:2 lif:16`` is the shorthand for the
paper's neuron x tau settings (default: PLIF tau0 in {2, 16}, LIF tau in {2, 16});
``--setting NAME "OVERRIDES"`` adds any other (``--setting alif "--model.net.neuron alif --model.net.options.tau 2"``);
``--settings study.yaml`` reads named settings and/or a product of axes (``study.yaml`` in the README).
Every setting and seed (``--seeds``) is one task: one ``plifnet fit`` process with its overrides and
``--seed_everything``, everything after ``--`` passed on unchanged (budget, data root, logger, a DDP or
SLURM trainer config via a second ``--config``), writing only into its own folder
``OUT/<name>_seed<seed>/``: the loggers' folders (``--trainer.default_root_dir``), ``fit.log``,
``history.csv`` (:class:`plifnet.callbacks.RunHistory`), and ``done.json`` or ``failed.json``. A task that
finished is not run again; one that was interrupted resumes from its newest checkpoint.

``--only INDEX`` (or ``SLURM_ARRAY_TASK_ID`` in an array job) runs task INDEX alone; ``--slurm-array``
writes ``OUT/study.sbatch``, an array job of one task per setting and seed that runs exactly that, with
SIGUSR1 before the time limit for Lightning's checkpoint-and-requeue (``configs/trainer/slurm.yaml``).
With wandb as a logger, every run of the study gets ``group`` = the study (``--study``, default: the
name of OUT), ``name`` = the setting, ``job_type`` = its neuron and tags neuron, tau and seed.

The report (after a sequential run, or ``--report-only``) writes to OUT:

- ``results.md`` and ``results.csv``: per setting, protocol A (best test accuracy over epochs),
  protocol B (test accuracy at the best validation epoch), the final tau of every layer, epochs and
  wall time of the fit, and whether a task is running (in another process), stopped, failed or not started;
- ``test_acc.png``: test accuracy against epoch, all settings on one plot;
- ``tau.png``: tau against step, one panel per layer, one curve per setting.
"""

from __future__ import annotations

import argparse
import collections
import difflib
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from plifnet import CONFIGS
from plifnet.files import WriteFailed, write_atomically, write_failure
from plifnet.grid import GRID, NEURON, TAU, Setting, parse_grid, parse_settings, read_settings_file
from plifnet.report import claim, claimed_elsewhere, report


def fit_command(setting: Setting, configs: list[str], passed_on: list[str], folder: Path) -> list[str]:
    command = [sys.executable, "-m", "plifnet", "fit"]
    for config in configs:  # a file, or the name of a config shipped with plifnet
        command += ["--config", str(Path(config).resolve()) if Path(config).is_file() else config]
    return (
        command
        + passed_on
        + list(setting.overrides)
        + [
            "--seed_everything",
            str(setting.seed),
            "--trainer.default_root_dir",
            str(folder),
            "--trainer.callbacks+=plifnet.callbacks.RunHistory",
            "--trainer.callbacks.path",
            str(folder / "history.csv"),
        ]
    )


def wandb_environment(setting: Setting, study: str) -> dict[str, str]:
    """What wandb reads when the logger leaves them unset: the study as the group, the setting as the
    run's name, its neuron as the job type, and tags for neuron, tau and seed."""
    neuron, tau = setting.option(NEURON), setting.option(TAU)
    tags = [tag for tag in (neuron and f"neuron={neuron}", tau and f"tau={tau}", f"seed={setting.seed}") if tag]
    return {
        "WANDB_RUN_GROUP": study,
        "WANDB_NAME": setting.name,
        "WANDB_JOB_TYPE": neuron or setting.name,
        "WANDB_TAGS": ",".join(tags),
    }


def last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()] if path.exists() else []
    return lines[-1].strip() if lines else "(empty log)"


def run(setting: Setting, configs: list[str], passed_on: list[str], out: Path, study: str, rerun: bool = False) -> str:
    """Run one task to the end, resuming it if an earlier run was interrupted. Returns ``done``, ``skipped``
    (finished earlier, or running in another process) or ``failed`` (recorded in its ``failed.json``).
    A task finished by another command (another budget after ``--``, another config) is refused, since its
    results are not this command's, or with ``rerun`` run again, the old run moved to ``OUT/.replaced/``."""
    folder = out / setting.folder
    command = fit_command(setting, configs, passed_on, folder)
    recorded = folder / "command.json"
    if (folder / "done.json").exists():
        then = json.loads(recorded.read_text()) if recorded.exists() else None
        if then is None or then == command[1:]:
            print(f"{setting.folder}: finished earlier, not run again", flush=True)
            return "skipped"
        if not rerun:
            raise SystemExit(
                f"error: {setting.folder} finished with another command ({changes(then, command[1:])}; "
                f"see {recorded}), so its results are not this command's; add --rerun to train it again "
                f"(the old run is kept in {out / '.replaced'}), or use another --out"
            )
        index = 0
        while (out / ".replaced" / f"{setting.folder}.{index}").exists():
            index += 1
        replaced = out / ".replaced" / f"{setting.folder}.{index}"
        replaced.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(replaced)
        print(
            f"{setting.folder}: finished with another command; that run moved to {replaced}, training again", flush=True
        )
    with claim(folder) as mine:
        if not mine:
            print(f"{setting.folder}: running in another process, not run here", flush=True)
            return "skipped"
        if (folder / "done.json").exists():  # finished by the other process between the two checks
            return "skipped"
        # read under the claim: another runner may have checkpointed the task until a moment ago
        checkpointed = any(not path.name.startswith(".") for path in folder.rglob("*.ckpt"))  # hidden: a killed write's
        if checkpointed and recorded.exists() and json.loads(recorded.read_text()) != command[1:]:
            raise SystemExit(
                f"error: {folder} holds an unfinished run of a different command (see {recorded}); "
                f"rerun with the same options, or use another --out folder"
            )
        write_atomically(recorded, lambda path: path.write_text(json.dumps(command[1:], indent=1)))
        if (
            checkpointed
        ):  # plifnet fit takes the newest readable checkpoint under the setting's folder, naming broken ones
            command += ["--ckpt_path", "last"]
        print(f"{setting.folder}: {'resuming' if checkpointed else 'starting'} (log: {folder / 'fit.log'})", flush=True)
        (folder / "failed.json").unlink(missing_ok=True)
        with open(folder / "fit.log", "a") as log:
            code, received = call_forwarding_signals(
                command, log, dict(os.environ, **wandb_environment(setting, study))
            )
        if signal.SIGTERM in received:  # a preemption or a user's kill: the fit saved its state; start nothing more
            raise SystemExit(
                f"{setting.folder}: stopped by SIGTERM (exit code {code}), its state saved; the study stops here: "
                f"run the same command again to resume"
            )
        if code != 0:
            failure = {"exit_code": code, "last_line": last_line(folder / "fit.log")}
            write_atomically(folder / "failed.json", lambda path: path.write_text(json.dumps(failure)))
            print(f"{setting.folder}: failed (exit code {code}): {failure['last_line']}", flush=True)
            return "failed"
        write_atomically(folder / "done.json", lambda path: path.write_text(json.dumps({"exit_code": code})))
        return "done"


def changes(then: list[str], now: list[str]) -> str:
    """What differs between two commands: the arguments this one adds, leaves out, or gives another value."""
    parts = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=then, b=now, autojunk=False).get_opcodes():
        option = [then[i1 - 1]] if tag == "replace" and i1 > 0 and then[i1 - 1].startswith("--") else []
        if tag == "insert":
            parts.append(f"adds {shlex.join(now[j1:j2])}")
        elif tag == "delete":
            parts.append(f"leaves out {shlex.join(then[i1:i2])}")
        elif tag == "replace":
            parts.append(f"has {shlex.join(option + now[j1:j2])} instead of {shlex.join(option + then[i1:i2])}")
    return "this command " + "; ".join(parts[:3]) + ("; ..." if len(parts) > 3 else "")


def failures_message(out: Path, failed: list[Setting]) -> str:
    """One line per failed task (its log's last line and the log), then what to do."""
    lines = []
    for setting in failed:
        folder = out / setting.folder
        record = json.loads((folder / "failed.json").read_text())
        lines.append(
            f"error: {setting.folder} failed (exit code {record['exit_code']}): {record['last_line']} "
            f"(log: {folder / 'fit.log'})"
        )
    return "\n".join(lines) + (
        "\nfix what the log says and run the same command again: finished settings are not run "
        "again, the others run again (from their newest checkpoint where they have one)"
    )


def call_forwarding_signals(command: list[str], log, env: dict[str, str]) -> tuple[int, list[int]]:
    """Run ``command``, passing on SIGUSR1 (SLURM's requeue warning, for Lightning's checkpoint and
    requeue) and SIGTERM (preemption: plifnet saves ``interrupted.ckpt``): SLURM signals this process.
    Returns the exit code and the signals passed on."""
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    forwarded, received = (signal.SIGUSR1, signal.SIGTERM), []

    def forward(number, frame):
        received.append(number)
        child.send_signal(number)

    previous = {number: signal.signal(number, forward) for number in forwarded}
    try:
        return child.wait(), received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def sbatch_script(argv: list[str], tasks: int, out: Path, study: str, sbatch: list[str]) -> str:
    """An array job of ``tasks`` tasks, task i running ``plifnet study ARGV --only i`` (``argv``: this
    command's arguments without ``--slurm-array``/``--submit``/``--sbatch``)."""
    ours, passed_on = (argv[: argv.index("--")], argv[argv.index("--") :]) if "--" in argv else (argv, [])
    me = [sys.executable, "-m", "plifnet", "study"]
    task = shlex.join(me + ours) + ' --only "$SLURM_ARRAY_TASK_ID"' + (" " + shlex.join(passed_on) if passed_on else "")
    return (
        "\n".join(
            [
                "#!/bin/bash",
                f"# plifnet study {study}: {tasks} tasks (settings x seeds), one array task each; each writes only its own folder.",
                f"# When all have run: {shlex.join(me + ours + ['--report-only'])}",
                f"#SBATCH --job-name={sbatch_value(study, '--study')}",
                f"#SBATCH --array=0-{tasks - 1}",
                f"#SBATCH --output={sbatch_value(str(out.resolve()), '--out')}/slurm/%x_%A_%a.log",
                "#SBATCH --open-mode=append",
                "#SBATCH --requeue",
                "#SBATCH --signal=SIGUSR1@120  # before the time limit: Lightning checkpoints and requeues (configs/trainer/slurm.yaml)",
                *(
                    f"#SBATCH {option if option.startswith('-') else '--' + option}"
                    for option in map(sbatch_value, sbatch)
                ),
                "set -euo pipefail",
                f"cd {shlex.quote(str(Path.cwd()))}",
                f"srun {task}",
            ]
        )
        + "\n"
    )


def sbatch_value(value: str, option: str = "--sbatch") -> str:
    """A value for an ``#SBATCH`` line, which sbatch reads as words without a shell's quoting: refused in one
    line where it holds white space or a control character (a newline would start a line of the script)."""
    if not value or any(char.isspace() or ord(char) < 32 for char in value):
        raise SystemExit(
            f"error: {option} {value!r}: an #SBATCH line takes a value without spaces, tabs or line "
            f"breaks; rename it (a folder or study name without spaces)"
        )
    return value


def main(argv: list[str] | None = None) -> None:
    try:
        run_study(sys.argv[1:] if argv is None else argv)
    except WriteFailed as error:  # a full disk or a read-only folder under --out: the results so far stay
        raise SystemExit(write_failure(error, elsewhere="--out DIR")) from None


def run_study(argv: list[str]) -> None:
    ours, passed_on = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        help="a plifnet fit config (a file or a shipped name such as mnist); repeat to add e.g. trainer/ddp",
    )
    parser.add_argument("--out", required=True, type=Path, help="the results folder")
    parser.add_argument(
        "--grid", nargs="+", default=[], help=f"NEURON:TAU settings (default, with no other settings: {' '.join(GRID)})"
    )
    parser.add_argument(
        "--setting",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "OVERRIDES"),
        help='a named set of plifnet fit overrides, e.g. --setting alif "--model.net.neuron alif" (repeatable)',
    )
    parser.add_argument("--settings", type=Path, help="a YAML file of settings and/or axes (and seeds)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[2020], help="one run per seed per setting")
    parser.add_argument("--study", help="the study's name: wandb group, SLURM job name (default: the name of --out)")
    parser.add_argument(
        "--only", type=int, help="run task INDEX alone (default in a SLURM array job: SLURM_ARRAY_TASK_ID)"
    )
    parser.add_argument(
        "--slurm-array", action="store_true", help="write OUT/study.sbatch: one array task per setting and seed"
    )
    parser.add_argument("--submit", action="store_true", help="with --slurm-array: submit it with sbatch")
    parser.add_argument(
        "--sbatch",
        action="append",
        default=[],
        help="an #SBATCH option for --slurm-array, e.g. gres=gpu:1 or time=24:00:00 (repeatable)",
    )
    parser.add_argument("--report-only", action="store_true", help="gather the results from the folders already there")
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="train again a task that finished with another command (the old run is moved to OUT/.replaced/)",
    )
    args = parser.parse_args(ours)
    settings = parse_grid(args.grid or ([] if args.setting or args.settings else list(GRID)), args.seeds)
    settings += parse_settings(args.setting, args.seeds)
    settings += read_settings_file(args.settings, args.seeds) if args.settings else []
    duplicates = [folder for folder, count in collections.Counter(s.folder for s in settings).items() if count > 1]
    if duplicates:
        raise SystemExit(f"error: settings named twice: {sorted(duplicates)}; every setting needs its own name")
    if not settings:
        raise SystemExit(
            "error: the study has no tasks (no settings, or an empty list of seeds); give --grid, --setting, "
            "--settings with at least one setting, and at least one seed"
        )
    for value in [*ours, *passed_on]:  # everything goes into commands and scripts: one line each
        if any(ord(char) < 32 for char in value):
            raise SystemExit(
                f"error: argument {value!r} holds a line break or another control character; a study's "
                f"commands and study.sbatch take each argument on one line: remove it"
            )
    study = args.study or args.out.resolve().name
    if args.report_only:
        if not args.out.is_dir():
            raise SystemExit(
                f"error: --out {args.out} does not exist: run the study first (the same command without "
                f"--report-only), or name the folder it wrote"
            )
        print(report(args.out, settings))
        print(f"results: {args.out / 'results.md'}")
        return
    if not args.config:
        parser.error("--config is required (a dataset config such as configs/mnist.yaml)")
    if args.slurm_array:
        path = args.out / "study.sbatch"
        args.out.mkdir(parents=True, exist_ok=True)
        kept, skip = [], False  # the arguments of each task: ours without --slurm-array, --submit and --sbatch
        for arg in ours:
            if not skip and arg not in ("--slurm-array", "--submit", "--sbatch") and not arg.startswith("--sbatch="):
                kept.append(arg)
            skip = arg == "--sbatch"
        slurm = str(CONFIGS / "trainer" / "slurm.yaml")  # requeue with a checkpoint, resume from it
        kept += [] if any(Path(c).resolve() == Path(slurm) for c in args.config) else ["--config", slurm]
        kept += ["--", *passed_on] if passed_on else []
        (args.out / "slurm").mkdir(exist_ok=True)
        write_atomically(path, lambda p: p.write_text(sbatch_script(kept, len(settings), args.out, study, args.sbatch)))
        print(f"wrote {path}: {len(settings)} array tasks" + ("" if args.submit else f"; submit with: sbatch {path}"))
        if args.submit:
            subprocess.run(["sbatch", str(path)], check=True)
        return
    only = args.only if args.only is not None else os.environ.get("SLURM_ARRAY_TASK_ID")
    if only is not None:
        if not 0 <= int(only) < len(settings):
            raise SystemExit(f"error: task {only} does not exist: the study has tasks 0..{len(settings) - 1}")
        setting = settings[int(only)]
        if run(setting, args.config, passed_on, args.out, study, args.rerun) == "failed":
            raise SystemExit(failures_message(args.out, [setting]))
        print(
            f"task {only} ({setting.folder}) done; when all are: plifnet study --out {args.out} --report-only "
            f"(with the same settings options)"
        )
        return
    outcomes = {setting: run(setting, args.config, passed_on, args.out, study, args.rerun) for setting in settings}
    print(report(args.out, settings))
    print(f"results: {args.out / 'results.md'}")
    running = [s.folder for s in settings if claimed_elsewhere(args.out / s.folder)]
    if running:
        print(
            f"still running in another process: {', '.join(running)}; when they end: plifnet study --out {args.out} "
            f"--report-only (with the same settings options)"
        )
    failed = [setting for setting, outcome in outcomes.items() if outcome == "failed"]
    if failed:
        raise SystemExit(failures_message(args.out, failed))


if __name__ == "__main__":
    main()
