#!/usr/bin/env bash
# Build the CPU training image from docker/Dockerfile without an image registry:
#
#   docker/build-cpu-image.sh [IMAGE]      (default recjobs:cpu, in the daemon DOCKER_HOST names)
#   docker/with-dockerd.sh docker/build-cpu-image.sh      (the same in a private daemon)
#
# 1. Wheelhouse: torch ($TORCH_SPEC, a CPU build) and the dependencies in pyproject.toml as wheels,
#    made on this machine with pip (PIP_ARGS adds pip options, e.g. an index of CPU torch wheels).
#    The image's python is Debian bookworm's 3.11, so this machine's $PYTHON must be 3.11 too.
#    Cached per pyproject.toml, TORCH_SPEC and PIP_ARGS.
# 2. Base image recjobs-base:bookworm-<key>: Debian bookworm (minbase, python3, python3-venv) made
#    with debootstrap from a Debian mirror and `docker import`ed. Needs root and debootstrap the
#    first time; the rootfs tarball is cached.
# 3. docker build with PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels: the build itself uses no network.
#    The wheels are copied to docker/wheels/ for the build and removed after it. Docker's layer
#    cache (the daemon's data root) makes a rebuild with unchanged inputs take seconds; a change to
#    the Dockerfile, pyproject.toml or the code rebuilds the layers from there on.
#
# Caches in $RECJOBS_CACHE_DIR (default ~/.cache/recjobs); the last build's log, with the time of
# each step, is $RECJOBS_CACHE_DIR/build-cpu-image.log. Quiet on success; on failure one error
# line and the end of the log.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
image=${1:-recjobs:cpu}
cache=${RECJOBS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/recjobs}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PIP_ARGS=${PIP_ARGS:-}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache/base" "$cache/wheels"
log=$cache/build-cpu-image.log
: >"$log"

scratch=()
cleanup() {
  local path mnt
  for path in "${scratch[@]}"; do
    # debootstrap mounts proc and sys in the rootfs; never delete through a mount point.
    for mnt in "$path/proc" "$path/sys" "$path/dev/pts" "$path/dev"; do
      if mountpoint -q "$mnt" 2>/dev/null; then umount -l "$mnt" 2>/dev/null || true; fi
    done
    rm -rf --one-file-system "$path" 2>/dev/null || true
  done
  rm -f docker/wheels/*.whl
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "build-cpu-image: $*" >&2
  if [ -s "$log" ]; then
    echo "build-cpu-image: last lines of $log:" >&2
    tail -n 15 "$log" | sed 's/^/  | /' >&2
  fi
  exit 1
}
step() { # step NAME COMMAND...: run COMMAND with its output in the log, and time it
  local name=$1 start=$SECONDS
  shift
  echo "== $name" >>"$log"
  "$@" >>"$log" 2>&1 || fail "$name failed"
  echo "== $name: $((SECONDS - start)) s" >>"$log"
}

command -v docker >/dev/null || fail "docker (the CLI) not found (Debian: apt-get install docker.io)"
docker version >/dev/null 2>&1 || fail "no Docker daemon at ${DOCKER_HOST:-the default socket} (docker/with-dockerd.sh starts a private one)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
  || fail "$PYTHON is not Python 3.11: the wheels must fit the image's python (Debian bookworm's 3.11); set PYTHON"

# 1. The wheelhouse (first: a wrong TORCH_SPEC fails before anything is built).
wheels_key=$({ cat pyproject.toml; printf '%s\n' "$TORCH_SPEC" "$PIP_ARGS" wheels-v1; } | sha256sum | cut -c1-16)
wheels=$cache/wheels/$wheels_key
check_cpu_torch() { # resolve TORCH_SPEC without downloading it: a CUDA build is gigabytes
  local report=$1
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install --dry-run --quiet --ignore-installed --no-deps --report "$report" \
    $PIP_ARGS "$TORCH_SPEC" || return
  "$PYTHON" - "$report" <<'EOF'
import json, sys
(torch,) = json.load(open(sys.argv[1]))["install"]
meta = torch["metadata"]
cuda = [r for r in meta.get("requires_dist") or [] if r.lower().startswith("nvidia-")]
print(f"torch {meta['version']} from {torch['download_info']['url']}")
if cuda:
    sys.exit(f"that is a CUDA build (requires {cuda[0]} ...)")
EOF
}
make_wheelhouse() {
  local dir=$1
  "$PYTHON" -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
    >"$dir.requirements.txt" || return
  # shellcheck disable=SC2086
  "$PYTHON" -m pip wheel --quiet --wheel-dir "$dir" $PIP_ARGS "$TORCH_SPEC" \
    -r "$dir.requirements.txt" "setuptools>=68" wheel || return
  mv -T "$dir" "$wheels" || [ -d "$wheels" ] || return
  # Older wheelhouses (another pyproject.toml) only take space.
  find "$cache/wheels" -mindepth 1 -maxdepth 1 ! -name "$wheels_key" -exec rm -rf {} +
}
if [ ! -d "$wheels" ]; then
  tmp=$(mktemp -d "$cache/wheels/.tmp.XXXXXX")
  scratch+=("$tmp" "$tmp.requirements.txt" "$tmp.report.json")
  check_cpu_torch "$tmp.report.json" >>"$log" 2>&1 \
    || fail "$TORCH_SPEC does not resolve to a CPU build of torch; point pip at CPU wheels, e.g. PIP_ARGS='--extra-index-url https://download.pytorch.org/whl/cpu' and TORCH_SPEC='torch==2.13.0+cpu'"
  step "wheelhouse" make_wheelhouse "$tmp"
fi

# 2. The base image.
base_recipe="bookworm minbase python3,python3-venv base-v1"
base_key=$(printf '%s' "$base_recipe" | sha256sum | cut -c1-12)
base=recjobs-base:bookworm-$base_key
tarball=$cache/base/bookworm-$base_key.tar
make_rootfs() {
  local rootfs=$1
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$DEBIAN_MIRROR" \
    && rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    && tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . \
    && mv "$tarball.tmp" "$tarball"
}
if ! docker image inspect "$base" >/dev/null 2>&1; then
  if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null \
      || fail "debootstrap not found (Debian: apt-get install debootstrap); it makes the base image once"
    [ "$(id -u)" = 0 ] || fail "debootstrap needs root (it makes the base image once)"
    rootfs=$(mktemp -d "$cache/base/.rootfs.XXXXXX")
    scratch+=("$rootfs" "$tarball.tmp")
    step "debootstrap bookworm" make_rootfs "$rootfs"
  fi
  step "docker import" docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$tarball" "$base"
fi

# 3. The image.
rm -f docker/wheels/*.whl # left by an interrupted build
cp -lp "$wheels"/*.whl docker/wheels/ 2>/dev/null || cp -p "$wheels"/*.whl docker/wheels/
# The classic builder: it uses the daemon's local images for FROM whatever the CLI's version or
# plugins, and RUN steps need no network.
step "docker build $image" env DOCKER_BUILDKIT=0 docker build -f docker/Dockerfile \
  --build-arg BASE_IMAGE="$base" --build-arg TORCH_SPEC="$TORCH_SPEC" \
  --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels -t "$image" .
