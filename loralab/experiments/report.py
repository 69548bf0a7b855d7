"""Writing an experiment's results: results.csv, results.json, results.md (Markdown tables for the docs),
figures/*.png and a self-contained report.html (PNGs embedded as data URIs). Every file is written
atomically (temporary file + os.replace)."""
from __future__ import annotations

import csv
import html
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loralab.analysis.plots import _png
from loralab.analysis.report import _STYLE, _finite, _img
from loralab.experiments.folders import (OUTPUT_KIND, check_experiment_folder, claim_experiment_folder,  # noqa: F401
                                         is_experiment_folder)
from loralab.files import write_bytes, write_text


@dataclass
class Table:
    """A named table: rows are dicts sharing `columns` (missing values are written empty)."""

    name: str
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    note: str = ""


@dataclass
class ExperimentReport:
    """Everything an experiment writes. tables[0] is the main one (results.csv); the others go to
    `<name>.csv`. figures: {file stem: PNG bytes}. meta: settings and environment, into results.json."""

    experiment: str
    title: str
    intro: str
    tables: list[Table]
    figures: dict[str, bytes] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    extra_html: str = ""


def fmt(value: Any) -> str:
    """Numbers for humans: integers with thousands separators, floats with 4 significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        values = [row.get(c) for c in table.columns]
        writer.writerow(["" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v for v in values])
    return buffer.getvalue()


def table_markdown(table: Table) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(fmt(row.get(c)) for c in table.columns) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(row.get(c)))}</td>" for c in table.columns) + "</tr>"
                   for row in table.rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_experiment_report(report: ExperimentReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the report's files into out_dir (claimed by `claim_experiment_folder`); returns {kind: path}."""
    out = claim_experiment_folder(out_dir)
    written: dict[str, Path] = {}
    for n, table in enumerate(report.tables):
        stem = "results" if n == 0 else table.name
        written[f"csv:{table.name}"] = write_text(out / f"{stem}.csv", table_csv(table))
    data = {"experiment": report.experiment, "meta": report.meta,
            "tables": {t.name: {"columns": t.columns, "rows": t.rows} for t in report.tables}}
    written["json"] = write_text(out / "results.json",
                                   json.dumps(_finite(data), indent=1, allow_nan=False, default=str) + "\n")
    markdown = [f"## {report.title}\n"]
    for table in report.tables:
        markdown += [f"### {table.title}\n", table_markdown(table)]
        if table.note:
            markdown.append(table.note + "\n")
    written["markdown"] = write_text(out / "results.md", "\n".join(markdown))
    for stem, png in report.figures.items():
        written[f"figure:{stem}"] = write_bytes(out / "figures" / f"{stem}.png", png)

    parts = [f"<h1>{html.escape(report.title)}</h1>", f"<p>{html.escape(report.intro)}</p>"]
    for table in report.tables:
        parts.append(f"<h2>{html.escape(table.title)}</h2>")
        if table.note:
            parts.append(f'<p class="note">{html.escape(table.note)}</p>')
        parts.append(table_html(table))
    for stem, png in report.figures.items():
        parts.append(_img(png, stem))
    parts.append(report.extra_html)
    settings = html.escape(json.dumps(_finite(report.meta), indent=1, default=str))
    parts.append(f"<h2>Settings</h2><pre>{settings}</pre>")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
            f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n")
    written["html"] = write_text(out / "report.html", page)
    return written


def line_figure(series: dict[str, tuple[list[float], list[float]]], xlabel: str, ylabel: str, title: str,
                log_x: bool = False, spans: dict[str, tuple[list[float], list[float]]] | None = None,
                log_base: int = 2, hline: tuple[float, str] | None = None) -> bytes:
    """A PNG line plot of {label: (xs, ys)}. spans: {label: (lows, highs)} drawn as error bars around ys
    (e.g. min and max over seeds); log_base: of the log x axis; hline: (y, label) of a reference line."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    for label, (xs, ys) in series.items():
        if spans and label in spans:
            lows, highs = spans[label]
            errors = [[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]]
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=label)
        else:
            ax.plot(xs, ys, marker="o", label=label)
    if hline is not None:
        ax.axhline(hline[0], color="grey", linestyle="--", linewidth=1, label=hline[1])
    if log_x:
        ax.set_xscale("log", base=log_base)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(series) > 1 or hline is not None:
        ax.legend(fontsize=8)
    return _png(fig)


def bar_figure(labels: list[str], values: list[float], ylabel: str, title: str, log_y: bool = False) -> bytes:
    """A PNG bar chart, one bar per label."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.bar(range(len(labels)), [v if v is not None and math.isfinite(v) else 0.0 for v in values], color="#4a7ab5")
    ax.set_xticks(range(len(labels)), labels, rotation=20, fontsize=8)
    if log_y:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig)


def scatter_figure(points: dict[str, tuple[float, float]], xlabel: str, ylabel: str, title: str,
                   front: list[str] | None = None) -> bytes:
    """A PNG scatter plot of {label: (x, y)}, each point labelled; `front`: labels joined by a line in x order
    (e.g. a Pareto front). Points with a non-finite coordinate are left out."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    shown = {k: v for k, v in points.items() if all(math.isfinite(c) for c in v)}
    for label, (x, y) in shown.items():
        ax.scatter([x], [y], color="#4a7ab5")
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    line = sorted(shown[k] for k in (front or []) if k in shown)
    if len(line) > 1:
        ax.plot([p[0] for p in line], [p[1] for p in line], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _png(fig)
