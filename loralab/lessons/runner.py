"""Execute a percent-format lesson cell by cell and write a self-contained HTML page of what it did.

    run = run_lesson(get_lesson(3), out="runs/lessons/03", cache="runs/lessons/cache", quick=True)
    run.failed, run.seconds, run.namespace["checks"]

A lesson file is jupytext's percent format: `# %%` starts a code cell, `# %% [markdown]` a text cell whose
lines are comments (`# text`). The cells run in order in one namespace, like a notebook kernel would run
them. For each code cell we keep what it printed (stdout and stderr), the matplotlib figures it left open
(saved as PNG, then closed) and, if it raised, the traceback; execution stops at the first error.

Why not jupytext + nbclient: nbclient runs notebooks through a Jupyter kernel (ipykernel, pyzmq and a
kernel subprocess), a heavy stack for lessons that only print and draw with matplotlib; exec() of each cell
in one dict does the same here in ~100 lines, offline, in the calling process (so tests see the lesson's
variables). Markdown is rendered with markdown-it-py (CommonMark + tables, raw HTML disabled).

The output folder holds index.html (figures embedded as base64 PNG, so the page is one file), the figures
as files under figures/, and run.json (per-cell times, errors, the lesson's check results). It is built in
a temporary folder and swapped in (loralab.files.atomic_folder), so a killed run leaves the old page.
"""
from __future__ import annotations

import base64
import contextlib
import html
import io
import os
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loralab.errors import LoraLabError
from loralab.lessons import Lesson
from loralab.files import save_figure
from loralab.files import atomic_folder, check_cache_folder, check_output_folder, write_json, write_text

OUTPUT_KIND = "lesson-page"
_MARKER = re.compile(r"^# %%(?P<rest>.*)$")
# The settings a lesson reads through loralab.lessons.kit.settings(); the runner sets them for the run.
ENV_QUICK, ENV_CACHE, ENV_THREADS = "LORALAB_LESSON_QUICK", "LORALAB_LESSON_CACHE", "LORALAB_LESSON_THREADS"


@dataclass(frozen=True)
class Cell:
    """One cell: kind "code" or "markdown", its source (markdown without the leading '# '), and the
    1-based line of the file where its source starts (tracebacks point at the lesson file's lines)."""

    kind: str
    source: str
    line: int


@dataclass
class CellResult:
    cell: Cell
    output: str = ""
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    exception: Exception | None = field(default=None, repr=False)


@dataclass
class LessonRun:
    """An executed lesson: per-cell results, wall seconds, CPU seconds of this process (all threads; on a
    shared machine the better measure of the work), and the namespace the cells ran in."""

    lesson: Lesson
    quick: bool
    results: list[CellResult]
    seconds: float
    cpu_seconds: float
    threads: int
    namespace: dict[str, Any] = field(repr=False)

    @property
    def failed(self) -> CellResult | None:
        """The cell that raised, or None when every cell ran."""
        return next((r for r in self.results if r.error is not None), None)


def parse_cells(text: str) -> list[Cell]:
    """Split a percent-format script into cells. Lines before the first marker form a code cell (as in
    jupytext); empty cells are dropped; markdown lines lose their '# ' (or a lone '#')."""
    cells: list[Cell] = []
    kind, start, lines = "code", 1, []

    def flush() -> None:
        while lines and not lines[-1].strip():
            lines.pop()
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first is None:
            return
        body = lines[first:]
        if kind == "markdown":
            body = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body]
        cells.append(Cell(kind, "\n".join(body), start + first))

    for number, line in enumerate(text.splitlines(), start=1):
        match = _MARKER.match(line)
        if match is None:
            lines.append(line)
            continue
        flush()
        rest = match.group("rest")
        kind = "markdown" if re.search(r"\[(markdown|md)\]", rest) else "code"
        start, lines = number + 1, []
    flush()
    return cells


