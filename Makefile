# The two commands of the quick start: `make demo` and `make test`.
# Each creates .venv on first use (see scripts/setup_env.sh) and is fast afterwards.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast lint format bench clean

setup:
	@VENV=$(VENV) bash scripts/setup_env.sh

demo: setup
	$(VENV)/bin/selfimprove demo

test: setup
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check selfimprove tests scripts benchmarks
	$(VENV)/bin/ruff format --check selfimprove tests scripts benchmarks

format: setup
	$(VENV)/bin/ruff check --fix selfimprove tests scripts benchmarks
	$(VENV)/bin/ruff format selfimprove tests scripts benchmarks

bench: setup
	$(PY) benchmarks/bench_generate.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
