"""The figures plifnet writes into a run folder (matplotlib, no display needed).

Figures are made with matplotlib's object API (``Figure``), not pyplot: no backend is chosen for the
whole process (a user's notebook keeps its own) and no figure is kept open between calls."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import matplotlib.image
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


def firing_rates(history: dict[int, dict[str, float]], path: Path) -> None:
    """One curve per spiking layer: its mean firing rate on the validation set against the epoch."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    epochs = sorted(history)
    layers = list(dict.fromkeys(name for rates in history.values() for name in rates))
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
    """Two bars per Conv2d/Linear layer: the SNN's energy per image and the same layer's in an ANN (uJ)."""
    names = [layer.name for layer in report.layers]
    x = np.arange(len(names))
    fig = Figure(figsize=(max(4, 0.9 * len(names) + 2), 3.2), dpi=100)
    ax = fig.subplots()
    ax.bar(x - 0.2, [layer.energy_pj / 1e6 for layer in report.layers], 0.4, label="SNN")
    ax.bar(x + 0.2, [layer.ann_energy_pj / 1e6 for layer in report.layers], 0.4, label="ANN", color="tab:gray")
    ax.set(
        xticks=x,
        xticklabels=names,
        ylabel="energy per image (uJ)",
        title=f"energy per layer ({report.technology}), {title}",
    )
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
