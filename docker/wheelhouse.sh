#!/usr/bin/env bash
# Download torch and recjobs' runtime dependencies once, as wheels, into a wheelhouse that both
# the development venv (`make setup`) and the image (docker/build-image.sh) install from:
#
#   docker/wheelhouse.sh            prints the wheelhouse directory on stdout
#
# PyPI's Linux torch is the CUDA build (several GB of nvidia/cuda wheels); without this, the venv
# and the image would each download it. `pip wheel` into the same directory is incremental: a
# wheel already there is not downloaded again, so a warm run only asks the index which versions
# the pins resolve to. One wheelhouse per Python version, platform, TORCH_SPEC and PIP_ARGS (so
# that torch builds never mix), under $RECJOBS_CACHE_DIR (default ~/.cache/recjobs)/wheels;
# `rm -rf` it to reclaim the space.
#
# Environment: PYTHON (default python3) makes the wheels for its version and platform;
# TORCH_SPEC (default torch==2.13.0); PIP_ARGS, extra pip options, e.g. a CUDA wheel index.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PIP_ARGS=${PIP_ARGS:-}
cache=${RECJOBS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/recjobs}

tag=$("$PYTHON" -c 'import sys, sysconfig; print(f"py{sys.version_info[0]}{sys.version_info[1]}-{sysconfig.get_platform()}")')
key=$(printf '%s\n' "$TORCH_SPEC" "$PIP_ARGS" | sha256sum | cut -c1-8)
wheels=$cache/wheels/$tag-$key
mkdir -p "$wheels"
# pip reuses any file in its --wheel-dir by name, unchecked: a wheel cut short (a full disk, a
# killed run) would poison the wheelhouse for every later run. So pip writes into a folder of its
# own, which holds links to the wheels already complete, and only once it has succeeded do its
# new wheels join the wheelhouse (a rename each: whole or absent).
partial=$(mktemp -d "$cache/wheels/.partial.XXXXXX")
requirements=$(mktemp)
trap 'rm -f "$requirements"; rm -rf "$partial"' EXIT
for whl in "$wheels"/*.whl; do
  if [ -e "$whl" ]; then ln "$whl" "$partial/"; fi
done
# Python 3.10 has no tomllib; pip vendors the same parser.
"$PYTHON" - "$root/pyproject.toml" >"$requirements" <<'EOF'
import sys
try:
    import tomllib
except ImportError:
    from pip._vendor import tomli as tomllib
with open(sys.argv[1], "rb") as f:
    pyproject = tomllib.load(f)
# build-system.requires as well: the build backend, which pip resolves with its dependencies, for
# offline builds of the package itself (make setup's `pip install --no-index -e .`, the image).
print(*pyproject["project"]["dependencies"], *pyproject["build-system"]["requires"], sep="\n")
EOF
# shellcheck disable=SC2086
"$PYTHON" -m pip wheel --quiet --wheel-dir "$partial" $PIP_ARGS "$TORCH_SPEC" -r "$requirements" >&2
for whl in "$partial"/*.whl; do
  if [ ! -e "$wheels/${whl##*/}" ]; then mv "$whl" "$wheels/"; fi
done
echo "$wheels"
