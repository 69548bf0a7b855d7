"""The lesson executor: percent-format parsing (the same cells as jupytext), cell-by-cell execution with
captured output, figures and errors, the HTML page, and the owned output folder."""
from __future__ import annotations

import json

import pytest

from loralab.errors import LoraLabError
from loralab.lessons import LESSONS, Lesson
from loralab.lessons.runner import Cell, execute, parse_cells, run_lesson

SCRIPT = '''import os
# %% [markdown]
# # Title
#
# Some *text* with `code`.

# %%
x = 2 + 3
print("x =", x)

# %% a cell with a title
import sys
print("to stderr", file=sys.stderr)
import matplotlib.pyplot as plt
plt.plot([1, 2, 3])
plt.figure()
plt.plot([3, 2, 1])

# %%

# %% [md]
#no space after the hash
#
# <script>alert(1)</script>

# %%
y = x * 2
raise ValueError(f"broken with y = {y}")

# %%
print("never runs")
'''


def test_parse_cells_kinds_sources_and_lines():
    cells = parse_cells(SCRIPT)
    assert [c.kind for c in cells] == ["code", "markdown", "code", "code", "markdown", "code", "code"]
    assert cells[0] == Cell("code", "import os", 1)                 # before the first marker: a code cell
    assert cells[1].source == "# Title\n\nSome *text* with `code`." and cells[1].line == 3
    assert cells[2].source == 'x = 2 + 3\nprint("x =", x)' and cells[2].line == 8
    assert cells[4].source == "no space after the hash\n\n<script>alert(1)</script>"   # empty cell dropped
    assert cells[5].line == 27


def test_parse_matches_jupytext_on_every_lesson():
    jupytext = pytest.importorskip("jupytext")
    for lesson in LESSONS:
        notebook = jupytext.read(lesson.path)
        ours = [(c.kind, c.source) for c in parse_cells(lesson.path.read_text(encoding="utf-8"))]
        assert ours == [(c.cell_type, c.source) for c in notebook.cells], lesson.file


def test_execute_captures_output_figures_and_the_first_error(tmp_path):
    path = tmp_path / "lesson_x.py"
    path.write_text(SCRIPT, encoding="utf-8")
    results, namespace = execute(path, tmp_path / "figures")
    assert namespace["x"] == 5 and namespace["y"] == 10 and "never runs" not in str(results)
    assert [r.cell.kind for r in results] == ["code", "markdown", "code", "code", "markdown", "code"]  # stopped
    assert results[2].output == "x = 5\n"
    assert results[3].output == "to stderr\n"
    assert [f.name for f in results[3].figures] == ["cell04-1.png", "cell04-2.png"]
    assert all(f.read_bytes().startswith(b"\x89PNG") for f in results[3].figures)
    error = results[5].error
    assert error.strip().endswith("ValueError: broken with y = 10")
    assert f'File "{path}", line 28' in error                       # the lesson file's own line number
    assert "runner.py" not in error


def test_run_lesson_writes_a_self_contained_page_and_replaces_only_its_own(tmp_path):
    (tmp_path / "lesson_x.py").write_text(SCRIPT, encoding="utf-8")
    lesson = Lesson(9, "lesson_x.py", "A test lesson", ("nothing",), folder=tmp_path)
    out = tmp_path / "out"
    run = run_lesson(lesson, out, tmp_path / "cache", quick=True)
    assert run.failed is not None and run.failed.cell.line == 27
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 2 and "<h1>Title</h1>" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page    # raw HTML is escaped
    assert "x = 5" in page and "ValueError: broken with y = 10" in page
    summary = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert summary["failed"] and summary["error"] == "ValueError: broken with y = 10" and summary["quick"]
    assert summary["cells"][3]["figures"] == ["figures/cell04-1.png", "figures/cell04-2.png"]
    assert run.results[3].figures[0] == out / "figures" / "cell04-1.png"
    run_lesson(lesson, out, tmp_path / "cache")                      # our own page: replaced
    assert json.loads((out / "run.json").read_text(encoding="utf-8"))["quick"] is False
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(LoraLabError, match="not a folder loralab wrote"):
        run_lesson(lesson, foreign, tmp_path / "cache")
    assert (foreign / "cat.jpg").read_bytes() == b"meow"


def test_a_lesson_sees_its_settings_and_leaves_the_process_as_it_was(tmp_path, monkeypatch):
    import torch

    (tmp_path / "lesson_s.py").write_text(
        "# %%\nfrom loralab.lessons import kit\nS = kit.settings()\nthreads = __import__('torch').get_num_threads()\n",
        encoding="utf-8")
    monkeypatch.delenv("LORALAB_LESSON_QUICK", raising=False)
    before = torch.get_num_threads()
    lesson = Lesson(9, "lesson_s.py", "settings", (), folder=tmp_path)
    run = run_lesson(lesson, tmp_path / "out", tmp_path / "cache", quick=False, threads=1)
    S = run.namespace["S"]
    assert S.quick is False and S.cache == (tmp_path / "cache").resolve() and S.model == "all-minilm-l6-v2"
    assert run.namespace["threads"] == 1 and torch.get_num_threads() == before
    import os
    assert "LORALAB_LESSON_QUICK" not in os.environ
