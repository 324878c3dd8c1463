# Everything a fresh machine needs: `make run` trains, `make test` tests. Both set up .venv first.
# GPU machines: pick your CUDA build of torch, e.g. make run TORCH_SPEC='torch==2.13.0' PIP_ARGS='--index-url <your CUDA wheel index>'
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_ARGS ?=
BIN := $(VENV)/bin

.PHONY: setup run test lint bench
setup: $(BIN)/recjobs

$(BIN)/recjobs: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# The main job through TorchX on this machine: with no arguments, `torchx run` takes
# .torchxconfig's defaults (components/train.py:train on local_cwd, the quickstart config) and
# the run directory is runs/<app id>. PATH: the job's torchrun is the venv's.
run: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/torchx run

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check recjobs components tests benchmarks && $(BIN)/ruff format --check recjobs components tests benchmarks

# Performance figures (not a test): trainer vs bare loop, catalogue scaling, evaluation, time to
# first step. Medians of 3 runs; about 8 minutes on 2 cores. See docs/performance.md.
bench: setup
	$(BIN)/python benchmarks/bench.py
