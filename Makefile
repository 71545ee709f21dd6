# One-command set-up: every target creates .venv and installs into it when needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo demo-reid test test-all lint bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

## Train + evaluate MetaGait on the embedded synthetic CASIA-B (CPU), then print the results table.
demo: $(STAMP)
	$(PY) src/train.py experiment=demo_metagait

## Train + evaluate the reduced DR50 on the embedded synthetic multi-domain ReID data (CPU).
demo-reid: $(STAMP)
	$(PY) src/train.py experiment=demo_dr50

## The default test suite (slow tests excluded; see pyproject.toml).
test: $(STAMP)
	$(PY) -m pytest -q

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench

bench: $(STAMP)
	$(PY) bench/bench_metagait.py

clean:
	rm -rf outputs logs .pytest_cache
