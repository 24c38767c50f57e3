"""The figures plifnet writes into a run folder (matplotlib, no display needed).

Figures are made with matplotlib's object API (``Figure``), not pyplot: no backend is chosen for the
whole process (a user's notebook keeps its own) and no figure is kept open between calls."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.image
import matplotlib.ticker
import numpy as np
from matplotlib.figure import Figure


def tau_trajectories(steps: list[int], history: dict[str, list[float]], path: Path) -> None:
    """One curve per PLIF layer: tau (per-channel layers: the mean) against the optimiser step."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for name, values in history.items():
        ax.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
    ax.set(xlabel="step", ylabel="tau", title="membrane time constant per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")


def tau_distributions(
    start: dict[str, np.ndarray], end: dict[str, np.ndarray], labels: dict[str, str], path: Path
) -> None:
    """One panel per per-neuron time constant: histograms of its values at the start of training and at the end, on a
    logarithmic axis (a layer's time constants can spread over decades), each labelled with ``labels[<column>:start]``
    and ``labels[<column>:end]`` (the shape :mod:`plifnet.tau_shapes` found)."""
    columns = list(end)
    fig = Figure(figsize=(4.2 * len(columns), 3.4), dpi=100)
    for ax, column in zip(fig.subplots(1, len(columns), squeeze=False)[0], columns):
        values = [v[np.isfinite(v) & (v > 0)] for v in (start.get(column, np.empty(0)), end[column])]
        everything = np.concatenate(values)
        low, high = everything.min(), everything.max()
        bins = np.geomspace(low / 1.05, high * 1.05, 31)  # a constant start still gets a bar of its own
        for moment, chosen, color in zip(("start", "end"), values, ("tab:gray", "tab:blue")):
            if len(chosen):
                label = f"{moment}: {labels.get(f'{column}:{moment}', '')}".rstrip(": ")
                ax.hist(chosen, bins=bins, alpha=0.6, color=color, label=label)
        ax.set(xscale="log", xlabel="time constant (steps)", ylabel="neurons", title=column)
        plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")  # 20, not 2 x 10^1
        ax.xaxis.set_major_formatter(plain)
        if high / low < 10:  # within a decade the log axis has no major tick to read: label the minor ones
            ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="both", labelsize=8)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path, format="png")


def firing_rates(history: dict[int, dict[str, float]], path: Path) -> None:
    """One curve per spiking layer: its mean firing rate on the validation set against the epoch."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    epochs = sorted(history)
    layers = list(dict.fromkeys(name for rates in history.values() for name in rates))
    if len(epochs) == 1:  # one epoch has no curve to draw: a bar per layer
        rates = history[epochs[0]]
        ax.bar(range(len(layers)), [rates.get(name, np.nan) for name in layers], tick_label=layers)
        ax.set(xlabel="layer", ylabel="firing rate", title=f"firing rate per layer (validation, epoch {epochs[0]})")
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(path, format="png")
        return
    for name in layers:
        ax.plot(
            epochs, [history[e].get(name, np.nan) for e in epochs], label=name, marker="o" if len(epochs) < 30 else None
        )
    ax.set(
        xlabel="epoch",
        ylabel="firing rate",
        title="firing rate per layer (validation)",
        ylim=(0, max(0.05, 1.1 * max((r for rates in history.values() for r in rates.values()), default=0))),
    )
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")


def read_png(path: Path) -> np.ndarray:
    """The image as ``[H, W, 3]`` uint8, the form TensorBoard's ``add_image`` takes."""
    return (matplotlib.image.imread(path)[..., :3] * 255).astype(np.uint8)


