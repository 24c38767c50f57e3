"""The figures plifnet writes into a run folder (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def tau_trajectories(steps: list[int], history: dict[str, list[float]], path: Path) -> None:
    """One curve per PLIF layer: tau (per-channel layers: the mean) against the optimiser step."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, values in history.items():
        ax.plot(steps, values, label=name, marker="." if len(steps) < 30 else None)
    ax.set(xlabel="step", ylabel="tau", title="membrane time constant per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def firing_rates(rates: dict[str, float], epoch: int, path: Path) -> None:
    """A bar per spiking layer: its mean firing rate on the validation set."""
    fig, ax = plt.subplots(figsize=(max(3, 0.6 * len(rates) + 1), 3), dpi=100)
    ax.bar(list(rates), list(rates.values()), color="tab:orange")
    ax.set(ylabel="firing rate", ylim=(0, max(0.05, 1.1 * max(rates.values(), default=0))),
           title=f"firing rates, epoch {epoch}")
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def read_png(path: Path) -> np.ndarray:
    """The image as ``[H, W, 3]`` uint8, the form TensorBoard's ``add_image`` takes."""
    return (plt.imread(path)[..., :3] * 255).astype(np.uint8)
