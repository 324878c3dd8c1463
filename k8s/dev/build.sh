#!/usr/bin/env bash
# Build the development cluster's binaries from the Go module proxy, cached by version:
#
#   k8s/dev/build.sh        prints the directory that holds them
#
# Each upstream project is built from a wrapper module that requires it at the version in
# k8s/dev/versions.sh and repeats its own go.mod's replace directives (a module's replaces only
# apply where it is the main module), so it compiles against the dependency versions its
# authors chose:
#   kubernetes  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl
#   volcano     vc-scheduler, vc-controller-manager, vc-webhook-manager, and its CRDs
#   coredns     coredns
#   distribution  registry (the image registry the node pulls from)
# The pause container is Kubernetes' own build/pause/linux/pause.c, compiled static with gcc.
# Cache: $RECJOBS_CACHE_DIR/k8s (default ~/.cache/recjobs/k8s): bin-<key>/ (the binaries; key =
# versions + this script + the Go version), go/mod and go/build (Go's module and build caches,
# about 7 GB; Go trims build cache entries unused for 5 days). The log of the last build, with
# the time of each step, is build.log there.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=versions.sh
. "$root/k8s/dev/versions.sh"
cache=${RECJOBS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/recjobs}/k8s
command -v go >/dev/null || { echo "k8s/dev/build.sh: go not found (Go 1.24 or newer)" >&2; exit 1; }
key=$({ cat "$root/k8s/dev/versions.sh" "$0"; go version; } | sha256sum | cut -c1-12)
bin=$cache/bin-$key
if [ -f "$bin/.complete" ]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$cache/go"
log=$cache/build.log
: >"$log"
export GOMODCACHE=$cache/go/mod GOCACHE=$cache/go/build GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath
fail() {
  echo "k8s/dev/build.sh: $*" >&2
  tail -n 20 "$log" | sed 's/^/  | /' >&2
  exit 1
}
step() { # step NAME COMMAND...: COMMAND's output to the log, timed
  local name=$1 start=$SECONDS
  shift
  echo "== $name" >>"$log"
  "$@" >>"$log" 2>&1 || fail "$name failed"
  echo "== $name: $((SECONDS - start)) s" >>"$log"
}
download() { # download MODULE@VERSION FIELD: the go.mod file (GoMod) or the source (Dir)
  go mod download -json "$1" \
    | python3 -c 'import json, sys; d = json.load(sys.stdin); print(d.get(sys.argv[1]) or sys.exit(d.get("Error")))' "$2"
}
# staging_replaces KUBERNETES_GOMOD: Kubernetes' staging modules (k8s.io/api, client-go, ...;
# "=> ./staging/..." in its go.mod) at their published v0.X.Y for KUBERNETES_VERSION.
staging_replaces() {
  python3 - "$KUBERNETES_VERSION" "$1" <<'EOF'
import re, sys
kv, kmod = sys.argv[1:]
staging = "v0." + kv.split(".", 1)[1]
print(f"replace k8s.io/kubernetes => k8s.io/kubernetes {kv}")
for line in open(kmod):
    m = re.match(r"\s*(?:replace\s+)?(k8s\.io/\S+)\s+=>\s+\./staging/", line)
    if m:
        print(f"replace {m.group(1)} => {m.group(1)} {staging}")
EOF
}
# own_replaces GOMOD [SKIP_PREFIX]: GOMOD's replaces to published versions (local paths left
# out), except those of modules starting with SKIP_PREFIX.
own_replaces() {
  python3 - "$1" "${2:-}" <<'EOF'
import re, sys
gomod, skip = sys.argv[1:]
for line in open(gomod):
    m = re.match(r"\s*(?:replace\s+)?(\S+)(?:\s+v\S+)?\s+=>\s+(\S+)\s+(v\S+)\s*$", line)
    if m and not (skip and m.group(1).startswith(skip)):
        print(f"replace {m.group(1)} => {m.group(2)} {m.group(3)}")
EOF
}
# wrapper NAME REQUIRES REPLACES IMPORTS: the module $cache/src/NAME that requires REQUIRES
# ("path version" lines), with REPLACES, importing the commands IMPORTS; tidied.
wrapper() {
  local name=$1 requires=$2 replace=$3 imports=$4 dir=$cache/src/$1
  rm -rf "$dir"
  mkdir -p "$dir"
  {
    printf 'module recjobs.dev/%s\n\ngo 1.24.0\n\n' "$name"
    printf '%s\n' "$requires" | sed '/^$/d; s/^/require /'
    printf '%s\n' "$replace"
  } >"$dir/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    printf '\t_ "%s"\n' $imports
    printf ')\n'
  } >"$dir/tools.go"
  (cd "$dir" && go mod tidy)
}
build() { # build MODULE PACKAGE OUTPUT LDFLAGS
  (cd "$cache/src/$1" && go build -ldflags "$4" -o "$tmp/$3" "$2")
}

