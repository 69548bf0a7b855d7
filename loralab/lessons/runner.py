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

Languages and exercises. A markdown cell marked `lang="en"` or `lang="zh"` (jupytext keeps it as the cell's
metadata) is shown only in that language's page; each English cell is followed by its Chinese twin, so the two
texts cannot drift apart (tests/lessons checks the pairs). A cell marked `mode="normal"` interprets
normal-mode results and is hidden in quick mode. In code cells, `# hint[en]: …` / `# hint[zh]: …` lines
give the hint for the next `answer_N = …` or `prediction_N = …` statement: the page folds it into a
<details> block. In exercise mode each such statement becomes `answer_N = None  # your answer`, so the
worked solutions appear only in the answered page; `exercise_source` writes that copy as a file.
"""
from __future__ import annotations

import ast
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

from loralab.errors import choose
from loralab.files import atomic_folder, check_cache_folder, check_output_folder, save_figure, write_json, write_text
from loralab.lessons import (CONCEPTS, ENV_CACHE, ENV_EXERCISES, ENV_KNOBS, ENV_LANG, ENV_PAGE_TEXT, ENV_QUICK,
                             ENV_THREADS, LANGUAGES, Lesson)
from loralab.lessons.kit import KNOBS, MARKS, MISSING, PROSE_END, PROSE_START, RIGHT, SVG_START, WRONG, font_settings
from loralab.lessons.knobs import encode, page_line, parse_knobs, show

OUTPUT_KIND = "lesson-page"
_MARKER = re.compile(r"^# %%(?P<rest>.*)$")
_METADATA = re.compile(r'(\w+)="([^"]*)"')
_ANSWER = re.compile(r"^(answer|prediction)_\w+$")
_HINT = re.compile(r"^\s*# hint(?:\[(?P<lang>\w+)\])?: ?(?P<text>.*)$")
# The settings a lesson reads through loralab.lessons.kit.settings(); the runner sets them for the run.
BLANK_COMMENT = {"en": "# your answer", "zh": "# 你的答案"}


@dataclass(frozen=True)
class Cell:
    """One cell: kind "code" or "markdown", its source (markdown without the leading '# '), the 1-based
    line of the file where its source starts (tracebacks point at the lesson file's lines), the metadata of
    its marker (`lang`, `mode`), and for a code cell prepared for a page: the code to execute (same lines as
    the file, hints blanked out) and the hints of its answers ((variable, text) pairs)."""

    kind: str
    source: str
    line: int
    meta: tuple[tuple[str, str], ...] = ()
    code: str | None = None
    hints: tuple[tuple[str, str], ...] = ()

    def get(self, key: str) -> str | None:
        return dict(self.meta).get(key)


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
    lang: str = "en"
    exercises: bool = False
    knobs: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> CellResult | None:
        """The cell that raised, or None when every cell ran."""
        return next((r for r in self.results if r.error is not None), None)

    @property
    def checks(self) -> list[dict]:
        """The results of the lesson's `checks` (a loralab.lessons.kit.Checks), if it made one."""
        return list(getattr(self.namespace.get("checks"), "results", []))

    @property
    def disagreements(self) -> list[dict]:
        """Exercises that are wrong in the answered page: the lesson no longer agrees with itself. (In
        exercise mode a wrong answer is the learner's; a prediction may always disagree with a measurement.)"""
        if self.exercises:
            return []
        return [c for c in self.checks if c["kind"] == "exercise" and not c["passed"]]


def parse_cells(text: str) -> list[Cell]:
    """Split a percent-format script into cells. Lines before the first marker form a code cell (as in
    jupytext); empty cells are dropped; markdown lines lose their '# ' (or a lone '#')."""
    cells: list[Cell] = []
    kind, start, lines, meta = "code", 1, [], ()

    def flush() -> None:
        while lines and not lines[-1].strip():
            lines.pop()
        first = next((i for i, line in enumerate(lines) if line.strip()), None)
        if first is None:
            return
        body = lines[first:]
        if kind == "markdown":
            body = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body]
        cells.append(Cell(kind, "\n".join(body), start + first, meta))

    for number, line in enumerate(text.splitlines(), start=1):
        match = _MARKER.match(line)
        if match is None:
            lines.append(line)
            continue
        flush()
        rest = match.group("rest")
        kind = "markdown" if re.search(r"\[(markdown|md)\]", rest) else "code"
        start, lines, meta = number + 1, [], tuple(_METADATA.findall(rest))
    flush()
    return cells


