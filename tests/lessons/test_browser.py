"""The executed lesson pages in a real headless browser (Debian's chromium through Selenium): each page
renders its lesson and every <img> (the figures, embedded as base64 PNG) has loaded with a non-zero size.

The `browser` fixture (tests/conftest.py) is shared with the serve playground test; `make setup` installs
chromium and chromium-driver with apt-get where it can; elsewhere this test is skipped with the reason."""
from __future__ import annotations


def test_pages_render_with_every_figure_loaded(quick_lessons, browser):
    for number, (run, out) in quick_lessons.items():
        browser.get((out / "index.html").resolve().as_uri())
        assert browser.title.startswith(f"loralab lesson {number}:")
        assert browser.execute_script("return document.readyState") == "complete"
        heading = browser.execute_script("return document.querySelector('h1') && document.querySelector('h1').innerText")
        assert heading and heading.startswith(f"Lesson {number}")
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
        figures = list((out / "figures").glob("*.png"))
        assert len(images) == len(figures) > 0, number
        assert all(complete and width > 0 and height > 0 for complete, width, height in images), (number, images)
        checks = browser.execute_script("return document.querySelector('.checks').innerText")
        assert "answers verified" in checks and "✗" not in checks

