# Every target builds its own virtual environment: a fresh machine needs only Python 3.11+ and make.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("harvester needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

## demo: start the bundled simulator, harvest a sample call list with faults on, print the summary
demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

## test: the whole test suite against the bundled simulator on loopback
test: $(STAMP)
	$(PY) -m pytest -q

## lint: ruff, ruff format --check, mypy --strict
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

## bench: every benchmark, about twenty-five minutes; figures in bench/README.md
bench: $(STAMP)
	$(PY) bench/run.py 20000 16 64 256
	$(PY) bench/bytecodes.py 300 1300 16
	$(PY) bench/ratelimit.py 15
	$(PY) bench/ratelimit.py 22 3
	$(PY) bench/ratelaw.py 30
	$(PY) bench/memory.py 3000 300000 10000000
	$(PY) bench/input.py 10000000
	$(PY) bench/ledger.py 200000 1000
	$(PY) bench/nights.py 1000 100

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