def _answer_statements(source: str) -> list[tuple[int, int, str]]:
    """(first line, last line, variable) of each top-level `answer_N = …` / `prediction_N = …`, 0-based."""
    try:
        tree = ast.parse(source)
    except SyntaxError:      # the cell will raise when it runs; nothing to prepare
        return []
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and _ANSWER.match(node.targets[0].id):
            found.append((node.lineno - 1, node.end_lineno - 1, node.targets[0].id))
    return found


def prepare_code(source: str, lang: str, blank: bool) -> tuple[str, str, str, tuple[tuple[str, str], ...]]:
    """A code cell for `lang`: (what the page shows, what runs — the same number of lines, so tracebacks
    keep the file's line numbers —, the exercise copy's text, the hints). Hint lines of `lang` (or untagged)
    become the hints of the next answer statement; other languages' are dropped; with `blank` every answer
    statement becomes `NAME = None  # your answer`."""
    lines = source.split("\n")
    statements = _answer_statements(source)
    shown, run, copy = list(lines), list(lines), list(lines)
    drop: set[int] = set()
    hints, pending = [], []
    starts = {first: (last, name) for first, last, name in statements}
    for i, line in enumerate(lines):
        hint = _HINT.match(line)
        if hint is not None:
            drop.add(i)
            run[i] = ""
            if hint.group("lang") in (None, lang):
                pending.append(hint.group("text").strip())
                copy[i] = re.sub(r"# hint(\[\w+\])?:", "# hint:", line, count=1)
            else:
                copy[i] = None
            continue
        if i in starts:
            last, name = starts[i]
            hints.extend((name, text) for text in pending)
            pending = []
            if blank:
                indent = line[:len(line) - len(line.lstrip())]
                blanked = f"{indent}{name} = None  {BLANK_COMMENT.get(lang, BLANK_COMMENT['en'])}"
                shown[i] = run[i] = copy[i] = blanked
                for j in range(i + 1, last + 1):
                    drop.add(j)
                    run[j], copy[j] = "", None
    display = "\n".join(line for i, line in enumerate(shown) if i not in drop)
    return display, "\n".join(run), "\n".join(line for line in copy if line is not None), tuple(hints)


def prepare_cells(cells: list[Cell], lang: str = "en", quick: bool = False, blank: bool = False) -> list[Cell]:
    """The cells of one page: markdown of `lang` (and unmarked), normal-mode interpretation hidden in quick
    mode (one note in its place), code cells with their hints and, with `blank`, blank answers."""
    prepared = []
    for cell in cells:
        if cell.kind == "markdown":
            if cell.get("lang") not in (None, lang):
                continue
            if quick and cell.get("mode") == "normal":
                prepared.append(Cell("note", QUICK_NOTE[lang], cell.line, cell.meta))
                continue
            prepared.append(cell)
            continue
        display, code, _, hints = prepare_code(cell.source, lang, blank)
        prepared.append(Cell("code", display, cell.line, cell.meta, code, hints))
    return prepared


QUICK_NOTE = {"en": "Quick mode: a tiny random model ran here, so its numbers mean nothing; the reading of the "
                    "normal-mode results that stands here is hidden (run without --quick to see it).",
              "zh": "快速模式:这里运行的是微型随机模型,数字没有意义;此处对正常模式结果的解读已隐藏"
                    "(去掉 --quick 运行即可看到)。"}


