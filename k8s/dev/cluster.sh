#!/usr/bin/env bash
# A one-node Kubernetes cluster with Volcano on this machine, for recjobs' tests and for trying
# the Kubernetes commands of the README without a cloud:
#
#   k8s/dev/cluster.sh up       (make k8s-up)    build or reuse the binaries, start everything
#   k8s/dev/cluster.sh down     (make k8s-down)  stop it all; no process, mount or link stays
#   k8s/dev/cluster.sh status                    what runs
#
# Everything is upstream and real: kube-apiserver (RBAC and Node authorization, serving certs
# and service-account keys made with openssl), kube-controller-manager, kube-scheduler, kubelet
# and kubectl built from the Go module proxy (k8s/dev/build.sh); etcd, containerd, runc and the
# CNI plugins from Debian; CoreDNS; Volcano's scheduler, controllers and admission webhook; the
# CNCF Distribution registry.
# The control plane, CoreDNS and Volcano run as host processes on 127.0.0.1; pods get
# addresses in 10.244.0.0/24 on a bridge of their own and reach cluster DNS on the node's
# address, 10.222.0.1 (on a link of its own: the kubelet refuses a loopback node IP). No
# kube-proxy: nothing here needs a ClusterIP (Volcano's job services are headless), and no
# iptables rule is touched. No traffic leaves the machine; pods have no route out.
#
# The node looks like a GPU node to the scheduler: it advertises nvidia.com/gpu (4), carries
# the label nvidia.com/gpu.present=true and the taint nvidia.com/gpu=present:NoSchedule, as
# GPU clusters do. There are no GPUs; containers train on the CPU (device: auto).
#
# `up` then applies k8s/ (kubectl apply -k k8s/: namespace, Queue, PVC, Role), provides the
# PersistentVolume the PVC binds to, pushes the recjobs image (docker/build-image.sh) to an image
# registry on 127.0.0.1:15000 (CNCF Distribution) that containerd uses as the mirror of
# registry.example.com and registry.k8s.io, pulls it as registry.example.com/ml/recjobs:0.1.0
# and recjobs:0.1.0, and writes two kubeconfigs:
#   .k8s/kubeconfig         the recjobs-submitter ServiceAccount (k8s/rbac.yaml), namespace recjobs
#   .k8s/admin.kubeconfig   cluster admin (system:masters), for what the README says an admin does
#
# Root only. One cluster per machine: state in /var/lib/recjobs-k8s (logs in its logs/), images
# and binaries cached in $RECJOBS_CACHE_DIR/k8s (default ~/.cache/recjobs/k8s).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${RECJOBS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/recjobs}
state=/var/lib/recjobs-k8s
pki=$state/pki
logs=$state/logs
pids=$state/pids
sock=$state/containerd/containerd.sock
node=recjobs-node
node_ip=10.222.0.1
node_link=recjobs0
bridge=recjobs-cni0
pod_cidr=10.244.0.0/24
service_cidr=10.96.0.0/24
api=https://127.0.0.1:6443
webhook_port=18443
registry=127.0.0.1:15000
# The names pods use, as the CRI looks them up: `recjobs:0.1.0` is docker.io/library/recjobs:0.1.0.
images=(registry.example.com/ml/recjobs:0.1.0 docker.io/library/recjobs:0.1.0)
pause_image=registry.k8s.io/pause:3.10

say() { echo "k8s: $*" >&2; }
die() {
  echo "k8s: $*" >&2
  exit 1
}
fail() { # fail LOG MESSAGE: MESSAGE, the end of LOG and the free disk space, then exit
  echo "k8s: $2 ($1)" >&2
  tail -n 15 "$1" 2>/dev/null | sed 's/^/  | /' >&2
  df -h "$cache" | sed 's/^/  | /' >&2
  exit 1
}
admin() { "$bin/kubectl" --kubeconfig "$state/admin.kubeconfig" "$@"; }

