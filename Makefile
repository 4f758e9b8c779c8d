# The two commands a newcomer needs: `make test` and (once the codec lands) `make demo`.
# Every target builds its own virtual environment from pyproject.toml.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
export WANDB_MODE ?= offline

.PHONY: venv test bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

test: $(STAMP)
	$(PY) -m pytest

bench: $(BENCH_STAMP)
	$(PY) bench/quantizer.py

lint: $(STAMP)
	$(PY) -m ruff check codec tests bench

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