def exercise_source(text: str, lang: str) -> str:
    """The exercise copy of a lesson file in `lang`: only that language's markdown cells (their marker
    without `lang`), hints as `# hint:` comments, every answer `None`. A plain percent-format script; the
    runner runs it as it is (it has nothing left to blank), so a learner's answers in it are checked."""
    out: list[str] = []
    for cell in parse_cells(text):
        if cell.kind == "markdown":
            if cell.get("lang") not in (None, lang):
                continue
            extra = "".join(f' {k}="{v}"' for k, v in cell.meta if k != "lang")
            out.append(f"# %% [markdown]{extra}")
            out.extend(f"# {line}".rstrip() for line in cell.source.split("\n"))
        else:
            out.append("# %%")
            out.append(prepare_code(cell.source, lang, blank=True)[2])
        out.append("")
    return "\n".join(out)


class _Tee(io.TextIOBase):
    """A text stream that keeps everything written and, if `echo` is set, passes it on."""

    def __init__(self, echo: io.TextIOBase | None) -> None:
        self.buffer_ = io.StringIO()
        self.echo = echo

    def write(self, text: str) -> int:
        self.buffer_.write(text)
        if self.echo is not None:

            self.echo.write(text.replace(PROSE_START, "").replace(SVG_START, "").replace(PROSE_END, ""))
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
    source = "\n" * (cell.line - 1) + (cell.code if cell.code is not None else cell.source)
    out = _Tee(sys.stdout if echo else None)
    result = CellResult(cell)
    started = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:   # compiled inside: a learner's syntax error is shown in the page like any other error
            exec(compile(source, str(path), "exec"), namespace)
        except Exception as exc:  # a lesson's error is shown in its page, not raised past it
            frames = traceback.extract_tb(exc.__traceback__)[1:]   # drop this function's exec frame
            result.error = "".join(traceback.format_list(frames) + traceback.format_exception_only(exc))
            result.exception = exc
    result.seconds = time.perf_counter() - started
    result.output = out.buffer_.getvalue()
    result.figures = _save_open_figures(figures_dir, index)
    return result


def execute(path: Path, figures_dir: Path, echo: bool = False,
            on_cell: Callable[[int, int, Cell], None] | None = None, lang: str = "en", quick: bool = False,
            blank: bool = False) -> tuple[list[CellResult], dict]:
    """Run the cells of `path` for a `lang` page (prepare_cells) in order in one fresh namespace; stop after
    the first error. Returns (one result per cell reached, the namespace)."""
    import matplotlib

    matplotlib.use("Agg", force=True)   # figures are collected after each cell, never shown
    cells = prepare_cells(parse_cells(path.read_text(encoding="utf-8")), lang, quick, blank)
    namespace: dict[str, Any] = {"__name__": "__lesson__", "__file__": str(path)}
    results = []
    code_cells = sum(cell.kind == "code" for cell in cells)
    done = 0
    for index, cell in enumerate(cells, start=1):
        if cell.kind != "code":
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
               on_cell: Callable[[int, int, Cell], None] | None = None, lang: str = "en",
               exercises: bool = False, source: str | os.PathLike | None = None,
               knobs: dict[str, Any] | None = None) -> LessonRun:
    """Execute `lesson` in `lang` and write index.html, figures/ and run.json into `out` (replaced
    atomically; an existing folder is replaced only if loralab wrote it as a lesson page). The lesson trains
    into or reuses `cache` (one cache for every language: the runs do not depend on it). With `exercises`
    the answers are blank — or, with `source` (a learner's exercise copy, exercise_source), the learner's.
    `knobs`: {name: value} of the lesson's knobs (kit.KNOBS; checked here, as `loralab learn` parses them); the
    runs they train are cached apart from the default runs, and the page's first line records them.
    A lesson that fails still gets its page, which shows the error; check `LessonRun.failed`."""
    import matplotlib


    choose(lang, LANGUAGES, "lesson language")
    texts = [f"{k}={show(v)}" for k, v in (knobs or {}).items()]
    knobs = parse_knobs(KNOBS.get(lesson.number, ()), texts, lesson.number)
    out, cache = Path(out), Path(cache)
    path = Path(source) if source is not None else lesson.path
    check_output_folder(out, OUTPUT_KIND, [cache, path], overwrite=True)   # the output policy, before the lesson runs
    check_cache_folder(cache)
    env = {ENV_QUICK: "1" if quick else "0", ENV_CACHE: str(cache.resolve()), ENV_THREADS: str(threads),
           ENV_LANG: lang, ENV_EXERCISES: "1" if exercises else "0", ENV_PAGE_TEXT: "1",
           ENV_KNOBS: encode(knobs)}
    with atomic_folder(out, OUTPUT_KIND, replace=True) as scratch:
        started, cpu_started = time.perf_counter(), time.process_time()
        with _environment(env), _process_settings_kept(), matplotlib.rc_context(font_settings(lang)):
            results, namespace = execute(path, scratch / "figures", echo=echo, on_cell=on_cell, lang=lang,
                                         quick=quick, blank=exercises and source is None)
        run = LessonRun(lesson, quick, results, time.perf_counter() - started, time.process_time() - cpu_started,
                        threads, namespace, lang, exercises, knobs)
        write_text(scratch / "index.html", render_html(run, scratch))
        write_json(scratch / "run.json", run_summary(run, scratch))
    for result in run.results:   # the figures now live in `out`, not in the scratch folder
        result.figures = [out / figure.relative_to(scratch) for figure in result.figures]
    return run


