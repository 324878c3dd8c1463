# Everything a fresh machine needs: `make run` trains, `make test` tests. Both set up .venv first.
# torch and the runtime dependencies come from a wheelhouse in the cache (docker/wheelhouse.sh),
# which the image build (make image) installs from too: PyPI's torch, several GB with its CUDA
# libraries, is downloaded once. Another torch build, e.g. for your CUDA version:
#   make run TORCH_SPEC='torch==2.13.0+cu128' PIP_ARGS='--extra-index-url <your CUDA wheel index>'
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP_ARGS ?=
BIN := $(VENV)/bin

.PHONY: setup run test lint bench smoke image k8s-up k8s-down
setup: $(BIN)/recjobs

# (recjobs.egg-info: left by the earlier setuptools backend; importlib.metadata would read its
# sorted entry points before the venv's, see pyproject.toml.)
$(BIN)/recjobs: pyproject.toml docker/wheelhouse.sh
	rm -rf recjobs.egg-info
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	wheels=$$(PYTHON=$(BIN)/python TORCH_SPEC='$(TORCH_SPEC)' PIP_ARGS='$(PIP_ARGS)' docker/wheelhouse.sh) \
	  && $(BIN)/python -m pip install -q --no-index --find-links "$$wheels" "$(TORCH_SPEC)" -e . \
	  && $(BIN)/python -m pip install -q --find-links "$$wheels" -e ".[dev]"
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
# first step, batch top-100 for 100k users. Medians of 3 runs; about 11 minutes on 2 cores.
# See docs/performance.md.
bench: setup
	$(BIN)/python benchmarks/bench.py

# The training image without any registry (docker/build-image.sh): a debootstrap'ed Debian base
# and the wheelhouse the venv came from, built in a private dockerd whose data root is the cache
# (docker/with-dockerd.sh; root, dockerd and debootstrap needed), the daemon tests/test_docker.py
# uses. The image's torch is the venv's (TORCH_SPEC/PIP_ARGS).
DOCKER_BUILD_ENV = PYTHON=$(abspath $(BIN)/python) TORCH_SPEC='$(TORCH_SPEC)' PIP_ARGS='$(PIP_ARGS)'
image: setup
	env $(DOCKER_BUILD_ENV) docker/with-dockerd.sh docker/build-image.sh

# CI smoke runs on CPU: the TorchX job (1x2 DDP, tiny data, 2 epochs) on local_cwd and, where Docker
# can run (root, dockerd), on local_docker with the CPU image. Seconds of training each.
smoke: setup
	env $(DOCKER_BUILD_ENV) docker/smoke.sh

# A one-node Kubernetes cluster with Volcano on this machine (k8s/dev/cluster.sh; root): built
# from the Go module proxy on first use (cached), with the image pushed to a registry of its own
# on loopback, pulled by the node, and k8s/ applied.
# KUBECONFIG=.k8s/kubeconfig then makes the README's Kubernetes commands work here, and
# tests/test_k8s.py runs against it. k8s-down stops it all.
k8s-up: setup
	PYTHON=$(abspath $(BIN)/python) TORCH_SPEC='$(TORCH_SPEC)' PIP_ARGS='$(PIP_ARGS)' k8s/dev/cluster.sh up

k8s-down:
	k8s/dev/cluster.sh down