# --- processes: started detached, recorded by PID, stopped by PID ---------------------------
start() { # start NAME COMMAND...: run detached, output to logs/NAME.log, PID in pids/NAME
  local name=$1
  shift
  setsid "$@" >>"$logs/$name.log" 2>&1 </dev/null 8>&- &
  echo $! >"$pids/$name"
}
running() { # running NAME: the recorded process is alive and still the program we started
  local pid
  [ -f "$pids/$1" ] || return 1
  pid=$(cat "$pids/$1")
  [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$1\|$state"
}
stop() { # stop NAME: SIGTERM, then SIGKILL after 20 s
  local name=$1 pid
  if running "$name"; then
    pid=$(cat "$pids/$name")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    say "stopped $name (pid $pid)"
  fi
  rm -f "$pids/$name"
}
wait_for() { # wait_for SECONDS WHAT COMMAND...: poll COMMAND until it succeeds
  local seconds=$1 what=$2 start=$SECONDS
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$seconds" ]; then
      local log=$logs/${what%% *}.log
      [ -f "$log" ] || log=$logs/up.log
      fail "$log" "$what not ready after $seconds s"
    fi
    sleep 0.5
  done
}

# --- certificates ------------------------------------------------------------------------------
cert() { # cert NAME SUBJECT EXTENSIONS: NAME.key and NAME.crt signed by the cluster CA
  local name=$1 subject=$2 ext=$3
  openssl req -newkey rsa:2048 -nodes -keyout "$pki/$name.key" -out "$pki/$name.csr" \
    -subj "$subject" 2>/dev/null
  printf '%s\n' "$ext" >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -out "$pki/$name.crt" -days 30 -extfile "$pki/$name.ext" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}
make_pki() {
  rm -rf "$pki"
  mkdir -p "$pki"
  chmod 700 "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$pki/ca.key" -out "$pki/ca.crt" -days 30 \
    -subj /CN=recjobs-dev-ca -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  local client="keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  local server="keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth"
  cert apiserver /CN=kube-apiserver "$server
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,IP:$node_ip,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert webhook /CN=volcano-admission "$server
subjectAltName=IP:127.0.0.1"
  cert admin "/O=system:masters/CN=recjobs-admin" "$client"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  cert controller-manager /CN=system:kube-controller-manager "$client"
  cert scheduler /CN=system:kube-scheduler "$client"
  cert kubelet "/O=system:nodes/CN=system:node:$node" "$client"
  cert coredns /CN=coredns "$client"
  # Volcano's controllers and scheduler manage pods, services, podgroups, queues and more in
  # every namespace; its chart gives them a ClusterRole that covers about as much.
  cert volcano "/O=system:masters/CN=volcano" "$client"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}
kubeconfig() { # kubeconfig FILE USER [CERT]: client-certificate kubeconfig, data inline
  local name=${3:-$2}
  write_kubeconfig "$1" "$2" "{client-certificate-data: $(base64 -w0 "$pki/$name.crt"), client-key-data: $(base64 -w0 "$pki/$name.key")}"
}
write_kubeconfig() { # write_kubeconfig FILE USER CREDENTIALS [NAMESPACE]
  local file=$1 user=$2 credentials=$3 namespace=${4:+", namespace: $4"}
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: recjobs-dev
  cluster:
    server: $api
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $user
  user: $credentials
contexts:
- name: $user@recjobs-dev
  context: {cluster: recjobs-dev, user: $user$namespace}
current-context: $user@recjobs-dev
EOF
  chmod 600 "$file"
}

# --- the node's network ------------------------------------------------------------------------
network_up() {
  if ! ip link show "$node_link" >/dev/null 2>&1; then
    # A bridge with no ports as the node's interface (a dummy device would do, but this
    # machine's kernel has no dummy driver): it only holds the node's address.
    ip link add "$node_link" type bridge
    ip addr add "$node_ip/32" dev "$node_link"
    ip link set "$node_link" up
  fi
  mkdir -p "$state/cni/net.d" "$state/cni/ipam"
  # Pods reach each other on the bridge, and the node's address (cluster DNS) through the
  # bridge's gateway address; there is no default route: nothing else is reachable.
  cat >"$state/cni/net.d/10-recjobs.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "recjobs",
  "plugins": [
    {
      "type": "bridge", "bridge": "$bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "ranges": [[{"subnet": "$pod_cidr"}]], "dataDir": "$state/cni/ipam",
        "routes": [{"dst": "$node_ip/32"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
}

# --- components --------------------------------------------------------------------------------
start_etcd() {
  rm -rf "$state/etcd"
  start etcd etcd --name recjobs --data-dir "$state/etcd" \
    --listen-client-urls http://127.0.0.1:12379 --advertise-client-urls http://127.0.0.1:12379 \
    --listen-peer-urls http://127.0.0.1:12380 --initial-advertise-peer-urls http://127.0.0.1:12380 \
    --initial-cluster recjobs=http://127.0.0.1:12380 --listen-metrics-urls http://127.0.0.1:12381 \
    --quota-backend-bytes 2147483648
  wait_for 30 etcd curl -fsS http://127.0.0.1:12381/health
}
start_apiserver() {
  start kube-apiserver "$bin/kube-apiserver" --etcd-servers=http://127.0.0.1:12379 \
    --bind-address=127.0.0.1 --secure-port=6443 --advertise-address="$node_ip" \
    --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
    --client-ca-file="$pki/ca.crt" --authorization-mode=Node,RBAC \
    --enable-admission-plugins=NodeRestriction \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
    --service-cluster-ip-range="$service_cidr" \
    --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types=InternalIP --profiling=false
  wait_for 120 kube-apiserver admin get --raw /readyz
}
start_controllers() {
  kubeconfig "$state/controller-manager.kubeconfig" controller-manager
  kubeconfig "$state/scheduler.kubeconfig" scheduler
  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig="$state/controller-manager.kubeconfig" \
    --authentication-kubeconfig="$state/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$state/controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/ca.crt" \
    --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
    --profiling=false
  start kube-scheduler "$bin/kube-scheduler" --kubeconfig="$state/scheduler.kubeconfig" \
    --authentication-kubeconfig="$state/scheduler.kubeconfig" \
    --authorization-kubeconfig="$state/scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false
}
start_containerd() {
  mkdir -p "$cache/k8s/containerd" "$state/containerd"
  # The image store (root) is cached: the recjobs image is imported once, not per cluster.
  cat >"$state/containerd/config.toml" <<EOF
version = 2
root = "$cache/k8s/containerd"
state = "$state/containerd/state"
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_image"
  # This machine grants no CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$state/containerd/runc"
  # Pulls of registry.example.com/... (the README's image name) and registry.k8s.io/...
  # (the pause image) go to the registry on loopback; nothing is pulled from elsewhere.
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.example.com"]
    endpoint = ["http://$registry"]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.k8s.io"]
    endpoint = ["http://$registry"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$state/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$state/containerd/opt"
EOF
  start containerd containerd --config "$state/containerd/config.toml"
  wait_for 30 containerd ctr --address "$sock" version
}
ctr_k8s() { ctr --address "$sock" --namespace k8s.io "$@"; }
start_registry() {
  # CNCF Distribution on loopback, its storage cached: the node pulls the recjobs image from it
  # as from any registry, and a new build uploads only its changed layers (seconds, not the
  # minutes a docker save | ctr import of 5 GB takes).
  mkdir -p "$cache/k8s/registry"
  cat >"$state/registry.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $cache/k8s/registry}
  delete: {enabled: true}
http:
  addr: $registry
EOF
  collect_registry_garbage "$state/registry.yml" "$cache/k8s/registry"
  start registry "$bin/registry" serve "$state/registry.yml"
  wait_for 30 registry curl -fsS "http://$registry/v2/"
}
collect_registry_garbage() { # CONFIG ROOT: drop earlier builds' manifests and layers
  # Manifests no tag points to any more (earlier builds) and their layers go first; the
  # registry must not serve while it collects. On a new machine the root holds no repository
  # yet, and after a first push cut off before its first layer landed it holds repositories but
  # no blobs; `registry garbage-collect` refuses both ("Path not found"): nothing to collect.
  [ -d "$2/docker/registry/v2/repositories" ] && [ -d "$2/docker/registry/v2/blobs" ] || return 0
  "$bin/registry" garbage-collect --delete-untagged "$1" >>"$logs/registry.log" 2>&1 \
    || fail "$logs/registry.log" "the registry's garbage collection failed"
}
publish_images() {
  # The recjobs image (docker/build-image.sh, built or reused in the private dockerd) and the
  # pause container (Kubernetes' pause.c) pushed to the registry, then pulled by containerd
  # under the names pods use. A tag the node already has is not pulled again by the kubelet
  # (IfNotPresent), so containerd pulls here, every time: unchanged layers are not fetched.
  local start=$SECONDS
  : >"$logs/images.log" # this cluster's pushes and pulls only
  PYTHON=${PYTHON:-$root/.venv/bin/python} REGISTRY=$registry "$root/docker/with-dockerd.sh" bash -c '
    set -e
    "$0"/docker/build-image.sh recjobs:latest
    ctx=$(mktemp -d)
    trap "rm -rf $ctx" EXIT
    cp "$1/pause" "$ctx/pause"
    printf "FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT [\"/pause\"]\n" >"$ctx/Dockerfile"
    DOCKER_BUILDKIT=0 docker build -q -t "$REGISTRY/pause:3.10" "$ctx"
    docker tag recjobs:latest "$REGISTRY/ml/recjobs:0.1.0"
    docker push -q "$REGISTRY/ml/recjobs:0.1.0"
    docker push -q "$REGISTRY/pause:3.10"
    docker rmi "$REGISTRY/ml/recjobs:0.1.0" "$REGISTRY/pause:3.10"
  ' "$root" "$bin" >>"$logs/images.log" 2>&1 \
    || fail "$logs/images.log" "building or pushing the images failed (the build's own log: $cache/build-image.log)"
  ctr_k8s images pull --plain-http "$registry/ml/recjobs:0.1.0" >>"$logs/images.log" 2>&1 \
    && ctr_k8s images pull --plain-http "$registry/pause:3.10" >>"$logs/images.log" 2>&1 \
    || fail "$logs/images.log" "containerd could not pull from the registry"
  local name
  for name in "${images[@]}"; do
    ctr_k8s images tag --force "$registry/ml/recjobs:0.1.0" "$name" >/dev/null
  done
  ctr_k8s images tag --force "$registry/pause:3.10" "$pause_image" >/dev/null
  prune_images
  say "images in the registry and on the node in $((SECONDS - start)) s: ${images[*]} $pause_image"
}
prune_images() {
  # The image store is cached and each build adds layers: drop every image but these names
  # (earlier builds' layers are then referenced by nothing), and have containerd collect the
  # garbage now (removing an image with --sync runs a collection and waits for it), so the
  # store holds one build, not all of them.
  local keep=" ${images[*]} $pause_image $registry/ml/recjobs:0.1.0 $registry/pause:3.10 " name
  for name in $(ctr_k8s images ls -q); do
    case $keep in *" $name "*) ;; *) ctr_k8s images rm "$name" >/dev/null ;; esac
  done
  ctr_k8s images tag --force "$pause_image" recjobs.invalid/collect-garbage:now >/dev/null
  ctr_k8s images rm --sync recjobs.invalid/collect-garbage:now >/dev/null
}
start_kubelet() {
  mkdir -p "$state/kubelet" "$state/pod-logs"
  kubeconfig "$state/kubelet.kubeconfig" "system:node:$node" kubelet
  # cgroup v1 hosts: the kubelet sets hugetlb limits, and the hugetlb controller may be absent.
  if [ ! -d /sys/fs/cgroup/unified ] || [ -d /sys/fs/cgroup/cpu ]; then
    if [ ! -d /sys/fs/cgroup/hugetlb ]; then
      mkdir -p /sys/fs/cgroup/hugetlb
      mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb
      touch "$state/mounted-hugetlb"
    fi
  fi
  cat >"$state/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $pki/ca.crt}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
# cgroup v1 here; Kubernetes 1.35 and later refuse it unless told otherwise.
failCgroupV1: false
failSwapOn: false
# No CAP_SYS_RESOURCE on this machine: the kubelet cannot set its own score below 0.
oomScoreAdj: 0
containerRuntimeEndpoint: unix://$sock
clusterDomain: cluster.local
clusterDNS: [$node_ip]
podLogsDir: $state/pod-logs
# The recjobs image is several GB on a shared disk: never garbage-collect it, never evict for disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 200Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
maxPods: 20
EOF
  start kubelet "$bin/kubelet" --config="$state/kubelet/config.yaml" \
    --kubeconfig="$state/kubelet.kubeconfig" --hostname-override="$node" --node-ip="$node_ip" \
    --root-dir="$state/kubelet/root" --cert-dir="$state/kubelet/pki"
  wait_for 180 "kubelet (node $node Ready)" node_ready
}
node_ready() {
  [ "$(admin get node "$node" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}
make_gpu_node() {
  admin label node "$node" nvidia.com/gpu.present=true --overwrite >/dev/null
  admin taint node "$node" nvidia.com/gpu=present:NoSchedule --overwrite >/dev/null
  # Extended resources are advertised through the node's status, as a device plugin would.
  admin patch node "$node" --subresource=status --type=json \
    -p '[{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "4"}]' >/dev/null
  wait_for 30 "nvidia.com/gpu on $node" \
    bash -c "[ \"\$($bin/kubectl --kubeconfig $state/admin.kubeconfig get node $node -o 'jsonpath={.status.allocatable.nvidia\.com/gpu}')\" = 4 ]"
}
start_coredns() {
  kubeconfig "$state/coredns.kubeconfig" coredns
  admin apply -f - >/dev/null <<'EOF'
# CoreDNS's own RBAC (as in its Kubernetes deployment), bound to the user of its certificate.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
  - {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
  - {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: coredns}]
EOF
  # Cluster names only: no forwarding, so a pod's lookup of an outside name fails here, fast.
  cat >"$state/Corefile" <<EOF
cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind $node_ip
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $state/coredns.kubeconfig
        pods insecure
    }
    cache 5
}
.:53 {
    bind $node_ip
    errors
}
EOF
  start coredns "$bin/coredns" -conf "$state/Corefile"
  wait_for 30 coredns bash -c "exec 3<>/dev/tcp/$node_ip/53"
}
crds_established() { # crds_established CRD...: every one has condition Established=True
  local crd
  for crd in "$@"; do
    [ "$(admin get crd "$crd" -o 'jsonpath={.status.conditions[?(@.type=="Established")].status}')" = True ] \
      || return 1
  done
}
start_volcano() {
  kubeconfig "$state/volcano.kubeconfig" volcano
  # The CRDs of this Volcano version; the jobs CRD is over 200 KB, too big for the annotation
  # a client-side apply keeps, hence server-side.
  admin apply --server-side --force-conflicts -f "$bin/volcano-crds/" >/dev/null
  # Polled, not `kubectl wait --for condition=established`: that fails at once ("accessor
  # error: <nil>") while a new CRD has no status yet, which a slow fresh machine shows.
  wait_for 60 "Volcano CRDs established" crds_established jobs.batch.volcano.sh \
    podgroups.scheduling.volcano.sh queues.scheduling.volcano.sh
  sed -e "s#WEBHOOK_URL#https://127.0.0.1:$webhook_port#" \
    -e "s#CA_BUNDLE#$(base64 -w0 "$pki/ca.crt")#" "$root/k8s/dev/volcano-webhooks.yaml" \
    | admin apply -f - >/dev/null
  # The scheduler's configuration as Volcano's chart ships it (volcano-scheduler.conf).
  cat >"$state/volcano-scheduler.conf" <<'EOF'
actions: "enqueue, allocate, backfill"
tiers:
- plugins:
  - name: priority
  - name: gang
    enablePreemptable: false
  - name: conformance
- plugins:
  - name: overcommit
  - name: drf
    enablePreemptable: false
  - name: predicates
  - name: proportion
  - name: nodeorder
  - name: binpack
EOF
  start vc-webhook-manager "$bin/vc-webhook-manager" --kubeconfig="$state/volcano.kubeconfig" \
    --listen-address=127.0.0.1 --port="$webhook_port" --webhook-url="https://127.0.0.1:$webhook_port" \
    --tls-cert-file="$pki/webhook.crt" --tls-private-key-file="$pki/webhook.key" \
    --ca-cert-file="$pki/ca.crt" \
    --enabled-admission=/jobs/mutate,/jobs/validate,/podgroups/validate,/queues/mutate,/queues/validate
  start vc-controller-manager "$bin/vc-controller-manager" --kubeconfig="$state/volcano.kubeconfig" \
    --leader-elect=false --healthz-address=127.0.0.1:11252 --listen-address=127.0.0.1:18081 \
    --controllers=job-controller,pg-controller,queue-controller,gc-controller
  start vc-scheduler "$bin/vc-scheduler" --kubeconfig="$state/volcano.kubeconfig" \
    --leader-elect=false --scheduler-conf="$state/volcano-scheduler.conf" \
    --listen-address=127.0.0.1:18080 --healthz-address=127.0.0.1:11253
  # Any HTTP answer over TLS will do: the webhook server is up.
  wait_for 60 vc-webhook-manager curl -sS --cacert "$pki/ca.crt" -o /dev/null \
    "https://127.0.0.1:$webhook_port/jobs/validate"
  # The default queue appears once vc-scheduler runs; jobs go to the recjobs queue from k8s/.
  wait_for 60 "vc-scheduler (Volcano's default queue)" admin get queue default
}
apply_project() {
  admin apply -k "$root/k8s" >/dev/null
  mkdir -p "$state/pv/recjobs-runs"
  # The PVC binds to a local volume on this node. The kubelet applies the pods' fsGroup to
  # local volumes (it does not to hostPath), so the image's uid 1000 writes it as on a cluster.
  admin apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata: {name: recjobs-runs}
spec:
  capacity: {storage: 100Gi}
  accessModes: [ReadWriteMany]
  persistentVolumeReclaimPolicy: Retain
  storageClassName: ""
  claimRef: {namespace: recjobs, name: recjobs-runs}
  local: {path: $state/pv/recjobs-runs}
  nodeAffinity:
    required:
      nodeSelectorTerms:
        - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [$node]}]
EOF
  wait_for 60 "PVC recjobs-runs bound" \
    bash -c "[ \"\$($bin/kubectl --kubeconfig $state/admin.kubeconfig -n recjobs get pvc recjobs-runs -o 'jsonpath={.status.phase}')\" = Bound ]"
}
write_submitter_kubeconfig() {
  mkdir -p "$root/.k8s"
  write_kubeconfig "$root/.k8s/kubeconfig" recjobs-submitter \
    "{token: $(admin -n recjobs create token recjobs-submitter --duration=48h)}" recjobs
  cp "$state/admin.kubeconfig" "$root/.k8s/admin.kubeconfig"
}

up() {
  [ "$(id -u)" = 0 ] || die "needs root (containerd, the kubelet, network interfaces)"
  for tool in etcd containerd containerd-shim-runc-v2 runc openssl curl ip /usr/lib/cni/bridge; do
    command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install etcd-server containerd runc containernetworking-plugins openssl curl iproute2)"
  done
  mkdir -p "$state" "$logs" "$pids"
  exec 8>"$state/lock"
  flock -n 8 || die "another k8s/dev/cluster.sh runs on this machine"
  if running kube-apiserver; then
    say "already up (k8s/dev/cluster.sh down first for a fresh cluster)"
    return
  fi
  down_processes
  local t0=$SECONDS
  bin=$("$root/k8s/dev/build.sh") || die "building the binaries failed"
  say "binaries: $bin ($((SECONDS - t0)) s)"
  # Go's build cache (about 6 GB) only speeds up rebuilding the same versions; the images need
  # that disk more. The module cache stays: a version bump downloads only what changed.
  rm -rf "$cache/k8s/go/build"
  : >"$logs/up.log"
  make_pki
  kubeconfig "$state/admin.kubeconfig" admin
  network_up
  start_etcd
  start_apiserver
  start_controllers
  start_registry
  start_containerd
  publish_images
  start_kubelet
  make_gpu_node
  start_coredns
  start_volcano
  apply_project
  write_submitter_kubeconfig
  echo "$bin" >"$state/bin"
  say "up in $((SECONDS - t0)) s: KUBECONFIG=$root/.k8s/kubeconfig (submitter), $root/.k8s/admin.kubeconfig (admin); logs in $logs"
}

