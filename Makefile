# Everything a fresh machine needs: `make run` trains, `make test` tests. Both set up .venv first.
# GPU machines: pick your CUDA build of torch, e.g. make run TORCH_SPEC='torch==2.13.0' PIP_ARGS='--index-url <your CUDA wheel index>'
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_ARGS ?=
BIN := $(VENV)/bin

.PHONY: setup run test lint bench smoke image-cpu
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

# The CPU image for local_docker without any registry (docker/build-cpu-image.sh): a debootstrap'ed
# Debian base and wheels made here, built in a private dockerd whose data root is the cache
# (docker/with-dockerd.sh; root, dockerd and debootstrap needed), the daemon tests/test_docker.py
# uses. The image's torch, whatever torch the venv has (make's TORCH_SPEC/PIP_ARGS may be CUDA):
CPU_TORCH_SPEC ?= torch==2.13.0
CPU_PIP_ARGS ?=
DOCKER_BUILD_ENV = PYTHON=$(abspath $(BIN)/python) TORCH_SPEC='$(CPU_TORCH_SPEC)' PIP_ARGS='$(CPU_PIP_ARGS)'
image-cpu: setup
	env $(DOCKER_BUILD_ENV) docker/with-dockerd.sh docker/build-cpu-image.sh

# CI smoke runs on CPU: the TorchX job (1x2 DDP, tiny data, 2 epochs) on local_cwd and, where Docker
# can run (root, dockerd), on local_docker with the CPU image. Seconds of training each.
smoke: setup
	env $(DOCKER_BUILD_ENV) docker/smoke.sh
