"""Fixtures shared by every test folder:

- the shared data (GLUE, E2E, ...): the `shared_data` fixture (the folder), the
  `needs_shared_data("glue/SST-2/train.tsv", ...)` marker and, for fixtures, `need_shared_data(...)`, all found as loralab's readers find it
  (`loralab.data.builtin.shared_data_dir`: $LORALAB_SHARED_DATA, else ../shared/data next to the checkout).
  Where it is missing a test is skipped, saying what it needs; under CI (`CI=true`) it fails instead, so a
  CI machine without the data cannot pass by skipping the experiments.
- a headless Chromium (Debian's chromium and chromium-driver through Selenium) for the pages loralab ships
  (lesson pages, the serve playground). `make setup` installs the browser with apt-get where it can;
  elsewhere the tests that use it are skipped with the reason.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from loralab.errors import LoraLabError


def in_ci() -> bool:
    """CI=true (GitHub Actions, GitLab, most runners set it; `CI=1` counts too)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_shared_data(*relative: str) -> Path:
    """The shared data folder, holding each of `relative` (paths inside it); where the folder or one of them
    is missing: pytest.fail under CI, pytest.skip elsewhere, naming what is missing and where it looked."""
    from loralab.data.builtin import shared_data_dir

    try:
        folder = shared_data_dir()
    except LoraLabError as exc:           # neither $LORALAB_SHARED_DATA nor ../shared/data: the library's reason
        missing, folder = str(exc), None
    else:
        absent = [path for path in relative if not (folder / path).exists()]
        missing = f"{', '.join(absent)} not in the shared data folder {folder}" if absent else None
    if missing:
        if in_ci():
            pytest.fail(f"CI=true but the shared data is missing: {missing}", pytrace=False)
        pytest.skip(f"needs the shared data: {missing}")
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder ($LORALAB_SHARED_DATA, else ../shared/data); skip locally / fail in CI without it."""
    return require_shared_data()


@pytest.fixture(scope="session")
def need_shared_data():
    """`require_shared_data` for fixtures (a fixture cannot take a marker): need_shared_data("e2e/test.txt")."""
    return require_shared_data


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_shared_data(*paths): the test reads these paths of the shared data "
                                       "folder (skipped without them; a failure under CI=true)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs_shared_data"):
        require_shared_data(*mark.args)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} is missing (apt-get install chromium chromium-driver; `make setup` tries it)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")          # Selenium Manager must not try to download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1200,900",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER, log_output=subprocess.DEVNULL), options=options)
    except Exception as exc:  # a browser that cannot start here is an environment problem, said in one line
        pytest.skip(f"chromium did not start: {str(exc).strip().splitlines()[0]}")
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()
