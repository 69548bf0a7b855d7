"""The playground page (GET /) in a real headless browser: it lists the server's models, runs two of them
side by side on one prompt — streamed for a causal LM, labels for a classifier — and shows exactly what the
API answers. The `browser` fixture is tests/conftest.py's (skipped with the reason where chromium is missing)."""
from __future__ import annotations

import httpx
import pytest

pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def _run_page(browser, url: str, left: str, right: str, prompt: str, chat: bool | None = None) -> tuple[str, str]:
    browser.get(url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda b: len(Select(b.find_element(By.ID, "model-a")).options) > 1)
    Select(browser.find_element(By.ID, "model-a")).select_by_value(left)
    Select(browser.find_element(By.ID, "model-b")).select_by_value(right)
    if chat is not None and browser.find_element(By.ID, "chat").is_selected() != chat:
        browser.find_element(By.ID, "chat").click()
    box = browser.find_element(By.ID, "prompt")
    box.clear()
    box.send_keys(prompt)
    browser.find_element(By.ID, "run").click()
    wait.until(lambda b: b.execute_script(
        "return ['out-a', 'out-b'].every(id => document.getElementById(id).dataset.done === '1')"))
    return tuple(browser.execute_script(f"return document.getElementById('{side}').textContent")
                 for side in ("out-a", "out-b"))


def test_playground_streams_two_adapters_side_by_side(browser, start_server, lm_files):
    base, adapters = lm_files
    server = start_server(model=str(base), served_name="base", adapters=adapters)
    left, right = _run_page(browser, server.url, "a", "b", "the cat sat on", chat=False)
    assert browser.title == "loralab playground"
    options = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "model-a")).options]
    assert options == ["base", "a", "b", "c"]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        expected = [c.post("/v1/completions", json={"model": m, "prompt": "the cat sat on", "max_tokens": 48,
                                                    "temperature": 0}).json()["choices"][0]["text"] for m in "ab"]
    assert [left, right] == expected and left != right
    assert "tokens in" in browser.find_element(By.ID, "meta-a").text
    assert browser.execute_script("return document.getElementById('out-a').dataset.finish") in ("length", "stop")


def test_playground_classifies_with_two_adapters(browser, start_server, classifier_files):
    base, adapters = classifier_files
    server = start_server(adapters=adapters)
    left, right = _run_page(browser, server.url, "pos", "topic", "the red dog")
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for shown, model in ((left, "pos"), (right, "topic")):
            item = c.post("/v1/classify", json={"model": model, "input": "the red dog"}).json()["data"][0]
            assert shown.splitlines()[0] == item["label"]
            assert shown.splitlines()[1:] == [f"{k}: {v:.3f}" for k, v in item["probs"].items()]