def run_summary(run: LessonRun, folder: Path) -> dict:
    failed = run.failed
    return {
        "lesson": run.lesson.number, "title": run.lesson.heading(run.lang), "quick": run.quick,
        "lang": run.lang, "exercises": run.exercises, "knobs": {k: show(v) for k, v in run.knobs.items()},
        "score": _score(run),
        "seconds": round(run.seconds, 2), "cpu_seconds": round(run.cpu_seconds, 2), "threads": run.threads,
        "failed": failed is not None,
        "error": None if failed is None else failed.error.strip().splitlines()[-1],
        "checks": run.checks,
        "cells": [{"line": r.cell.line, "kind": r.cell.kind, "seconds": round(r.seconds, 3),
                   "figures": [str(f.relative_to(folder)) for f in r.figures], "error": r.error}
                  for r in run.results],
    }


# --------------------------------------------------------------------------------------------------
# The HTML page
# --------------------------------------------------------------------------------------------------
_STYLE = """
body { font-family: system-ui, "Noto Sans CJK SC", "Noto Sans CJK JP", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.5; color: #1d1d1f; }
pre { padding: .6rem .8rem; overflow-x: auto; font-size: .85rem; line-height: 1.35; border-radius: 4px; }
pre.code { background: #f4f4f7; border-left: 3px solid #6b7bd6; }
pre.output { background: #fff; border: 1px solid #e2e2e8; color: #333; }
pre.error { background: #fff1f0; border-left: 3px solid #d33; color: #900; }
img { max-width: 100%; display: block; margin: .5rem 0; }
table { border-collapse: collapse; margin: .6rem 0; } th, td { border: 1px solid #ddd; padding: .2rem .5rem; }
.meta { color: #666; font-size: .85rem; } .time { color: #999; font-size: .75rem; text-align: right; }
.note { color: #666; font-style: italic; border-left: 3px solid #ccc; padding-left: .6rem; }
.knobs { background: #eef3ff; border: 1px solid #b8c6f0; padding: .3rem .6rem; border-radius: 4px; }
.prose { border-left: 3px solid #4a7; padding-left: .6rem; }
details.hint { background: #fffbe6; border: 1px solid #ecd98b; border-radius: 4px; padding: .2rem .6rem; margin: .3rem 0; }
.checks { background: #f1faf3; border: 1px solid #b9e2c2; padding: .4rem .8rem; border-radius: 4px; }
.checks.bad { background: #fff1f0; border-color: #f0b4b0; }
.checks li.wrong { color: #900; } .checks li.missing { color: #666; }
"""

