#!/usr/bin/env bash
# A real Kubernetes control plane for pacsflow's tests and developers (docs/cluster.md).
#
#   scripts/cluster.sh bins   build kube-apiserver + kube-controller-manager (cached, outside the repo)
#   scripts/cluster.sh node-bins  build kube-scheduler + kubelet + kube-proxy (same cache; docs/pods.md)
#   scripts/cluster.sh helm   build helm v3 into the same cache
#   scripts/cluster.sh up     start etcd + kube-apiserver + kube-controller-manager in the background, then a
#                             node (containerd, kubelet, kube-scheduler, kube-proxy; images from scripts/images.sh);
#                             writes .cluster/kubeconfig (PIDs and logs in .cluster/)
#   scripts/cluster.sh down   stop them by the recorded PIDs and remove what the node made
#   scripts/cluster.sh path   print the binary cache directory
#
# Environment: PACSFLOW_CACHE (default ~/.cache/pacsflow), PACSFLOW_GO_JOBS (default 2: the build
# shares the machine), CLUSTER_DIR (default .cluster).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# cluster/go.mod is the one place the Kubernetes version is written down.
K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$REPO/cluster/go.mod")
HELM_VERSION=v3.22.0
CACHE=${PACSFLOW_CACHE:-$HOME/.cache/pacsflow}
BIN=$CACHE/k8s-$K8S_VERSION/bin
GO_JOBS=${PACSFLOW_GO_JOBS:-2}
GO_NICE=10
CONTROL_PLANE=(kube-apiserver kube-controller-manager)
# The node's commands (docs/pods.md): built at the lowest priority, one compile at a time, so a
# shared 2-core machine keeps working while they build (~1 h the first time).
NODE=(kube-scheduler kubelet kube-proxy)
CLUSTER_DIR=${CLUSTER_DIR:-$REPO/.cluster}
PY=${PY:-$REPO/.venv/bin/python}

# Static, stripped, path-free binaries, like the upstream release builds.
go_build_env() {
  export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false"
}

with_lock() {
  # Two test sessions (or `make -j`) must not build into the same cache at once.
  mkdir -p "$BIN"
  exec 9>"$BIN/.build.lock"
  flock 9
}

# build_bins CMD... : build the named k8s.io/kubernetes/cmd/* commands that are not cached yet.
build_bins() {
  local missing=()
  for cmd in "$@"; do
    [ -x "$BIN/$cmd" ] || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v go >/dev/null || { echo "go is not installed; the control plane is built from source (docs/cluster.md)" >&2; exit 1; }
  with_lock
  go_build_env
  cd "$REPO/cluster"
  # What upstream's hack/lib/version.sh stamps in; without it /version says v0.0.0-master and
  # helm's kubeVersion checks (and anything else reading the server version) reject the cluster.
  local major minor ldflags="-s -w"
  IFS=. read -r major minor _ <<<"${K8S_VERSION#v}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  for cmd in "${missing[@]}"; do
    [ -x "$BIN/$cmd" ] && continue  # built by whoever held the lock before us
    echo "building $cmd $K8S_VERSION into $BIN (first use only; ~20 min on 2 cores)" >&2
    local start=$SECONDS
    # Build to a temporary name so an interrupted build never leaves a half-written binary.
    nice -n "$GO_NICE" go build -p "$GO_JOBS" -trimpath -ldflags="$ldflags" -o "$BIN/.$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv "$BIN/.$cmd.tmp" "$BIN/$cmd"
    echo "built $cmd in $((SECONDS - start))s" >&2
  done
}

build_helm() {
  [ -x "$BIN/helm" ] && return 0
  command -v go >/dev/null || { echo "go is not installed; helm is built from source (docs/cluster.md)" >&2; exit 1; }
  with_lock
  [ -x "$BIN/helm" ] && return 0
  go_build_env
  echo "building helm $HELM_VERSION into $BIN (first use only)" >&2
  local start=$SECONDS
  # `go install pkg@version` builds outside any module, so the wrapper module is not involved.
  GOBIN="$BIN" nice -n 10 go install -p "$GO_JOBS" -trimpath \
    -ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  echo "built helm in $((SECONDS - start))s" >&2
}

case "${1:-}" in
  bins) build_bins "${CONTROL_PLANE[@]}" ;;
  node-bins) GO_JOBS=1 GO_NICE=19 build_bins "${NODE[@]}" ;;
  helm) build_helm ;;
  up)
    build_bins "${CONTROL_PLANE[@]}"
    GO_JOBS=1 GO_NICE=19 build_bins "${NODE[@]}"
    cd "$REPO"
    mapfile -t archives < <(scripts/images.sh archive)
    # The control plane on the node's bridge address, then the node: containerd + CNI bridge, the images in
    # containerd's k8s.io namespace, kubelet, kube-scheduler, kube-proxy (docs/pods.md).
    exec "$PY" -m tests.peers.node up "$CLUSTER_DIR" "${archives[@]}"
    ;;
  down)
    cd "$REPO"
    # The node first (pods, mounts, netns, bridge, iptables, containerd state), then the control plane.
    "$PY" -m tests.peers.node down "$CLUSTER_DIR"
    exec "$PY" -m tests.peers.cluster down "$CLUSTER_DIR"
    ;;
  path) echo "$BIN" ;;
  *)
    sed -n '2,15p' "$0" >&2
    exit 2
    ;;
esac
