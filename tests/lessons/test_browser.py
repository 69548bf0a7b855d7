"""The executed lesson pages in a real headless browser (Debian's chromium through Selenium): each page
renders its lesson and every <img> (the figures, embedded as base64 PNG) has loaded with a non-zero size; the
Chinese pages render Chinese glyphs (not tofu) and their hints open.

The `browser` fixture (tests/conftest.py) is shared with the serve playground test; `make setup` installs
chromium, chromium-driver and fonts-noto-cjk with apt-get where it can; elsewhere this test is skipped with the
reason."""
from __future__ import annotations

import pytest

CJK_HINT = "提示"


def _check_page(browser, out, number: int, heading: str, score: str) -> None:
    browser.get((out / "index.html").resolve().as_uri())
    assert browser.title.startswith(f"loralab lesson {number}:")
    assert browser.execute_script("return document.readyState") == "complete"
    h1 = browser.execute_script("return document.querySelector('h1') && document.querySelector('h1').innerText")
    assert h1 and h1.startswith(heading)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
    figures = list((out / "figures").glob("*.png"))
    assert len(images) == len(figures) > 0, number
    assert all(complete and width > 0 and height > 0 for complete, width, height in images), (number, images)
    checks = browser.execute_script("return document.querySelector('.checks').innerText")
    assert score in checks          # (a prediction may disagree with its measurement: ✗ there is a finding)


def test_pages_render_with_every_figure_loaded(quick_lessons, browser):
    for number, (run, out) in quick_lessons.items():
        _check_page(browser, out, number, f"Lesson {number}", "0 wrong, 0 missing")


def test_chinese_pages_render_glyphs_and_open_hints(quick_lessons_zh, browser, tmp_path):
    from loralab.lessons.kit import cjk_font

    if cjk_font() is None:
        pytest.skip("no CJK font installed (apt-get install fonts-noto-cjk; `make setup` does it)")
    for number, (run, out) in quick_lessons_zh.items():
        _check_page(browser, out, number, f"阶段 {number}", "答错 0 题,未答 0 题")
        assert browser.execute_script("return document.documentElement.lang") == "zh-CN"
        # a glyph the font lacks renders as the same-width box for every character; real glyphs differ in width
        widths = browser.execute_script("""
            const probe = s => { const e = document.createElement('span'); e.textContent = s;
              document.body.appendChild(e); const w = e.getBoundingClientRect().width; e.remove(); return w; };
            return [probe('一一一一'), probe('矩矩矩矩'), probe('iiii')];""")
        assert widths[0] > widths[2] > 0
        opened = browser.execute_script("""
            const d = document.querySelector('details.hint'); const closed = d.getBoundingClientRect().height;
            d.open = true; return [closed, d.getBoundingClientRect().height, d.innerText];""")
        assert 0 < opened[0] < opened[1] and CJK_HINT in opened[2]
    browser.save_screenshot(str(tmp_path / "lesson-zh.png"))