# The page's fixed texts in each language (the lessons' own texts are in the lesson files).
_PAGE_TEXT = {
    "en": {"lesson": "Lesson", "of": "of 5", "quick": "quick mode (tiny random model: the numbers are not meaningful, "
                                                      "the mechanics are)",
           "normal": "normal mode", "exercises": "exercise mode (your answers)", "answered": "worked solutions",
           "stopped": "stopped with an error in the cell at line {line}", "ran": "ran to the end",
           "source": "Source", "hint": "Hint for", "checks": "Check yourself", "predictions": "predictions",
           "checklist": "The route's checklist (关键概念清单)", "glossary": "Glossary (术语表)",
           "ticked": "all exercises right", "unticked": "not yet: an exercise is wrong or missing",
           "elsewhere": "checked in lesson {lessons}", "term": "term", "meaning": "meaning",
           "threads": "torch thread(s)"},
    "zh": {"lesson": "第", "of": "课(共 5 课)", "quick": "快速模式(微型随机模型:数字没有意义,只检验机制)",
           "normal": "正常模式", "exercises": "练习模式(你的答案)", "answered": "参考答案",
           "stopped": "在第 {line} 行开始的代码单元出错并停止", "ran": "完整运行",
           "source": "源文件", "hint": "提示:", "checks": "自我检查", "predictions": "预测",
           "checklist": "关键概念清单", "glossary": "术语表(Glossary)",
           "ticked": "练习全部答对", "unticked": "尚未完成:有练习答错或未答",
           "elsewhere": "在第 {lessons} 课检查", "term": "术语", "meaning": "含义",
           "threads": "个 torch 线程"},
}