class _Tee(io.TextIOBase):
    """A text stream that keeps everything written and, if `echo` is set, passes it on."""

    def __init__(self, echo: io.TextIOBase | None) -> None:
        self.buffer_ = io.StringIO()
        self.echo = echo

    def write(self, text: str) -> int:
        self.buffer_.write(text)
        if self.echo is not None:
            self.echo.write(text)
            self.echo.flush()
        return len(text)

    def flush(self) -> None:
        if self.echo is not None:
            self.echo.flush()


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _process_settings_kept() -> Iterator[None]:
    """Restore what a lesson changes for the whole process (torch threads, transformers' verbosity and
    progress bars), so running a lesson inside a test session or a notebook leaves no trace."""
    import torch
    import transformers

    threads, verbosity = torch.get_num_threads(), transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def _save_open_figures(figures_dir: Path, index: int) -> list[Path]:
    """Save every open matplotlib figure as figures/cellNN-K.png and close it."""
    import matplotlib.pyplot as plt

    saved = []
    for k, number in enumerate(plt.get_fignums(), start=1):
        figure = plt.figure(number)
        saved.append(save_figure(figure, figures_dir / f"cell{index:02d}-{k}.png", dpi=100, bbox_inches="tight"))
        plt.close(figure)
    return saved


def _run_cell(cell: Cell, index: int, path: Path, namespace: dict, figures_dir: Path, echo: bool) -> CellResult:
    # Pad with blank lines so that line numbers in tracebacks are the lesson file's.
    code = compile("\n" * (cell.line - 1) + cell.source, str(path), "exec")
    out = _Tee(sys.stdout if echo else None)
    result = CellResult(cell)
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            exec(code, namespace)
        except Exception as exc:  # a lesson's error is shown in its page, not raised past it
            frames = traceback.extract_tb(exc.__traceback__)[1:]   # drop this function's exec frame
            result.error = "".join(traceback.format_list(frames) + traceback.format_exception_only(exc))
            result.exception = exc
    result.seconds = time.perf_counter() - started
    result.output = out.buffer_.getvalue()
    result.figures = _save_open_figures(figures_dir, index)
    return result


def execute(path: Path, figures_dir: Path, echo: bool = False,
            on_cell: Callable[[int, int, Cell], None] | None = None) -> tuple[list[CellResult], dict]:
    """Run the cells of `path` in order in one fresh namespace; stop after the first error.
    Returns (one result per cell reached, the namespace)."""
    import matplotlib

    matplotlib.use("Agg", force=True)   # figures are collected after each cell, never shown
    cells = parse_cells(path.read_text(encoding="utf-8"))
    namespace: dict[str, Any] = {"__name__": "__lesson__", "__file__": str(path)}
    results = []
    code_cells = sum(cell.kind == "code" for cell in cells)
    done = 0
    for index, cell in enumerate(cells, start=1):
        if cell.kind == "markdown":
            results.append(CellResult(cell))
            continue
        done += 1
        if on_cell is not None:
            on_cell(done, code_cells, cell)
        results.append(_run_cell(cell, index, path, namespace, figures_dir, echo))
        if results[-1].error is not None:
            break
    return results, namespace


def run_lesson(lesson: Lesson, out: str | os.PathLike, cache: str | os.PathLike, quick: bool = False,
               threads: int = 1, echo: bool = False,
               on_cell: Callable[[int, int, Cell], None] | None = None) -> LessonRun:
    """Execute `lesson` and write index.html, figures/ and run.json into `out` (replaced atomically; an
    existing folder is replaced only if loralab wrote it as a lesson page). The lesson trains into or reuses
    `cache`. A lesson that fails still gets its page, which shows the error; check `LessonRun.failed`."""
    out, cache = Path(out), Path(cache)
    check_output_folder(out, OUTPUT_KIND, [cache], overwrite=True)   # the output policy, before the lesson runs
    check_cache_folder(cache)
    env = {ENV_QUICK: "1" if quick else "0", ENV_CACHE: str(cache.resolve()), ENV_THREADS: str(threads)}
    with atomic_folder(out, OUTPUT_KIND, replace=True) as scratch:
        started, cpu_started = time.perf_counter(), time.process_time()
        with _environment(env), _process_settings_kept():
            results, namespace = execute(lesson.path, scratch / "figures", echo=echo, on_cell=on_cell)
        run = LessonRun(lesson, quick, results, time.perf_counter() - started, time.process_time() - cpu_started,
                        threads, namespace)
        write_text(scratch / "index.html", render_html(run, scratch))
        write_json(scratch / "run.json", run_summary(run, scratch))
    for result in run.results:   # the figures now live in `out`, not in the scratch folder
        result.figures = [out / figure.relative_to(scratch) for figure in result.figures]
    return run