# --- down --------------------------------------------------------------------------------------
down_processes() {
  local name
  for name in vc-scheduler vc-controller-manager vc-webhook-manager coredns kubelet \
    kube-scheduler kube-controller-manager kube-apiserver etcd registry; do
    stop "$name"
  done
  if running containerd; then
    # Containers the kubelet did not stop (it was stopped first): kill their tasks, then let
    # containerd's CRI plugin tear the sandboxes' networks down as it stops them.
    local task
    for task in $(ctr_k8s tasks ls -q 2>/dev/null); do
      ctr_k8s tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
    done
    sleep 1
    for task in $(ctr_k8s tasks ls -q 2>/dev/null); do
      ctr_k8s tasks delete -f "$task" >/dev/null 2>&1 || true
    done
    for task in $(ctr_k8s containers ls -q 2>/dev/null); do
      ctr_k8s containers delete "$task" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  # Shims whose containerd is gone.
  pkill -KILL -f "containerd-shim-runc-v2 .*-address $sock" 2>/dev/null || true
}
down() {
  [ "$(id -u)" = 0 ] || die "needs root"
  mkdir -p "$state" "$pids"
  exec 8>"$state/lock"
  flock -w 60 8 || die "another k8s/dev/cluster.sh holds $state/lock"
  bin=$(cat "$state/bin" 2>/dev/null || true)
  if [ -n "$bin" ] && running kube-apiserver && running kubelet; then
    # Pods first, while the kubelet runs: it stops their containers and releases their
    # sandboxes (network namespaces, veths, IP addresses) the normal way.
    admin delete jobs.batch.volcano.sh --all -A --wait=false >/dev/null 2>&1 || true
    admin delete pods --all -A --grace-period=2 --timeout=60s >/dev/null 2>&1 || true
  fi
  down_processes
  # Mounts left under the state directory and the image store (pod volumes, rootfs overlays,
  # network namespaces), deepest first.
  local mnt
  for mnt in $(findmnt -rn -o TARGET | grep -E "^($state|$cache/k8s/containerd)(/|$)" | sort -r); do
    umount -l "$mnt" 2>/dev/null || true
  done
  for mnt in /run/netns/cni-* /var/run/netns/cni-*; do
    [ -e "$mnt" ] || continue
    # Network namespaces made by containerd for our pods: their veth peer is on our bridge.
    if ip -n "$(basename "$mnt")" link 2>/dev/null | grep -q "eth0@"; then
      ip netns delete "$(basename "$mnt")" 2>/dev/null || true
    fi
  done
  ip link delete "$bridge" 2>/dev/null || true
  ip link delete "$node_link" 2>/dev/null || true
  if [ -f "$state/mounted-hugetlb" ]; then
    umount /sys/fs/cgroup/hugetlb 2>/dev/null && rmdir /sys/fs/cgroup/hugetlb 2>/dev/null || true
    rm -f "$state/mounted-hugetlb"
  fi
  # The kubelet's cgroups (empty now), deepest first.
  local controller
  for controller in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/*/kubepods.slice; do
    [ -d "$controller" ] && find "$controller" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  rm -rf "$state/cni/ipam" "$root/.k8s"
  leftovers
  say "down: no process, mount or link of the cluster is left"
}
leftovers() { # fail, naming them, if processes, mounts or links of the cluster remain
  local found
  found=$(
    pgrep -af "$state|$cache/k8s/bin-" || true
    findmnt -rn -o TARGET | grep -E "^($state|$cache/k8s/containerd)(/|$)" || true
    ip -o link show | grep -oE "($node_link|$bridge|veth[0-9a-f]+)@?[^:]*: .*master $bridge" || true
    ip -o link show "$node_link" 2>/dev/null || true
    ip -o link show "$bridge" 2>/dev/null || true
  )
  [ -z "$found" ] || die "down left these behind:
$found"
}

status() {
  local name
  for name in etcd registry kube-apiserver kube-controller-manager kube-scheduler containerd kubelet \
    coredns vc-webhook-manager vc-controller-manager vc-scheduler; do
    if running "$name"; then echo "$name: running (pid $(cat "$pids/$name"))"; else echo "$name: stopped"; fi
  done
}

# Sourced (tests/test_cold_paths.py), it only defines the functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: k8s/dev/cluster.sh up|down|status" ;;
  esac
fi
