"""Figures for the adapter analyses, as PNG bytes.

Matplotlib's object API with the Agg canvas: no pyplot, so nothing here switches the backend or
touches global figure state of the caller's session, and it runs headless.
"""
from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from loralab.analysis.amplification import ModuleAmplification
from loralab.analysis.spectrum import ModuleSpectrum
from loralab.analysis.subspace import ModuleSimilarity


def short_names(names: list[str]) -> list[str]:
    """Drop the dotted prefix every name shares ("bert.encoder.layer.0.attention.self.query" → "0.attention.
    self.query" when all names start with "bert.encoder.layer."), keeping the names distinct."""
    if len(names) < 2:
        return list(names)
    split = [n.split(".") for n in names]
    common = 0
    while all(len(s) > common + 1 for s in split) and len({s[common] for s in split}) == 1:
        common += 1
    return [".".join(s[common:]) for s in split]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def spectrum_figures(spectra: list[ModuleSpectrum], title: str = "", per_figure: int = 16) -> list[bytes]:
    """Singular values of each ΔW (one small panel per module, log scale), in figures of at most
    `per_figure` panels. Each panel's title gives the effective and stable rank."""
    pngs = []
    labels = short_names([s.name for s in spectra])
    for start in range(0, len(spectra), per_figure):
        chunk = list(zip(spectra[start:start + per_figure], labels[start:start + per_figure]))
        cols = min(4, len(chunk))
        rows = math.ceil(len(chunk) / cols)
        fig = Figure(figsize=(3.4 * cols, 2.6 * rows + 0.6))
        for n, (spec, label) in enumerate(chunk):
            ax = fig.add_subplot(rows, cols, n + 1)
            # Markers, not bars: on a log axis a bar's height depends on where the axis happens to start.
            points = [(i + 1, v) for i, v in enumerate(spec.singular_values) if v > 0]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color="tab:blue", markersize=3)
                ax.set_yscale("log")
            ax.set_xlim(0.5, max(len(spec.singular_values), 1) + 0.5)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(f"{label}\nerank {spec.effective_rank:.2f} · srank {spec.stable_rank:.2f}", fontsize=8)
            ax.set_xlabel("i", fontsize=7)
            ax.set_ylabel("σ_i(ΔW)", fontsize=7)
            ax.tick_params(labelsize=6)
        suffix = f" ({start + 1}–{start + len(chunk)} of {len(spectra)})" if len(spectra) > per_figure else ""
        fig.suptitle(f"{title} singular values of ΔW = s·B·A{suffix}".strip(), fontsize=10)
        fig.tight_layout()
        pngs.append(_png(fig))
    return pngs


def rank_summary_figure(spectra: list[ModuleSpectrum], title: str = "") -> bytes:
    """Effective and stable rank of every ΔW next to its nominal rank r."""
    labels = short_names([s.name for s in spectra])
    x = list(range(len(spectra)))
    fig = Figure(figsize=(max(6.0, 0.45 * len(spectra) + 2), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    w = 0.4
    ax.bar([i - w / 2 for i in x], [s.effective_rank for s in spectra], w, label="effective rank")
    ax.bar([i + w / 2 for i in x], [s.stable_rank for s in spectra], w, label="stable rank")
    ax.scatter(x, [s.r for s in spectra], marker="_", s=200, color="black", label="r", zorder=3)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=75, fontsize=6, ha="right")
    ax.set_ylabel("rank")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{title} rank of ΔW per module".strip(), fontsize=10)
    fig.tight_layout()
    return _png(fig)


def similarity_figure(sim: ModuleSimilarity, labels: tuple[str, str] = ("adapter 1", "adapter 2")) -> bytes:
    """φ(i, j) heatmap of one module next to the empirical random baseline, same colour scale [0, 1]."""
    fig = Figure(figsize=(9.5, 3.2 if sim.r1 <= sim.r2 / 3 else 4.2))
    grids = [(sim.phi, f"{sim.name}\nφ(i, j), {sim.factor} of {labels[0]} vs {labels[1]}"),
             (sim.random_mean, f"random Gaussian baseline (E = max(i,j)/{sim.dim})")]
    image = None
    axes = []
    for n, (grid, title) in enumerate(grids):
        ax = fig.add_subplot(1, 2, n + 1)
        axes.append(ax)
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto", origin="upper",
                          extent=(0.5, sim.r2 + 0.5, sim.r1 + 0.5, 0.5), interpolation="nearest")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(f"j (top-j of {labels[1]}, r = {sim.r2})", fontsize=7)
        ax.set_ylabel(f"i (top-i of {labels[0]}, r = {sim.r1})", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.colorbar(image, ax=axes, fraction=0.03, pad=0.02)
    return _png(fig)


def similarity_summary_figure(sims: list[ModuleSimilarity], labels: tuple[str, str] = ("adapter 1", "adapter 2")) -> bytes:
    """Per module: φ(1, 1) (top directions) and the mean φ over all (i, j), each next to its random value."""
    names = short_names([s.name for s in sims])
    x = list(range(len(sims)))
    fig = Figure(figsize=(max(6.0, 0.45 * len(sims) + 2), 3.8))
    ax = fig.add_subplot(1, 1, 1)
    w = 0.2
    series = [([s.top_overlap for s in sims], "φ(1,1)", "tab:blue"),
              ([s.random_mean[0][0] for s in sims], "φ(1,1) random", "lightsteelblue"),
              ([s.mean_phi for s in sims], "mean φ", "tab:orange"),
              ([s.mean_expected for s in sims], "mean φ random (expected)", "navajowhite")]
    for n, (values, label, color) in enumerate(series):
        ax.bar([i + (n - 1.5) * w for i in x], values, w, label=label, color=color)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=75, fontsize=6, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("φ")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"subspace similarity, {labels[0]} vs {labels[1]}", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def amplification_figure(amps: list[ModuleAmplification], title: str = "") -> bytes:
    """Left: amplification ‖ΔW‖_F / ‖UᵀWVᵀ‖_F per module. Right: the projections of W onto ΔW's,
    W's own and random top-r subspaces, and ‖ΔW‖_F (log scale)."""
    names = short_names([a.name for a in amps])
    x = list(range(len(amps)))
    fig = Figure(figsize=(max(10.0, 0.9 * len(amps) + 3), 4.2))
    ax = fig.add_subplot(1, 2, 1)
    ax.bar(x, [a.amplification for a in amps], color="tab:red")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=75, fontsize=6, ha="right")
    ax.set_ylabel("‖ΔW‖_F / ‖UᵀWVᵀ‖_F")
    ax.set_title(f"{title} amplification factor".strip(), fontsize=10)
    ax2 = fig.add_subplot(1, 2, 2)
    w = 0.2
    series = [([a.proj_w_top for a in amps], "W's top-r", "tab:green"),
              ([a.proj_delta for a in amps], "ΔW's top-r", "tab:red"),
              ([a.proj_random for a in amps], "random", "tab:gray"),
              ([a.delta_fro for a in amps], "‖ΔW‖_F", "tab:purple")]
    for n, (values, label, color) in enumerate(series):
        ax2.bar([i + (n - 1.5) * w for i in x], [max(v, 1e-300) for v in values], w, label=label, color=color)
    ax2.set_yscale("log")
    ax2.set_xticks(x)
    ax2.set_xticklabels(names, rotation=75, fontsize=6, ha="right")
    ax2.set_ylabel("Frobenius norm")
    ax2.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax2.set_title("W projected on r-dim subspaces", fontsize=10)
    fig.tight_layout()
    return _png(fig)
