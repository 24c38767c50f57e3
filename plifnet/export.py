"""``plifnet export``: a checkpoint's network written as a NIR graph (:mod:`plifnet.nir`) for a toolchain.

    plifnet export --ckpt_path CKPT --out FILE.nir [--target T] [--dt DT] [--config CONFIG ...]

The checkpoint decides the network (:func:`plifnet.cli.load_model`); ``--config`` as for plifnet fit, where
the checkpoint alone cannot rebuild it (a network that takes its input shape from the data).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nir
import numpy as np

from plifnet.cli import load_model
from plifnet.contract import is_neuron
from plifnet.nir import TARGETS, to_nir


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="plifnet export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by plifnet fit")
    parser.add_argument("--out", required=True, type=Path, help="the NIR file to write (HDF5), e.g. mnist.nir")
    parser.add_argument(
        "--config",
        action="append",
        help="plifnet fit's config(s), where the checkpoint alone cannot rebuild the network (repeatable)",
    )
    parser.add_argument("--time_steps", type=int, help="T in the metadata (default: the network's)")
    parser.add_argument(
        "--allow_class_path",
        action="append",
        default=[],
        help="a class path the checkpoint names that is not plifnet's or an installed plug-in's, "
        "to be imported all the same (repeatable)",
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--target",
        choices=tuple(TARGETS),
        default="nir",
        help="the toolchain whose NIR importer will read the file: only what it maps, by exact "
        "rewrites (README's table); nir: the graph as NIR specifies it (default)",
    )
    parser.add_argument(
        "--dt",
        type=float,
        help="seconds per time step: NIR's tau is tau in steps x dt (default: the "
        "target's importer's: 1 for nir, 1e-4 SpikingJelly and snnTorch, "
        "1e-3 Norse)",
    )
    args = parser.parse_args(argv)
    from plifnet.errors import UserError
    from plifnet.files import WriteFailed, write_atomically, write_failure

    try:
        model, data = load_model(args.ckpt_path, args.config, args.allow_class_path)
        graph = to_nir(
            model,
            args.time_steps,
            np.dtype(args.dtype).type,
            getattr(data, "input_shape", None),
            target=args.target,
            dt=args.dt,
        )
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(args.out, lambda path: nir.write(path, graph))
    except WriteFailed as error:
        raise SystemExit(write_failure(error, elsewhere="--out PATH")) from None
    neurons = sum(is_neuron(module) for module in model.modules())  # the graph has spike nodes for max-pooling too
    print(
        f"wrote {args.out}: {len(graph.nodes)} NIR nodes ({neurons} spiking layers), "
        f"T = {graph.metadata.get('time_steps', 'the sequence length')}, {graph.metadata['input']} input, for "
        f"{args.target} at "
        f"dt = {graph.metadata['dt']:g}",
        file=sys.stderr,
    )
    return args.out


if __name__ == "__main__":
    main()
