#!/usr/bin/env bash
# Build the training image from docker/Dockerfile without an image registry:
#
#   docker/build-image.sh [IMAGE]          (default recjobs:latest, in the daemon DOCKER_HOST names)
#   docker/with-dockerd.sh docker/build-image.sh          (the same in a private daemon; make image)
#
# 1. Wheelhouse (docker/wheelhouse.sh): torch ($TORCH_SPEC, default torch==2.13.0, PyPI's CUDA
#    build on Linux) and the dependencies in pyproject.toml as wheels, the ones `make setup`
#    installed the venv from (PIP_ARGS adds pip options, e.g. another wheel index). The image's
#    python is Debian bookworm's 3.11, so this machine's $PYTHON must be 3.11 on x86_64 too.
# 2. Base image recjobs-base:bookworm-<key>: Debian bookworm (minbase, python3, python3-venv,
#    ca-certificates) made with debootstrap from a Debian mirror and `docker import`ed. Needs
#    root and debootstrap the first time; the rootfs tarball is cached.
# 3. docker build --network host with PIP_NO_INDEX=1 and PIP_FIND_LINKS pointing at the
#    wheelhouse, served on 127.0.0.1 for the length of the build: the build reaches no other
#    network, and the wheels never become a layer of the image (nor is a 3 GB build context
#    sent). The image is labelled with a hash of its inputs (Dockerfile, this script,
#    pyproject.toml, the code, configs, components, the wheels, the base): with unchanged inputs
#    nothing is built at all; otherwise Docker's layer cache (the daemon's data root) rebuilds
#    from the first changed layer on, so a code change reinstalls only the project.
#
# Caches in $RECJOBS_CACHE_DIR (default ~/.cache/recjobs); the last build's log, with the time of
# each step, is $RECJOBS_CACHE_DIR/build-image.log. Quiet on success; on failure one error line
# and the end of the log.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
image=${1:-recjobs:latest}
cache=${RECJOBS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/recjobs}
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
PIP_ARGS=${PIP_ARGS:-}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache/base" "$cache/wheels"
log=$cache/build-image.log
: >"$log"

scratch=()
server=
cleanup() {
  local path mnt
  for path in "${scratch[@]}"; do
    # debootstrap mounts proc and sys in the rootfs; never delete through a mount point.
    for mnt in "$path/proc" "$path/sys" "$path/dev/pts" "$path/dev"; do
      if mountpoint -q "$mnt" 2>/dev/null; then umount -l "$mnt" 2>/dev/null || true; fi
    done
    rm -rf --one-file-system "$path" 2>/dev/null || true
  done
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "build-image: $*" >&2
  if [ -s "$log" ]; then
    echo "build-image: last lines of $log:" >&2
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
"$PYTHON" -c 'import sys, sysconfig; sys.exit(sys.version_info[:2] != (3, 11) or sysconfig.get_platform() != "linux-x86_64")' 2>/dev/null \
  || fail "$PYTHON is not Python 3.11 on linux-x86_64: the wheels must fit the image's python (Debian bookworm's 3.11); set PYTHON"

# 1. The wheelhouse (first: a wrong TORCH_SPEC fails before anything is built). The same one
#    `make setup` installs the venv from, so torch is downloaded once for both.
wheels=$(PYTHON="$PYTHON" TORCH_SPEC="$TORCH_SPEC" PIP_ARGS="$PIP_ARGS" RECJOBS_CACHE_DIR="$cache" \
  docker/wheelhouse.sh 2>>"$log") || fail "wheelhouse: pip could not download $TORCH_SPEC and the dependencies"

# 2. The base image.
base_recipe="bookworm minbase python3,python3-venv,ca-certificates base-v2"
base_key=$(printf '%s' "$base_recipe" | sha256sum | cut -c1-12)
base=recjobs-base:bookworm-$base_key
tarball=$cache/base/bookworm-$base_key.tar
make_rootfs() {
  local rootfs=$1
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR" \
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

# 3. The image, unless one built from exactly these inputs is there already.
inputs=$(
  {
    printf '%s\n' "$TORCH_SPEC" "$(docker image inspect -f '{{.Id}}' "$base")"
    (cd "$wheels" && stat -c '%n %s' -- *.whl)
    find docker/Dockerfile docker/build-image.sh pyproject.toml README.md recjobs config components \
      -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-32
)
label=org.recjobs.inputs
if [ "$(docker image inspect -f "{{index .Config.Labels \"$label\"}}" "$image" 2>/dev/null)" = "$inputs" ]; then
  echo "== $image is up to date (inputs $inputs)" >>"$log"
  exit 0
fi
# The wheelhouse, served on loopback for the build's pip (the build runs in the host's network
# namespace). A fixed port keeps the build arguments, and so Docker's layer cache, the same from
# one build to the next; a busy port costs only that cache.
port=${RECJOBS_WHEEL_PORT:-47613}
if ! "$PYTHON" -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null; then
  port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
"$PYTHON" -m http.server --bind 127.0.0.1 --directory "$wheels" "$port" >>"$log" 2>&1 &
server=$!
for _ in $(seq 100); do
  "$PYTHON" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
    "http://127.0.0.1:$port/" 2>/dev/null && break
  kill -0 "$server" 2>/dev/null || fail "the wheel server on 127.0.0.1:$port exited"
  sleep 0.1
done
# The classic builder: it uses the daemon's local images for FROM whatever the CLI's version or
# plugins; the context is only the repository (.dockerignore), and RUN steps reach nothing but
# the wheel server.
step "docker build $image" env DOCKER_BUILDKIT=0 docker build -f docker/Dockerfile --network host \
  --build-arg BASE_IMAGE="$base" --build-arg TORCH_SPEC="$TORCH_SPEC" --build-arg PIP_NO_INDEX=1 \
  --build-arg PIP_FIND_LINKS="http://127.0.0.1:$port/" --label "$label=$inputs" -t "$image" .
# The image this tag pointed to before, and the layers only it used: gone, or every build of a
# changed dependency would leave gigabytes behind in the cache.
step "docker image prune" docker image prune -f