tmp=$cache/bin-$key.tmp
rm -rf "$tmp"
mkdir -p "$tmp"

# 1. Kubernetes.
kmod=$(download "k8s.io/kubernetes@$KUBERNETES_VERSION" GoMod) \
  || fail "k8s.io/kubernetes@$KUBERNETES_VERSION: not served by the Go module proxy"
minor=${KUBERNETES_VERSION#v1.}
minor=${minor%%.*}
version_flags="-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
-X k8s.io/component-base/version.gitTreeState=clean \
-X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
k8s_cmds="kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl"
step "modules: kubernetes $KUBERNETES_VERSION" wrapper kubernetes \
  "k8s.io/kubernetes $KUBERNETES_VERSION" "$(staging_replaces "$kmod")" \
  "$(for c in $k8s_cmds; do echo "k8s.io/kubernetes/cmd/$c"; done)"
for c in $k8s_cmds; do
  step "build $c" build kubernetes "k8s.io/kubernetes/cmd/$c" "$c" "-s -w $version_flags"
done

# 2. Volcano. Its go.mod pins gRPC and OpenTelemetry below Kubernetes' own (one module for both
# would build the API server against a gRPC whose balancer rejects the etcd client's
# endpoints), and points volcano.sh/apis at a staging folder the module zip leaves out: the
# published VOLCANO_APIS_VERSION instead. Kubernetes libraries at KUBERNETES_VERSION.
vmod=$(download "volcano.sh/volcano@$VOLCANO_VERSION" GoMod) \
  || fail "volcano.sh/volcano@$VOLCANO_VERSION: not served by the Go module proxy"
vc_cmds="scheduler controller-manager webhook-manager"
step "modules: volcano $VOLCANO_VERSION" wrapper volcano \
  "$(printf '%s\n' "volcano.sh/volcano $VOLCANO_VERSION" "volcano.sh/apis $VOLCANO_APIS_VERSION")" \
  "$(
    staging_replaces "$kmod"
    own_replaces "$vmod" k8s.io/ | grep -v '^replace volcano.sh/apis '
    echo "replace volcano.sh/apis => volcano.sh/apis $VOLCANO_APIS_VERSION"
  )" \
  "$(for c in $vc_cmds; do echo "volcano.sh/volcano/cmd/$c"; done)"
for c in $vc_cmds; do
  step "build vc-$c" build volcano "volcano.sh/volcano/cmd/$c" "vc-$c" "-s -w"
done
# The CRDs that belong to this Volcano (cluster.sh applies them server-side).
vdir=$(download "volcano.sh/volcano@$VOLCANO_VERSION" Dir)
mkdir -p "$tmp/volcano-crds"
cp "$vdir"/config/crd/volcano/bases/*.yaml "$tmp/volcano-crds/"
chmod -R u+w "$tmp/volcano-crds"

# 3. CoreDNS.
cmod=$(download "github.com/coredns/coredns@$COREDNS_VERSION" GoMod) \
  || fail "github.com/coredns/coredns@$COREDNS_VERSION: not served by the Go module proxy"
step "modules: coredns $COREDNS_VERSION" wrapper coredns \
  "github.com/coredns/coredns $COREDNS_VERSION" "$(own_replaces "$cmod")" github.com/coredns/coredns
step "build coredns" build coredns github.com/coredns/coredns coredns "-s -w"

# 4. The registry (CNCF Distribution), which the node pulls images from as from any registry.
dmod=$(download "github.com/distribution/distribution/v3@$DISTRIBUTION_VERSION" GoMod) \
  || fail "github.com/distribution/distribution/v3@$DISTRIBUTION_VERSION: not served by the Go module proxy"
step "modules: distribution $DISTRIBUTION_VERSION" wrapper distribution \
  "github.com/distribution/distribution/v3 $DISTRIBUTION_VERSION" "$(own_replaces "$dmod")" \
  github.com/distribution/distribution/v3/cmd/registry
step "build registry" build distribution github.com/distribution/distribution/v3/cmd/registry registry "-s -w"

# 5. pause, from the Kubernetes module's own source.
kdir=$(download "k8s.io/kubernetes@$KUBERNETES_VERSION" Dir)
step "build pause" gcc -Os -static -Wall -Werror -DVERSION="$KUBERNETES_VERSION" \
  -o "$tmp/pause" "$kdir/build/pause/linux/pause.c"

touch "$tmp/.complete"
rm -rf "$bin"
mv "$tmp" "$bin"
# Binaries of other versions only take space.
find "$cache" -mindepth 1 -maxdepth 1 -name 'bin-*' ! -name "bin-$key" -exec rm -rf {} +
echo "== total: $SECONDS s" >>"$log"
echo "$bin"
