#!/usr/bin/env bash
# CI smoke runs on CPU (`make smoke`): the TorchX training job, 2 DDP processes, tiny data, two
# epochs (seconds of training), on local_cwd and, where Docker can run here (root, dockerd), on
# local_docker with the image (docker/build-image.sh in a private daemon,
# docker/with-dockerd.sh). Each run must write config.yaml, metrics with a validation record and
# checkpoints/last.pt. One line per scheduler; with RECJOBS_REQUIRE_DOCKER=1 a missing Docker fails.
#
#   docker/smoke.sh                 both
#   docker/smoke.sh local_docker    only the container job (needs DOCKER_HOST: run it in with-dockerd)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PATH="$root/.venv/bin:$PATH" TORCHXCONFIG="$root/.torchxconfig"
tiny=(
  --set=dataset.synth.users=300 --set=dataset.synth.items=80 --set=dataset.synth.interactions=4000
  --set=model.embedding_dim=8 "--set=model.hidden_dims=[16]" --set=training.batch_size=256
  --set=training.max_epochs=2 --set=training.log_steps=5
)
job=(components/train.py:train --task retrieval --config config/quickstart.yaml -j 1x2)

tmp=$(mktemp -d /tmp/recjobs-smoke.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail() {
  echo "smoke: $1" >&2
  [ -f "${2:-}" ] && tail -n 20 "$2" | sed 's/^/  | /' >&2
  exit 1
}
# check NAME RUN_DIR LOG SECONDS: the run dir holds a trained run; print its summary line
check() {
  local name=$1 dir=$2 log=$3 secs=$4 summary
  if ! [ -s "$dir/config.yaml" ] || ! [ -s "$dir/checkpoints/last.pt" ]; then
    fail "$name: no config.yaml or checkpoints/last.pt in the run dir" "$log"
  fi
  summary=$(python - "$dir/metrics.jsonl" <<'EOF'
import json, math, sys
val = [r for r in map(json.loads, open(sys.argv[1])) if "val/loss" in r]
assert [r["epoch"] for r in val] == [0, 1], "expected a validation record per epoch"
last = val[-1]
assert math.isfinite(last["val/loss"]) and 0 < last["val/recall@10"] <= 1, last
print(f"step {last['step']}, val/loss {last['val/loss']:.3f}, val/recall@10 {last['val/recall@10']:.3f}")
EOF
  ) || fail "$name: bad metrics.jsonl" "$log"
  echo "smoke: $name ok in ${secs} s ($summary)"
}

local_cwd() {
  local start=$SECONDS
  torchx run -s local_cwd "${job[@]}" --run_dir "$tmp/local_cwd" -- "${tiny[@]}" \
    >"$tmp/local_cwd.log" 2>&1 || fail "local_cwd: the job failed" "$tmp/local_cwd.log"
  check local_cwd "$tmp/local_cwd" "$tmp/local_cwd.log" $((SECONDS - start))
}

local_docker() {
  docker/build-image.sh recjobs:latest
  # The job runs as uid 1000: the mounted run directory must be writable for it.
  install -d -o 1000 -g 1000 "$tmp/runs"
  local start=$SECONDS
  torchx run -s local_docker "${job[@]}" --image recjobs:latest \
    --mounts "type=bind,src=$tmp/runs,dst=/runs" --run_dir /runs/smoke -- "${tiny[@]}" \
    >"$tmp/local_docker.log" 2>&1 || fail "local_docker: the job failed" "$tmp/local_docker.log"
  check local_docker "$tmp/runs/smoke" "$tmp/local_docker.log" $((SECONDS - start))
}

docker_unavailable() {
  command -v dockerd >/dev/null || { echo "dockerd not found (Debian: apt-get install docker.io)"; return; }
  [ "$(id -u)" = 0 ] || { echo "a private dockerd needs root"; return; }
  return 1
}

case "${1:-all}" in
  local_docker) local_docker ;;
  all)
    local_cwd
    if reason=$(docker_unavailable); then
      [ "${RECJOBS_REQUIRE_DOCKER:-}" = 1 ] && fail "local_docker: $reason (RECJOBS_REQUIRE_DOCKER=1)"
      echo "smoke: local_docker SKIPPED: $reason"
    else
      docker/with-dockerd.sh "$root/docker/smoke.sh" local_docker
    fi
    ;;
  *) fail "usage: docker/smoke.sh [local_docker]" ;;
esac
