# Everything a fresh machine needs: `make run` trains, `make test` tests. Both set up .venv first.
# GPU machines: pick your CUDA build of torch, e.g. make run TORCH_SPEC='torch==2.13.0' PIP_ARGS='--index-url <your CUDA wheel index>'
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_ARGS ?=
BIN := $(VENV)/bin

.PHONY: setup run test lint
setup: $(BIN)/recjobs

$(BIN)/recjobs: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

run: setup
	$(BIN)/recjobs train retrieval --config config/quickstart.yaml --run-dir runs/quickstart

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check recjobs components tests && $(BIN)/ruff format --check recjobs components tests
