"""The ``plifnet`` command: dispatches to Lightning's subcommands (:mod:`plifnet.cli`), a study
(:mod:`plifnet.study`), an export (:mod:`plifnet.export`) or an inspection (:mod:`plifnet.inspection`); it sits
above all of them."""

from __future__ import annotations

import sys

COMMANDS = """usage: plifnet COMMAND [OPTIONS]      plifnet COMMAND --help lists a command's options

commands:
  fit        train a network: plifnet fit --config mnist --data.root DIR
  validate   evaluate a checkpoint on the validation split: plifnet validate --config mnist --ckpt_path CKPT
  test       evaluate a checkpoint on the test set: plifnet test --config mnist --ckpt_path CKPT
  predict    write predictions.csv for a checkpoint: plifnet predict --config mnist --ckpt_path CKPT
  study      train a grid of settings and gather their results: plifnet study --config mnist --out DIR
  export     write a checkpoint's network as a NIR graph: plifnet export --ckpt_path CKPT --out net.nir
  inspect    figures of every spiking layer of a checkpoint, with an HTML page: plifnet inspect --config mnist --ckpt_path CKPT

and python -m plifnet.neurobench --ckpt_path CKPT --config mnist: NeuroBench's metrics of a checkpoint."""


def run(argv: list[str] | None = None) -> None:
    """The ``plifnet`` command: ``study``, ``export`` and ``inspect`` are plifnet's, everything else Lightning's; with no
    command, or ``--help``, the list of commands."""
    given, argv = argv, sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in ([], ["-h"], ["--help"]):
        print(COMMANDS)
        raise SystemExit(0 if argv else 2)
    if argv[:1] == ["study"]:
        from plifnet import study

        study.main(argv[1:])
    elif argv[:1] == ["inspect"]:
        from plifnet import inspection

        inspection.main(argv[1:])
    elif argv[:1] == ["export"]:
        from plifnet import export

        export.main(argv[1:])
    else:
        from plifnet import cli

        cli.main(given)