def _checks(run: LessonRun) -> list[dict]:
    """The results of the lesson's `checks` (a loralab.lessons.kit.Checks), if it made one."""
    checks = run.namespace.get("checks")
    return list(getattr(checks, "results", []))


def run_summary(run: LessonRun, folder: Path) -> dict:
    failed = run.failed
    return {
        "lesson": run.lesson.number, "title": run.lesson.title, "quick": run.quick,
        "seconds": round(run.seconds, 2), "cpu_seconds": round(run.cpu_seconds, 2), "threads": run.threads,
        "failed": failed is not None,
        "error": None if failed is None else failed.error.strip().splitlines()[-1],
        "checks": _checks(run),
        "cells": [{"line": r.cell.line, "kind": r.cell.kind, "seconds": round(r.seconds, 3),
                   "figures": [str(f.relative_to(folder)) for f in r.figures], "error": r.error}
                  for r in run.results],
    }


# --------------------------------------------------------------------------------------------------
# The HTML page
# --------------------------------------------------------------------------------------------------
_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.5;
       color: #1d1d1f; }
pre { padding: .6rem .8rem; overflow-x: auto; font-size: .85rem; line-height: 1.35; border-radius: 4px; }
pre.code { background: #f4f4f7; border-left: 3px solid #6b7bd6; }
pre.output { background: #fff; border: 1px solid #e2e2e8; color: #333; }
pre.error { background: #fff1f0; border-left: 3px solid #d33; color: #900; }
img { max-width: 100%; display: block; margin: .5rem 0; }
table { border-collapse: collapse; margin: .6rem 0; } th, td { border: 1px solid #ddd; padding: .2rem .5rem; }
.meta { color: #666; font-size: .85rem; } .time { color: #999; font-size: .75rem; text-align: right; }
.checks { background: #f1faf3; border: 1px solid #b9e2c2; padding: .4rem .8rem; border-radius: 4px; }
.checks.bad { background: #fff1f0; border-color: #f0b4b0; }
"""


def _markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _cell_html(result: CellResult) -> list[str]:
    cell = result.cell
    if cell.kind == "markdown":
        return [_markdown(cell.source)]
    parts = [f'<pre class="code">{html.escape(cell.source)}</pre>']
    if result.output.strip():
        parts.append(f'<pre class="output">{html.escape(result.output.rstrip())}</pre>')
    parts.extend(_image(figure) for figure in result.figures)
    if result.error is not None:
        parts.append(f'<pre class="error">{html.escape(result.error.rstrip())}</pre>')
    if result.seconds >= 1:
        parts.append(f'<div class="time">{result.seconds:.1f} s</div>')
    return parts


def _checks_html(run: LessonRun) -> str:
    checks = _checks(run)
    if not checks:
        return ""
    passed = sum(c["passed"] for c in checks)
    bad = "" if passed == len(checks) else " bad"
    items = "".join(f"<li>{'✓' if c['passed'] else '✗'} {html.escape(c['name'])}</li>" for c in checks)
    return (f'<div class="checks{bad}"><b>Check yourself: {passed} of {len(checks)} answers verified</b>'
            f"<ul>{items}</ul></div>")


def render_html(run: LessonRun, folder: Path) -> str:
    """The executed lesson as one self-contained HTML page (no external files: figures are data: URIs)."""
    import torch

    lesson, failed = run.lesson, run.failed
    mode = "quick mode (tiny random model: the numbers are not meaningful, the mechanics are)" if run.quick \
        else "normal mode"
    status = (f"stopped with an error in the cell at line {failed.cell.line}" if failed else "ran to the end")
    meta = (f"Lesson {lesson.number} of 5, {mode}; {status} in {run.seconds:.1f} s ({run.cpu_seconds:.1f} CPU s) on "
            f"{time.strftime('%Y-%m-%d %H:%M')}; Python {platform.python_version()}, torch {torch.__version__}, "
            f"{run.threads} torch thread(s). Source: {lesson.file}.")
    body = [f'<p class="meta">{html.escape(meta)}</p>']
    for result in run.results:
        body.extend(_cell_html(result))
    body.append(_checks_html(run))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>loralab lesson {lesson.number}: {html.escape(lesson.title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")