def test_accuracy(curves: dict[str, list[float]], path: Path) -> None:
    """Test accuracy (%) against epoch, one curve per run of an ablation."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for label, accuracies in curves.items():
        ax.plot(range(1, len(accuracies) + 1), [100 * a for a in accuracies], marker="o", label=label)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy per epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")


def tau_per_layer(
    layers: list[str],
    trajectories: dict[str, tuple[list[int], dict[str, list[float]]]],
    fixed: dict[str, float],
    path: Path,
) -> None:
    """One panel per layer: tau against step for each learnable-tau run, a dashed line for each fixed tau."""
    columns = min(4, max(1, len(layers)))
    rows = -(-max(1, len(layers)) // columns)
    fig = Figure(figsize=(3.2 * columns, 2.8 * rows), dpi=100)
    axes = fig.subplots(rows, columns, squeeze=False)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, layer in zip(axes.flat, layers):
        for i, (label, (steps, history)) in enumerate(trajectories.items()):
            if layer in history:
                ax.plot(steps, history[layer], color=colors[i % len(colors)], label=label)
        for j, (label, tau) in enumerate(fixed.items(), start=len(trajectories)):
            ax.axhline(tau, color=colors[j % len(colors)], linestyle="--", label=label)
        ax.set(title=layer, xlabel="step", ylabel="tau")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(layers) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize="small")
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, format="png")


def energy_per_layer(report, title: str, path: Path) -> None:
    """Per Conv2d/Linear layer, the SNN's energy per image beside the same layer's in an ANN (uJ): the operations
    (solid) with the memory accesses stacked on them (hatched), and the SNN's membrane updates as a bar of their
    own; the title says both verdicts, by operations alone and with memory, which can differ in direction."""
    from plifnet.energy import compared  # the sentence the run prints, true in its direction

    names = [layer.name for layer in report.layers] + ["neurons"]
    x = np.arange(len(names))
    snn = [layer.energy_pj / 1e6 for layer in report.layers] + [0.0]
    snn_memory = [layer.memory_pj / 1e6 for layer in report.layers] + [report.neuron_pj / 1e6]
    ann = [layer.ann_energy_pj / 1e6 for layer in report.layers] + [0.0]
    ann_memory = [layer.ann_memory_pj / 1e6 for layer in report.layers] + [0.0]
    fig = Figure(figsize=(max(5, 1.0 * len(names) + 2), 3.8), dpi=100)
    ax = fig.subplots()
    ax.bar(x - 0.2, snn, 0.4, label="SNN operations", color="tab:blue")
    ax.bar(x - 0.2, snn_memory, 0.4, bottom=snn, label="SNN memory", color="tab:blue", alpha=0.35, hatch="//")
    ax.bar(x + 0.2, ann, 0.4, label="ANN operations", color="tab:gray")
    ax.bar(x + 0.2, ann_memory, 0.4, bottom=ann, label="ANN memory", color="tab:gray", alpha=0.35, hatch="//")
    t = report.totals()
    verdicts = (
        f"operations only: {compared(t['energy_uj'], t['ann_energy_uj'])}; "
        f"with memory: {compared(t['energy_with_memory_uj'], t['ann_energy_with_memory_uj'])}"
    )
    ax.set(xticks=x, xticklabels=names, ylabel="energy per image (uJ)")
    ax.set_title(f"energy per layer ({report.technology}), {title}\n{verdicts}", fontsize=9)
    ax.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, format="png")


PROBE_COLUMNS = (
    "spikes",
    "membrane",
    "rate per step",
    "firing rates",
    "time constants",
    "tau over training",
    "gradient",
)


def probe_page(layers: dict, tau_bands: dict, title: str, path: Path) -> None:
    """One row per spiking layer (:class:`plifnet.probe.LayerProbe`), one column per view (:data:`PROBE_COLUMNS`):
    the raster of its shown neurons; their membranes against the threshold; the rate per time step and channel;
    the distribution of its neurons' rates with the dead and saturated fractions; a histogram of each time constant
    now; their quantiles over training (``tau_bands[layer:constant] = [(epoch, q5, q25, q50, q75, q95), ...]``); and
    the mean |dL/dX| that reached the layer at each step."""
    rows = max(1, len(layers))
    fig = Figure(figsize=(3.1 * len(PROBE_COLUMNS), 2.3 * rows + 0.6), dpi=72)
    axes = fig.subplots(rows, len(PROBE_COLUMNS), squeeze=False)
    for row, (name, layer) in zip(axes, layers.items()):
        raster, trace, heat, rates, constants, bands, gradient = row
        # one pixel per (step, neuron): readable at T = 4 and at T = 1301 alike
        raster.imshow(layer.raster.T.numpy(), aspect="auto", origin="lower", cmap="Greys", interpolation="nearest")
        raster.set(xlabel="step", ylabel=f"{name}\nneuron")
        if layer.trace is None:
            trace.text(0.5, 0.5, "membrane not exposed\nby this neuron family", ha="center", va="center", fontsize=9)
            trace.set_axis_off()
        else:
            trace.plot(layer.trace.numpy(), linewidth=0.9)
            trace.axhline(layer.threshold, color="red", linestyle="--", linewidth=0.8, label="threshold")
            trace.set(xlabel="step", title=layer.meaning)
            trace.title.set_fontsize(8)
        image = heat.imshow(
            layer.heat.T.numpy(), aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=max(1e-3, layer.heat.max())
        )
        heat.set(xlabel="step", ylabel="channel" if layer.channels else "neuron")
        fig.colorbar(image, ax=heat, fraction=0.05)
        rates.hist(layer.rates.numpy(), bins=np.linspace(0, 1, 41), color="tab:blue")
        rates.set(
            xlabel="firing rate", ylabel="neurons", title=f"dead {layer.dead:.1%}, saturated {layer.saturated:.1%}"
        )
        rates.title.set_fontsize(9)
        for constant, values in layer.time_constants.items():
            finite = values[values.isfinite()]  # a diverged run's time constants: the count that is not finite
            label = constant if len(finite) == len(values) else f"{constant} ({len(values) - len(finite)} not finite)"
            constants.hist(finite.numpy(), bins=30, alpha=0.6, label=label)
        if layer.time_constants:
            constants.set(xlabel="time steps", ylabel="neurons")
            constants.legend(fontsize="x-small")
        for constant in layer.time_constants:
            band = np.array(tau_bands.get(f"{name}:{constant}", []))
            if len(band):
                line = bands.plot(band[:, 0], band[:, 3], marker="." if len(band) < 30 else None, label=constant)[0]
                bands.fill_between(band[:, 0], band[:, 1], band[:, 5], alpha=0.15, color=line.get_color())
                bands.fill_between(band[:, 0], band[:, 2], band[:, 4], alpha=0.3, color=line.get_color())
        bands.set(xlabel="epoch", ylabel="time steps")
        if layer.time_constants and not any(f"{name}:{c}" in tau_bands for c in layer.time_constants):
            bands.text(0.5, 0.5, "one snapshot:\nno history here", ha="center", va="center", fontsize=9)
        if layer.grad is None:
            gradient.text(0.5, 0.5, "no gradient\n(no loss to take it of)", ha="center", va="center", fontsize=9)
        elif len(layer.grad) == 1:  # a static input given at every step: one value for the whole sequence
            gradient.bar([0], layer.grad.numpy(), width=0.5)
            gradient.set(xticks=[0], xticklabels=["all steps"], ylabel="mean |dL/dX|", yscale="log")
        else:
            gradient.plot(np.arange(len(layer.grad)), layer.grad.numpy(), marker="o" if len(layer.grad) < 30 else None)
            gradient.set(xlabel="step", ylabel="mean |dL/dX|", yscale="log")
        if not layer.time_constants:
            for ax in (constants, bands):
                ax.text(0.5, 0.5, "no time constant", ha="center", va="center", fontsize=9)
        for ax in (raster, trace, heat, rates, constants, bands, gradient):
            ax.tick_params(labelsize=8)
    for ax, column in zip(axes[0], PROBE_COLUMNS):
        ax.set_title(f"{column}\n{ax.get_title()}".strip(), fontsize=9)
    fig.suptitle(title)
    # fixed margins: tight_layout would measure every tick label of every panel, most of the page's time
    fig.subplots_adjust(
        left=0.05,
        right=0.98,
        bottom=0.6 / fig.get_figheight(),
        top=1 - 0.75 / fig.get_figheight(),
        wspace=0.45,
        hspace=0.55,
    )
    fig.savefig(path, format="png")


def learning_curves(losses: list[tuple[int, float]], epochs: list[dict], path: Path) -> None:
    """Two panels against the optimiser step: the training loss (``losses``: (step, loss) as logged) with the
    validation loss per epoch, and the accuracy per epoch (``epochs``: rows with ``step`` and the ``*/loss``,
    ``*/acc`` logged by then)."""
    fig = Figure(figsize=(9, 3.6), dpi=100)
    loss_ax, acc_ax = fig.subplots(1, 2)
    if losses:
        steps, values = zip(*losses)
        loss_ax.plot(steps, values, label="train (step)", color="tab:gray", linewidth=0.8)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        for stage in ("train", "val", "test"):
            rows = [row for row in epochs if f"{stage}/{metric}" in row]
            if rows:
                scale = 100 if metric == "acc" else 1
                ax.plot(
                    [row["step"] for row in rows],
                    [scale * row[f"{stage}/{metric}"] for row in rows],
                    marker="o",
                    label=f"{stage} (epoch)",
                )
        ax.set(xlabel="step", ylabel="loss" if metric == "loss" else "accuracy (%)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    loss_ax.set_title("loss")
    acc_ax.set_title("accuracy")
    fig.tight_layout()
    fig.savefig(path, format="png")


def confusion_matrix(counts: np.ndarray, path: Path) -> None:
    """The test set's confusion matrix: rows the true class, columns the predicted one, each cell its count and
    its share of the row."""
    classes = len(counts)
    fig = Figure(figsize=(max(4, 0.45 * classes + 2), max(3.5, 0.45 * classes + 1.5)), dpi=100)
    ax = fig.subplots()
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if classes <= 20:
        for i in range(classes):
            for j in range(classes):
                color = "white" if shares[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7, color=color)
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    ax.set(xlabel="predicted", ylabel="true", title=f"test: {int(counts.sum())} samples, accuracy {accuracy:.2%}")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    fig.savefig(path, format="png")