def _markdown(text: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _output_html(output: str) -> list[str]:
    """A cell's printed output: plain text as <pre>, prose a cell wrote through kit.Settings.say as text, and a
    diagram it drew through kit.Settings.svg as inline SVG (the lesson's own markup, embedded as is)."""

    parts = []
    rest = output
    while rest:
        found = [(i, marker) for marker in (PROSE_START, SVG_START) if (i := rest.find(marker)) >= 0]
        start, marker = min(found) if found else (-1, "")
        text, rest = (rest, "") if start < 0 else (rest[:start], rest[start + len(marker):])
        if text.strip():
            parts.append(f'<pre class="output">{html.escape(text.strip(chr(10)).rstrip())}</pre>')
        if start >= 0:
            end = rest.find(PROSE_END)
            body, rest = (rest, "") if end < 0 else (rest[:end], rest[end + len(PROSE_END):].lstrip("\n"))
            parts.append(f'<div class="prose">{_markdown(body)}</div>' if marker == PROSE_START
                         else f'<div class="diagram">{body}</div>')
    return parts


def _cell_html(result: CellResult, words: dict[str, str]) -> list[str]:
    cell = result.cell
    if cell.kind == "markdown":
        return [_markdown(cell.source)]
    if cell.kind == "note":
        return [f'<p class="note">{html.escape(cell.source)}</p>']
    parts = [f'<details class="hint"><summary>{html.escape(words["hint"])} <code>{html.escape(name)}</code>'
             f"</summary>{_markdown(text)}</details>" for name, text in cell.hints]
    parts.append(f'<pre class="code">{html.escape(cell.source)}</pre>')
    parts.extend(_output_html(result.output))
    parts.extend(_image(figure) for figure in result.figures)
    if result.error is not None:
        parts.append(f'<pre class="error">{html.escape(result.error.rstrip())}</pre>')
    if result.seconds >= 1:
        parts.append(f'<div class="time">{result.seconds:.1f} s</div>')
    return parts


def _score(run: LessonRun) -> str | None:
    checks = run.namespace.get("checks")
    return checks.score_line() if hasattr(checks, "score_line") else None


def _check_line(check: dict) -> str:

    line = f"{MARKS[check['status']]} {check['key']} — {check['name']}"
    if check["status"] == RIGHT:
        return line + f": {check['answer']}"
    if check["status"] == MISSING:
        return line
    return line + f": {check['answer']} → {check['expected']}" + (f" ({check['why']})" if check["why"] else "")


def _checklist_html(run: LessonRun, words: dict[str, str]) -> str:
    """The route's eight concepts: ticked when this lesson's exercises for it are all right."""

    checks = run.namespace.get("checks")
    status = checks.concepts() if hasattr(checks, "concepts") else {}
    items = []
    for concept in CONCEPTS:
        if concept.key in status:
            box, note = ("☑", words["ticked"]) if status[concept.key] else ("☐", words["unticked"])
        else:
            box, note = "–", words["elsewhere"].format(lessons=", ".join(map(str, concept.lessons)))
        items.append(f'<li data-concept="{concept.key}">{box} {html.escape(concept.zh)} / '
                     f"{html.escape(concept.en)} <span class=\"meta\">({html.escape(note)})</span></li>")
    return f'<div class="checklist"><h2>{html.escape(words["checklist"])}</h2><ul>{"".join(items)}</ul></div>'


def _glossary_html(run: LessonRun, words: dict[str, str]) -> str:
    """The bilingual glossary, keyed to the route's checklist; definitions in the page's language."""

    rows = "".join(f"<tr><td>{html.escape(c.zh)}</td><td>{html.escape(c.en)}</td>"
                   f"<td>{html.escape(c.definition(run.lang))}</td></tr>" for c in CONCEPTS)
    return (f'<div class="glossary"><h2>{html.escape(words["glossary"])}</h2><table><tr><th>中文</th>'
            f"<th>English</th><th>{html.escape(words['meaning'])}</th></tr>{rows}</table></div>")


def _checks_html(run: LessonRun, words: dict[str, str]) -> str:

    checks = run.checks
    if not checks:
        return ""
    exercises = [c for c in checks if c["kind"] == "exercise"]      # a prediction's ✗ is a finding, not a fault
    bad = " bad" if any(c["status"] == WRONG for c in exercises) or (
        not run.exercises and any(c["status"] == MISSING for c in exercises)) else ""
    items = "".join(f'<li class="{c["status"]}">{html.escape(_check_line(c))}</li>' for c in checks)
    return (f'<div class="checks{bad}"><b>{html.escape(words["checks"])}: {html.escape(_score(run) or "")}</b>'
            f"<ul>{items}</ul></div>" + _checklist_html(run, words) + _glossary_html(run, words))


def render_html(run: LessonRun, folder: Path) -> str:
    """The executed lesson as one self-contained HTML page (no external files: figures are data: URIs)."""
    import torch

    lesson, failed, words = run.lesson, run.failed, _PAGE_TEXT[run.lang]
    mode = words["quick"] if run.quick else words["normal"]
    answers = words["exercises"] if run.exercises else words["answered"]
    status = words["stopped"].format(line=failed.cell.line) if failed else words["ran"]
    meta = (f"{words['lesson']} {lesson.number} {words['of']}, {mode}, {answers}; {status}, {run.seconds:.1f} s "
            f"({run.cpu_seconds:.1f} CPU s), {time.strftime('%Y-%m-%d %H:%M')}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {run.threads} {words['threads']}. {words['source']}: {lesson.file}.")
    body = [f'<p class="meta">{html.escape(meta)}</p>']
    if run.knobs:
        body.insert(0, f'<p class="knobs">{html.escape(page_line(run.knobs, run.lang))}</p>')
    for result in run.results:
        body.extend(_cell_html(result, words))
    body.append(_checks_html(run, words))
    lang = "zh-CN" if run.lang == "zh" else "en"
    return (f"<!DOCTYPE html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">"
            f"<title>loralab lesson {lesson.number}: {html.escape(lesson.heading(run.lang))}</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
