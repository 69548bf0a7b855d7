"""The training plot: train and dev loss, and the dev metric that picks the best checkpoint, per step."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loralab.files import save_figure


def plot_history(history: Sequence[dict[str, Any]], path: str | os.PathLike, metric: str = "accuracy") -> Path:
    """Write a two-panel PNG (loss; dev `metric`) from the trainer's history rows, atomically.

    history rows have "step", "split" ("train" or "dev") and metric values; train rows hold the mean
    loss over the steps since the previous row.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    path = Path(path)
    train = [r for r in history if r.get("split") == "train"]
    dev = [r for r in history if r.get("split") == "dev"]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if dev:
        ax_loss.plot([r["step"] for r in dev], [r["loss"] for r in dev], "o-", label="dev loss")
    ax_loss.set_xlabel("optimizer step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("loss")
    ax_loss.legend()
    shown = [r for r in dev if metric in r and metric != "loss"]
    if shown:
        ax_metric.plot([r["step"] for r in shown], [r[metric] for r in shown], "o-", color="tab:green")
        ax_metric.set_ylabel(f"dev {metric}")
    else:
        ax_metric.text(0.5, 0.5, f"no dev {metric}", ha="center", va="center", transform=ax_metric.transAxes)
    ax_metric.set_xlabel("optimizer step")
    ax_metric.set_title(f"dev {metric}")
    try:
        save_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)
    return path
