#!/usr/bin/env bash
# Run a command against a private Docker daemon, then stop that daemon:
#
#   docker/with-dockerd.sh COMMAND [ARGS...]      e.g. docker/with-dockerd.sh docker/build-image.sh
#
# The daemon listens on a socket of its own (exported to COMMAND as DOCKER_HOST), keeps its images
# in $RECJOBS_CACHE_DIR/docker (default ~/.cache/recjobs/docker, reused by the next run), does not
# touch iptables (--iptables=false --ip-masq=false: containers get no outbound network) and reads
# or writes nothing of the system daemon's configuration (/etc/docker). When COMMAND ends, however
# it ends, the daemon is stopped by its PID. One private daemon per cache directory at a time: a
# lock, held by the daemon too (a second one waits up to 10 minutes).
# Needs root and dockerd (Debian: apt-get install docker.io). Exits with COMMAND's status.
# tests/test_docker.py runs its daemon through this script too.
set -euo pipefail

die() { echo "with-dockerd: $*" >&2; exit 1; }
[ $# -gt 0 ] || die "usage: docker/with-dockerd.sh COMMAND [ARGS...]"
command -v dockerd >/dev/null || die "dockerd not found (Debian: apt-get install docker.io)"
command -v docker >/dev/null || die "docker (the CLI) not found (Debian: apt-get install docker.io)"
[ "$(id -u)" = 0 ] || die "a private dockerd needs root"

cache=${RECJOBS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/recjobs}
mkdir -p "$cache/docker"
exec 9>"$cache/docker.lock"
flock -w 600 9 || die "another private dockerd has used $cache/docker for 10 minutes (left over? pgrep -af 'dockerd.*$cache/docker')"

# Socket, exec root, pid file and config in a short fresh directory (a unix socket path is at
# most 107 bytes, and stale runtime state must not outlive the daemon).
run=$(mktemp -d /tmp/recjobs-dockerd.XXXXXX)
pid=
stop() {
  local status=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    wait "$pid" 2>/dev/null || true
  fi
  # A daemon that was killed (or crashed) leaves its containers running under their shims, and
  # their network namespaces (nsfs) mounted under the exec root and their root filesystems
  # under the data root: end those processes, unmount what is left below $run and the data root
  # (no daemon uses it now: the lock), deepest first, then remove $run.
  local shim mnt
  for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $run/" || true); do
    pkill -KILL -P "$shim" 2>/dev/null || true
    kill -KILL "$shim" 2>/dev/null || true
  done
  for mnt in $(findmnt -rn -o TARGET | grep -E "^($run|$cache/docker)(/|$)" | sort -r); do
    umount -l "$mnt" 2>/dev/null || true
  done
  rm -rf --one-file-system "$run" 2>/dev/null || true
  exit "$status"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Its own daemon.json instead of /etc/docker/daemon.json; Docker before 23 also writes an identity
# key, by default to /etc/docker/key.json: into the cache instead.
major=$(dockerd --version | sed -nE 's/^Docker version ([0-9]+)\..*/\1/p')
if [ -n "$major" ] && [ "$major" -lt 23 ]; then
  printf '{"deprecated-key-path": "%s"}\n' "$cache/docker-key.json" >"$run/daemon.json"
else
  echo '{}' >"$run/daemon.json"
fi
# No outbound network means no DNS server either: a lookup the daemon's embedded DNS cannot
# answer (torch's store looks up its clients' names) fails after 1 s instead of 2 x 5 s.
dockerd --config-file "$run/daemon.json" -H "unix://$run/docker.sock" \
  --data-root "$cache/docker" --exec-root "$run/exec" --pidfile "$run/dockerd.pid" \
  --iptables=false --ip-masq=false --dns-opt timeout:1 --dns-opt attempts:1 \
  >"$run/dockerd.log" 2>&1 </dev/null &
pid=$!
export DOCKER_HOST="unix://$run/docker.sock"
for _ in $(seq 300); do
  docker version >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || die "dockerd exited: $(tail -n 3 "$run/dockerd.log" | tr '\n' ' ')"
  sleep 0.1
done
docker version >/dev/null 2>&1 || die "dockerd did not answer on $DOCKER_HOST within 30 s"

"$@"
