# Everything runs from a local virtualenv that the first target to need it creates.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
RUNTIME := $(VENV)/.installed-runtime
STAMP  := $(VENV)/.installed-test

.PHONY: install repro serve test test-fast coverage lint mutation fuzz conformance conformance-ci bench bench-quick clean

# What `make repro` and `make serve` need: the package and its three runtime dependencies.
$(RUNTIME): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e .
	touch $(RUNTIME)

# Tests, lint, mutation and benchmarks also need the test extra (clients, Chromium driver, linters).
$(STAMP): $(RUNTIME)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## make repro: reproduce the bug with every write discipline, then over wss:// (--tls), and show the fix is clean
repro: $(RUNTIME)
	$(PY) -m repro
	$(PY) -m repro --tls

## make serve: run the fixed server on ws://127.0.0.1:8765 (open http://127.0.0.1:8765/)
serve: $(RUNTIME)
	$(PY) -m server

## make test: the whole suite (browser tests need Chromium; .ci/run installs it)
test: $(STAMP)
	WSRACE_CHECK_AFFINITY=1 $(PY) -m pytest $(PYTEST_ARGS)

## make coverage: the suite under coverage.py (branches of server/ and repro/, in every process it starts), but the
## tests marked timing (tracing halves the server's speed); fails below the floors in tests/coverage_report.py
coverage: $(STAMP)
	rm -rf reports/coverage && mkdir -p reports/coverage
	WSRACE_CHECK_AFFINITY=1 $(PY) -m coverage run -m pytest -m "not timing" $(PYTEST_ARGS)
	$(PY) -m coverage combine -q
	$(PY) -m tests.coverage_report $(if $(PYTEST_ARGS),,--floor)

test-fast: $(STAMP)
	WSRACE_CHECK_AFFINITY=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check server repro wsrace tests $(wildcard bench) $(wildcard examples)
	$(PY) -m mypy server repro wsrace tests $(wildcard bench)

mutation: $(STAMP)
	$(PY) -m tests.mutation

## make fuzz: every fuzz target (atheris/libFuzzer) for FUZZ_SECONDS each; prints executions/s and coverage
FUZZ_SECONDS ?= 60
fuzz: $(STAMP)
	$(PY) -m tests.fuzz --seconds $(FUZZ_SECONDS)

## make conformance: every Autobahn case (1.* - 13.*, via kosoku) against /echo; reports in reports/conformance/
conformance: $(STAMP)
	$(PY) -m tests.conformance $(CONFORMANCE_ARGS)

## make conformance-ci: groups 1-10 and a fixed sample of the compression groups 12/13 (what CI runs)
conformance-ci: $(STAMP)
	$(PY) -m tests.conformance --ci $(CONFORMANCE_ARGS)

bench: $(STAMP)
	$(PY) -m bench
	$(PY) -m bench.hops
	$(PY) -m bench.positions

bench-quick: $(STAMP)
	$(PY) -m bench --quick
	$(PY) -m bench --quick --tls
	$(PY) -m bench.hops --quick
	$(PY) -m bench.positions --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache reports
