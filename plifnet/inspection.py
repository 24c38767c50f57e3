"""``plifnet inspect``: the probe's figures (:mod:`plifnet.probe`) for a trained checkpoint, in a folder with one
self-contained HTML page (every image inside it) that a browser opens as it is.

    plifnet inspect --ckpt_path CKPT --config CONFIG [--data.root DIR ...] [--samples 16] [--input X.npy] [--out DIR]

The checkpoint decides the network (:func:`plifnet.cli.load_model`); the config gives the data: the first
``--samples`` samples of the test set, or the array of ``--input`` (``.npy``, read without pickle: a batch as the
network takes it, ``[N, ...]``, or time first ``[T, N, ...]`` with ``--time_first``). Written into ``--out``
(default ``<checkpoint's folder>/inspect``): ``probe.png`` (every layer), ``<layer>.png`` (one each), ``layers.csv``
(per layer: mean rate, dead and saturated fractions, time constants) and ``index.html``.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import sys
from pathlib import Path

import numpy as np
import torch

from plifnet import plots
from plifnet.callbacks.common import spiking_layers
from plifnet.errors import UserError
from plifnet.files import WriteFailed, write_atomically, write_failure
from plifnet.probe import LayerProbe, probe


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="plifnet inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint written by plifnet fit")
    parser.add_argument("--config", action="append", help="plifnet fit's config(s): the data (repeatable)")
    parser.add_argument("--samples", type=int, default=16, help="how many test samples to run (default 16)")
    parser.add_argument("--input", type=Path, help="a .npy array to run instead of the test set (no labels)")
    parser.add_argument("--time_first", action="store_true", help="--input is [T, N, ...], not [N, ...]")
    parser.add_argument("--out", type=Path, help="the folder to write (default: <checkpoint folder>/inspect)")
    parser.add_argument("--allow_class_path", action="append", default=[], help="as for plifnet export")
    args, options = parser.parse_known_args(argv)
    from plifnet.cli import load_model

    try:
        if args.samples < 1:
            raise UserError(f"--samples must be >= 1, got {args.samples}")
        if args.input is None and not args.config:
            raise UserError("give the run's --config (its test set is what is shown) or an --input FILE.npy")
        model, data = load_model(args.ckpt_path, args.config, args.allow_class_path, options)
        x, y, samples = inputs(args, data)
        x = x.to(next(model.parameters()).dtype) if x.is_floating_point() else x  # a run of 64-bit weights
        layers = probe(
            model,
            x,
            spiking_layers(model),
            loss=None if y is None else (lambda scores: model.training_loss(scores, y)),
            samples=samples,
        )
        if not layers:
            raise UserError(f"{type(model.net).__name__} has no spiking layer that plifnet finds (docs/EXTENDING.md)")
        with torch.no_grad():
            predicted = model(x).argmax(-1)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    out = args.out or Path(args.ckpt_path).resolve().parent.parent / "inspect"
    try:
        out.mkdir(parents=True, exist_ok=True)
        title = f"{type(model.net).__name__}, {Path(args.ckpt_path).name}"
        write(out, layers, probe_history(args.ckpt_path), title, predicted, y)
    except (WriteFailed, OSError) as error:
        raise SystemExit(write_failure(error, elsewhere="--out DIR")) from None
    print(f"wrote {out / 'index.html'}: {len(layers)} spiking layers on {samples} samples", file=sys.stderr)
    return out


def inputs(args, data) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The batch to show, its labels (None for an --input file) and its number of samples."""
    if args.input is not None:
        try:
            x = torch.from_numpy(np.load(args.input, allow_pickle=False)).float()
        except (OSError, ValueError) as error:
            raise UserError(f"--input {args.input}: not a readable .npy array ({error})") from None
        return x, None, x.shape[1 if args.time_first else 0]
    data.prepare_data()
    data.setup("test")
    loader = data.test_dataloader()
    items = [loader.dataset[i] for i in range(min(args.samples, len(loader.dataset)))]
    x, y = loader.collate_fn(items)
    return x, y, y.shape[-1]


def probe_history(ckpt_path) -> dict:
    """The time constants' quantiles over training that the run's :class:`~plifnet.callbacks.Probe` kept in the
    checkpoint (a full one, such as ``last.ckpt``; a weights-only one keeps none: then ``{}``)."""
    from plifnet import checkpoints

    states = checkpoints.read(ckpt_path).get("callbacks") or {}
    kept = next((state for key, state in states.items() if str(key).startswith("Probe")), {})
    return {key: [tuple(row) for row in rows] for key, rows in kept.get("bands", {}).items()}


def write(out: Path, layers: dict[str, LayerProbe], bands: dict, title: str, predicted, labels) -> None:
    """The figures (``bands``: the time constants over training, :func:`probe_history`), ``layers.csv`` and
    ``index.html`` (its images inlined) into ``out``."""
    write_atomically(out / "probe.png", lambda path: plots.probe_page(layers, bands, title, path))
    pictures = {}
    for name, layer in layers.items():
        path = out / f"{name.replace('/', '_')}.png"
        write_atomically(path, lambda p, name=name, layer=layer: plots.probe_page({name: layer}, bands, name, p))
        pictures[name] = path
    rows = [
        {
            "layer": name,
            "mean_rate": f"{layer.rates.mean().item():.4g}",
            "dead": f"{layer.dead:.4g}",
            "saturated": f"{layer.saturated:.4g}",
            **{f"{constant}_mean": f"{values.mean().item():.4g}" for constant, values in layer.time_constants.items()},
        }
        for name, layer in layers.items()
    ]

    def write_csv(path):
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)

    write_atomically(out / "layers.csv", write_csv)
    page = html_page(title, rows, pictures, predicted, labels)
    write_atomically(out / "index.html", lambda path: path.write_text(page, encoding="utf-8"))


def html_page(title: str, rows: list[dict], pictures: dict[str, Path], predicted, labels) -> str:
    """One page, no file beside it needed: each layer's figure as a base64 ``data:`` image, the table of
    ``layers.csv`` and the samples' predictions."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(row.get(c, '')))}</td>" for c in columns) + "</tr>" for row in rows
    )
    if predicted.dim() != 1:
        predictions = "a class per step (see the network's readout)"
    elif labels is None or labels.dim() != 1:
        predictions = " ".join(map(str, predicted.tolist()))
    else:
        predictions = " ".join(
            str(p) if p == t else f"{p} (label {t})" for p, t in zip(predicted.tolist(), labels.tolist())
        )
    sections = "".join(
        f'<section><h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}"></section>'
        for name, path in pictures.items()
    )
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} img{{max-width:100%}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Every spiking layer on the samples shown: spikes of the first sample for 64 neurons, their membranes against
the threshold, the rate per step and channel, the rate distribution (dead: never fired; saturated: fired at every
step), the time constants, and the mean |dL/dX| that reached the layer at each step.</p>
<p>Predicted classes: {html.escape(predictions)}</p>
<table><tr>{head}</tr>{table}</table>
{sections}
<p id="figures">{len(pictures)} figures</p>
<script>
// say, on the page, whether every figure could be shown (a test reads it from a headless browser)
window.addEventListener("load", () => {{
  const images = [...document.images], shown = images.filter(i => i.complete && i.naturalWidth > 0).length;
  const line = document.getElementById("figures");
  line.dataset.shown = shown; line.dataset.total = images.length;
  line.textContent = shown === images.length ? `all ${{shown}} figures shown` : `${{images.length - shown}} of ${{images.length}} figures could not be shown`;
}});
</script>
</body></html>
"""


if __name__ == "__main__":
    main()
