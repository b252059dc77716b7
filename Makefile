# Everything runs from a local virtualenv that the first target to need it creates.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install repro serve test test-fast lint mutation bench bench-quick clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## make repro: reproduce the bug with every write discipline and show the fix is clean
repro: $(STAMP)
	$(PY) -m repro

## make serve: run the fixed server on ws://127.0.0.1:8765 (open http://127.0.0.1:8765/)
serve: $(STAMP)
	$(PY) -m server

## make test: the whole suite (browser tests need Chromium; .ci/run installs it)
test: $(STAMP)
	WSRACE_CHECK_AFFINITY=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	WSRACE_CHECK_AFFINITY=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check server repro tests $(wildcard bench) $(wildcard examples)
	$(PY) -m mypy server repro $(wildcard bench)

mutation: $(STAMP)
	$(PY) -m tests.mutation

bench: $(STAMP)
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m bench --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
