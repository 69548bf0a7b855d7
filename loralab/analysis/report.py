"""Run the analyses on adapter folders and write the results: CSV + JSON numbers, PNG figures and one
self-contained HTML report (figures embedded as base64). Every file is written atomically."""
from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from loralab.analysis import plots
from loralab.analysis.amplification import ModuleAmplification, compare_with_base
from loralab.analysis.base import base_weights, load_base_model
from loralab.analysis.deltas import LowRankDelta, load_deltas
from loralab.analysis.intruders import (DEFAULT_K, DEFAULT_THRESHOLD, ModuleIntruders, adapter_intruders,
                                        check_intruder_settings)
from loralab.analysis.spectrum import ModuleSpectrum, adapter_spectra
from loralab.analysis.subspace import ModuleSimilarity, compare_adapters
from loralab.errors import LoraLabError
from loralab.files import claim_output_folder, write_bytes, write_text

OUTPUT_KIND = "analysis-report"      # the .loralab-output marker of an `analyze` report folder


@dataclass
class AdapterAnalysis:
    """One adapter's results: spectra always, amplification when a base model was given."""
    label: str
    path: str
    config: dict
    deltas: list[LowRankDelta] = field(repr=False)
    spectra: list[ModuleSpectrum] = field(repr=False)
    amplification: list[ModuleAmplification] | None = field(default=None, repr=False)
    intruders: list[ModuleIntruders] | None = field(default=None, repr=False)


@dataclass
class AnalysisReport:
    adapters: list[AdapterAnalysis]
    similarity: list[ModuleSimilarity] | None = None
    settings: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return _finite({
            "settings": self.settings,
            "notes": self.notes,
            "adapters": [{"label": a.label, "path": a.path, "config": a.config,
                          "spectra": [s.to_dict() for s in a.spectra],
                          "amplification": None if a.amplification is None else [m.to_dict() for m in a.amplification],
                          "intruders": None if a.intruders is None else [m.to_dict() for m in a.intruders]}
                         for a in self.adapters],
            "similarity": None if self.similarity is None else [s.to_dict() for s in self.similarity],
        })


def _labels(paths: list[str]) -> list[str]:
    names = [Path(p).resolve().name or str(p) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{i + 1}:{n}" for i, n in enumerate(names)]
    return names


def analyze_adapters(adapter_dirs: list[str | os.PathLike], base: str | os.PathLike | None = None,
                     factor: str = "A", trials: int = 20, seed: int = 0, split_fused: bool = True,
                     base_model=None, intruders: bool = False, intruder_k: int = DEFAULT_K,
                     intruder_threshold: float = DEFAULT_THRESHOLD) -> AnalysisReport:
    """Spectra of every adapter; φ between the first two when two are given; ΔW vs W with a base; with
    `intruders` (needs a base) the intruder dimensions of W0 + ΔW among its top `intruder_k` singular vectors
    at cosine threshold `intruder_threshold` (`loralab.analysis.intruders`).

    base: the base model, a builtin name, model folder, .gguf file or cached hub id (or pass an already
    loaded `base_model` nn.Module).
    trials: draws for each random baseline; seed seeds them (results are reproducible).
    """
    if not 1 <= len(adapter_dirs) <= 2:
        raise LoraLabError(f"analyze takes one or two adapter folders, got {len(adapter_dirs)}")
    if intruders:
        check_intruder_settings(intruder_k, intruder_threshold)
        if base is None and base_model is None:
            raise LoraLabError("--intruders compares W0 + ΔW with the base weights W0; pass --base MODEL")
    labels = _labels([str(p) for p in adapter_dirs])
    analyses, notes = [], []
    for label, path in zip(labels, adapter_dirs):
        deltas, config = load_deltas(path, split_fused=split_fused)
        analyses.append(AdapterAnalysis(label, str(path), config, deltas, adapter_spectra(deltas)))
        if config.get("use_dora"):
            notes.append(f"{label} is a DoRA adapter: the analyses cover its direction update s·B·A, "
                         f"not the learned magnitude vector.")
        zero = [s.name for s in analyses[-1].spectra if s.frobenius == 0]
        if zero:
            notes.append(f"{label}: ΔW is exactly zero for {len(zero)} module(s) (e.g. {zero[0]}); the adapter "
                         f"looks untrained there (B = 0), so ranks are 0 and subspaces are arbitrary.")
    similarity = None
    if len(analyses) == 2:
        similarity = compare_adapters(analyses[0].deltas, analyses[1].deltas, factor=factor, trials=trials, seed=seed)
        names1, names2 = {d.name for d in analyses[0].deltas}, {d.name for d in analyses[1].deltas}
        if names1 != names2:
            notes.append(f"only the {len(names1 & names2)} module(s) both adapters adapt are compared "
                         f"({len(names1 ^ names2)} adapted by one of them only).")
    if base is not None or base_model is not None:
        model = base_model if base_model is not None else load_base_model(base)
        for a in analyses:
            weights = base_weights(model, sorted({d.module for d in a.deltas}))
            a.amplification = compare_with_base(a.deltas, weights, trials=trials, seed=seed)
            if intruders:
                a.intruders = adapter_intruders(a.deltas, weights, k=intruder_k, threshold=intruder_threshold)
    settings = {"adapters": [str(p) for p in adapter_dirs], "labels": labels,
                "base": None if base is None else str(base), "factor": factor, "trials": trials, "seed": seed,
                "split_fused": split_fused}
    if intruders:
        settings.update(intruder_k=intruder_k, intruder_threshold=intruder_threshold)
    return AnalysisReport(analyses, similarity, settings, notes)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
def _finite(obj):
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.4g}"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c if isinstance(c, str) else _fmt(c))}</td>" for c in row)
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


_STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;display:block;margin:1em 0}
.note{background:#fff8e1;padding:.5em 1em;border-left:4px solid #f0b400}"""


def write_report(report: AnalysisReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write analysis.json, spectra.csv, singular_values.csv, subspace.csv (two adapters),
    amplification.csv (with a base), intruders.csv (with intruders), figures/*.png and report.html into out_dir. Returns {kind: path}."""
    out = claim_output_folder(out_dir, OUTPUT_KIND, report_inputs(report.settings), recognise=is_analysis_folder)
    written = {"json": write_text(out / "analysis.json",
                                  json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n")}
    written.update({kind: write_text(out / name, text) for kind, (name, text) in _csv_files(report).items()})
    figures: dict[str, bytes] = {}
    parts = _intro_html(report)
    parts += _spectra_html(report, figures)
    if report.similarity is not None:
        parts += _similarity_html(report, figures)
    if _has_amplification(report):
        parts += _amplification_html(report, figures)
    if _has_intruders(report):
        parts += _intruders_html(report)
    for name, png in figures.items():
        written[f"figure:{name}"] = write_bytes(out / "figures" / f"{name}.png", png)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>LoRA adapter analysis</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    written["html"] = write_text(out / "report.html", page)
    return written


def report_inputs(settings: dict) -> list[str]:
    """The folders an analysis reads (its adapters and base model): its report folder may not be one of
    them, hold one or lie inside one."""
    return [*settings.get("adapters", []), *([settings["base"]] if settings.get("base") else [])]


def is_analysis_folder(folder: Path) -> bool:
    """The layout of a report folder `analyze` wrote before loralab marked its outputs: analysis.json with
    the adapters and settings it analysed."""
    try:
        data = json.loads((folder / "analysis.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"adapters", "settings"} <= data.keys()


def _has_amplification(report: AnalysisReport) -> bool:
    return any(a.amplification is not None for a in report.adapters)


def _has_intruders(report: AnalysisReport) -> bool:
    return any(a.intruders is not None for a in report.adapters)


def _csv_files(report: AnalysisReport) -> dict[str, tuple[str, str]]:
    """{kind: (file name, CSV text)} of the report's tables."""
    spec_rows, sv_rows = [], []
    for a in report.adapters:
        for s in a.spectra:
            spec_rows.append([a.label, s.name, s.module, s.d_out, s.d_in, s.r, s.scale, s.frobenius, s.spectral,
                              s.effective_rank, s.stable_rank, s.numerical_rank, s.energy_top1])
            sv_rows += [[a.label, s.name, i + 1, v] for i, v in enumerate(s.singular_values)]
    files = {"spectra_csv": ("spectra.csv", _csv(
                 ["adapter", "name", "module", "d_out", "d_in", "r", "scale", "frobenius", "spectral", "effective_rank",
                  "stable_rank", "numerical_rank", "energy_top1"], spec_rows)),
             "singular_values_csv": ("singular_values.csv", _csv(["adapter", "name", "index", "singular_value"],
                                                                 sv_rows))}
    if report.similarity is not None:
        rows = [[s.name, s.factor, s.dim, i + 1, j + 1, s.phi[i][j], s.random_mean[i][j], s.random_std[i][j],
                 s.expected[i][j]] for s in report.similarity for i in range(s.r1) for j in range(s.r2)]
        files["subspace_csv"] = ("subspace.csv", _csv(
            ["name", "factor", "dim", "i", "j", "phi", "random_mean", "random_std", "random_expected"], rows))
    if _has_amplification(report):
        rows = [[a.label, m.name, m.module, m.d_out, m.d_in, m.r, m.w_fro, m.delta_fro, m.proj_delta, m.proj_w_top,
                 m.proj_random, m.proj_random_expected, m.amplification]
                for a in report.adapters if a.amplification for m in a.amplification]
        files["amplification_csv"] = ("amplification.csv", _csv(
            ["adapter", "name", "module", "d_out", "d_in", "r", "w_fro", "delta_fro", "proj_delta", "proj_w_top",
             "proj_random", "proj_random_expected", "amplification"],
            [[("" if isinstance(v, float) and not math.isfinite(v) else v) for v in row] for row in rows]))
    if _has_intruders(report):
        rows = [[a.label, m.name, m.module, m.d_out, m.d_in, m.k, m.threshold, m.count,
                 " ".join(map(str, m.indices)), min(m.max_cosine) if m.max_cosine else ""]
                for a in report.adapters if a.intruders for m in a.intruders]
        files["intruders_csv"] = ("intruders.csv", _csv(
            ["adapter", "name", "module", "d_out", "d_in", "k", "threshold", "intruders", "ranks", "min_max_cosine"],
            rows))
    return files


def _intro_html(report: AnalysisReport) -> list[str]:
    base = report.settings.get("base")
    parts = ["<h1>LoRA adapter analysis</h1>",
             "<p>Adapters: " + ", ".join(f"<b>{html.escape(a.label)}</b> ({html.escape(a.path)})" for a in report.adapters)
             + (f"; base model {html.escape(str(base))}" if base else "")
             + f". Random baselines: {report.settings.get('trials')} draws, seed {report.settings.get('seed')}. "
               "Numbers: analysis.json and the CSV files next to this report; measures explained in docs/analysis.md.</p>"]
    return parts + [f'<p class="note">{html.escape(n)}</p>' for n in report.notes]


def _spectra_html(report: AnalysisReport, figures: dict[str, bytes]) -> list[str]:
    """The spectra section; adds its figures to `figures`."""
    parts = ["<h2>Singular value spectra of ΔW</h2><p>Effective rank = exp(entropy of σ/Σσ) (Roy &amp; "
             "Vetterli 2007); stable rank = ‖ΔW‖²_F / ‖ΔW‖²_2. Both lie in [1, r]; far below r means the "
             "update uses few directions.</p>"]
    for n, a in enumerate(report.adapters):
        parts.append(f"<h3>{html.escape(a.label)}</h3>")
        parts.append(_table(["name", "d_out×d_in", "r", "‖ΔW‖_F", "σ_1", "eff. rank", "stable rank", "σ_1² share"],
                            [[s.name, f"{s.d_out}×{s.d_in}", str(s.r), s.frobenius, s.spectral, s.effective_rank,
                              s.stable_rank, s.energy_top1] for s in a.spectra]))
        figures[f"ranks_{n + 1}"] = plots.rank_summary_figure(a.spectra, a.label)
        parts.append(_img(figures[f"ranks_{n + 1}"], "ranks"))
        for m, png in enumerate(plots.spectrum_figures(a.spectra, a.label)):
            figures[f"spectrum_{n + 1}_{m + 1}"] = png
            parts.append(_img(png, "spectrum"))
    return parts


def _similarity_html(report: AnalysisReport, figures: dict[str, bytes]) -> list[str]:
    """The subspace-similarity section (two adapters); adds its figures to `figures`."""
    labels = (report.adapters[0].label, report.adapters[1].label)
    factor = report.similarity[0].factor
    basis = "right-singular vectors of A (input directions)" if factor == "A" else \
        "left-singular vectors of B (output directions)"
    parts = [f"<h2>Subspace similarity</h2><p>φ(i, j) = ‖U1[:, :i]ᵀ U2[:, :j]‖²_F / min(i, j), U = {basis}. "
             "1: the smaller top subspace lies inside the larger; 0: orthogonal. Random subspaces give "
             "max(i, j)/dim on average (right panels: measured with Gaussian matrices).</p>"]
    figures["similarity_summary"] = plots.similarity_summary_figure(report.similarity, labels)
    parts.append(_img(figures["similarity_summary"], "similarity summary"))
    parts.append(_table(["name", "dim", "r1", "r2", "φ(1,1)", "φ(1,1) random", "mean φ", "mean φ random"],
                        [[s.name, str(s.dim), str(s.r1), str(s.r2), s.top_overlap, s.random_mean[0][0], s.mean_phi,
                          s.mean_expected] for s in report.similarity]))
    for n, s in enumerate(report.similarity):
        figures[f"similarity_{n + 1}"] = plots.similarity_figure(s, labels)
        parts.append(_img(figures[f"similarity_{n + 1}"], f"phi {s.name}"))
    return parts


def _amplification_html(report: AnalysisReport, figures: dict[str, bytes]) -> list[str]:
    """The ΔW-versus-W section (adapters analysed with a base); adds its figures to `figures`."""
    parts = ["<h2>ΔW versus W</h2><p>‖UᵀWVᵀ‖_F: W projected onto the top-r left/right singular "
             "directions of ΔW, of W itself and of a random subspace; amplification = ‖ΔW‖_F / "
             "‖UᵀWVᵀ‖_F (ΔW's directions). Paper (GPT-3, Wq, layer 48, ‖W‖_F = 61.95): r = 4: 0.32 / 21.67 / "
             "0.02, amplification ≈ 21.5; r = 64: 1.90 / 37.71 / 0.33, amplification ≈ 2.</p>"]
    for n, a in enumerate(report.adapters):
        if not a.amplification:
            continue
        parts.append(f"<h3>{html.escape(a.label)}</h3>")
        parts.append(_table(["name", "r", "‖W‖_F", "‖ΔW‖_F", "ΔW dirs", "W top-r", "random", "random (expected)",
                             "amplification"],
                            [[m.name, str(m.r), m.w_fro, m.delta_fro, m.proj_delta, m.proj_w_top, m.proj_random,
                              m.proj_random_expected, m.amplification] for m in a.amplification]))
        figures[f"amplification_{n + 1}"] = plots.amplification_figure(a.amplification, a.label)
        parts.append(_img(figures[f"amplification_{n + 1}"], "amplification"))
    return parts


def _intruders_html(report: AnalysisReport) -> list[str]:
    """The intruder-dimension section (adapters analysed with --intruders)."""
    k, eps = report.settings.get("intruder_k"), report.settings.get("intruder_threshold")
    parts = [f"<h2>Intruder dimensions</h2><p>Shuttleworth et al. 2024 (arXiv:2410.21228): a singular vector of "
             f"W0 + ΔW among its top k = {k} is an intruder when its largest |cosine| with every left singular "
             f"vector of W0 is below ε = {eps}. LoRA tends to add them, full fine-tuning does not; the paper ties "
             f"them to forgetting. Ranks are 1-based.</p>"]
    for a in report.adapters:
        if a.intruders is None:
            continue
        total = sum(m.count for m in a.intruders)
        parts.append(f"<h3>{html.escape(a.label)}: {total} intruder(s) in {len(a.intruders)} weight(s)</h3>")
        parts.append(_table(["name", "d_out×d_in", "intruders", "ranks", "min max|cos|", "σ_1 of W0 + ΔW"],
                            [[m.name, f"{m.d_out}×{m.d_in}", str(m.count), " ".join(map(str, m.indices)) or "–",
                              min(m.max_cosine), m.singular_values[0]] for m in a.intruders]))
    return parts
