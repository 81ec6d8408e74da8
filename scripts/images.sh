#!/usr/bin/env bash
# Builds pacsflow's container images without a Docker daemon or a registry (docs/pods.md).
#
#   scripts/images.sh base     the local base image localhost/pacsflow-base:bookworm: a debootstrap'd
#                              `--variant=minbase bookworm` rootfs with python3 (cached, built once)
#   scripts/images.sh build    base + router, operator and triton-cpu images from Dockerfile.router,
#                              Dockerfile.operator and Dockerfile.triton (buildah bud --build-arg BASE_IMAGE=...)
#   scripts/images.sh archive  build + docker-archive tarballs under build/images/<name>-<version>.tar in this
#                              checkout (for `ctr images import`); prints their paths
#                              (plus localhost/pacsflow/pause, the node's pod sandbox image, cluster/pause, and
#                              localhost/pacsflow/coredns:<CoreDNS version>, the node's cluster DNS)
#   scripts/images.sh names    print the image references, one a line
#
# Images: localhost/pacsflow/{router,operator,triton-cpu}:<version from pyproject.toml>.
# buildah runs with --isolation chroot (no user namespaces, no daemon) and the overlay storage driver (vfs with
# PACSFLOW_BUILDAH_DRIVER=vfs), storage under $CACHE/buildah/<driver> so layers are reused across builds and clones.
# Environment: PACSFLOW_CACHE (default ~/.cache/pacsflow).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${PACSFLOW_CACHE:-$HOME/.cache/pacsflow}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -1)
BASE=localhost/pacsflow-base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# python3 (3.11, as in python:3.11-slim), venv for the build stage, libpython3.11 for Triton's python
# backend stub, the CA store, passwd for useradd.
BASE_PACKAGES=python3,python3-venv,libpython3.11,ca-certificates,passwd
IMAGES=(router operator triton-cpu)
ARCHIVES=(router operator triton-cpu pause coredns)
# The cluster DNS of the test node (docs/pods.md): upstream CoreDNS, built from the Go module proxy.
COREDNS_VERSION=v1.12.4
# overlay stores each layer once, as a diff (the CI machine's / is ext4); vfs, which copies the whole filesystem
# for every step and layer (tens of GB for these images), only where overlay mounts are impossible (PACSFLOW_BUILDAH_DRIVER=vfs,
# e.g. inside an overlayfs container).
DRIVER=${PACSFLOW_BUILDAH_DRIVER:-overlay}
# The archives belong to this checkout: the buildah store (and its tags) is shared by every checkout on the machine
# (a CI clone builds its own sources under the same tags), so a shared archive path could be re-exported from
# another tree's sources between this tree's export and its `ctr images import`.
ARCHIVE_DIR=$REPO/build/images
STORE=$CACHE/buildah/$DRIVER
export BUILDAH_ISOLATION=chroot STORAGE_DRIVER=$DRIVER
BUILDAH=(buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver "$DRIVER")

dockerfile() {
  case "$1" in
    router) echo Dockerfile.router ;;
    operator) echo Dockerfile.operator ;;
    triton-cpu) echo Dockerfile.triton ;;
  esac
}

ref() {
  if [ "$1" = coredns ]; then echo "localhost/pacsflow/coredns:${COREDNS_VERSION#v}"; else echo "localhost/pacsflow/$1:$VERSION"; fi
}

need() {
  for tool in buildah debootstrap; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: run scripts/install-node-deps.sh (make images does)" >&2; exit 1; }
  done
}

lock() {
  mkdir -p "$STORE"
  exec 8>"$STORE/.lock"
  flock 8
}

build_base() {
  "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1 && return 0
  local rootfs=$CACHE/images/bookworm-minbase start=$SECONDS
  mkdir -p "$CACHE/images/debs"
  if [ ! -f "$rootfs/.complete" ]; then
    rm -rf "$rootfs"
    echo "debootstrap --variant=minbase bookworm into $rootfs" >&2
    nice -n 10 debootstrap --variant=minbase --include="$BASE_PACKAGES" --cache-dir="$CACHE/images/debs" \
      bookworm "$rootfs" "$MIRROR" >"$CACHE/images/debootstrap.log"
    # What python:3.11-slim also leaves out: apt's lists, docs, man pages, locales.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/{doc,man,info,locale}/* \
      "$rootfs"/var/log/*.log
    touch "$rootfs/.complete"
  fi
  local ctr mnt
  ctr=$("${BUILDAH[@]}" from scratch)
  mnt=$("${BUILDAH[@]}" mount "$ctr")
  tar -C "$rootfs" --exclude=./.complete -cf - . | tar -C "$mnt" -xpf -
  "${BUILDAH[@]}" umount "$ctr" >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd /bin/bash --label org.opencontainers.image.base.name=debian:bookworm-minbase "$ctr"
  "${BUILDAH[@]}" commit --rm "$ctr" "$BASE" >/dev/null
  echo "base image $BASE in $((SECONDS - start))s" >&2
}

build_image() {
  local name=$1 start=$SECONDS
  # The build trusts the host's CA bundle (a TLS-intercepting proxy, if any, is in it) for pip; the bundle is
  # mounted for the build only and is not part of any layer.
  local ca=()
  [ -f /etc/ssl/certs/ca-certificates.crt ] && ca=(--volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
  nice -n 10 "${BUILDAH[@]}" bud --layers --isolation chroot --network host "${ca[@]}" \
    --build-arg BASE_IMAGE="$BASE" --build-arg VERSION="$VERSION" \
    -f "$REPO/$(dockerfile "$name")" -t "$(ref "$name")" "$REPO" >"$STORE/build-$name.log" 2>&1 \
    || { tail -30 "$STORE/build-$name.log" >&2; echo "building $name failed; full log: $STORE/build-$name.log" >&2; exit 1; }
  echo "$(ref "$name") built in $((SECONDS - start))s" >&2
}

# The pod sandbox image for the node's containerd (cluster/pause: a static Go binary, from scratch).
build_pause() {
  local ref=localhost/pacsflow/pause:$VERSION
  "${BUILDAH[@]}" inspect --type image "$ref" >/dev/null 2>&1 && [ "$ref.$(sha256sum <"$REPO/cluster/pause/main.go" | cut -c1-12)" = "$(cat "$STORE/pause.stamp" 2>/dev/null)" ] && return 0
  command -v go >/dev/null || { echo "go is not installed; the pause binary is built from cluster/pause" >&2; exit 1; }
  local out=$STORE/pause ctr
  (cd "$REPO/cluster" && CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags='-s -w' -o "$out" ./pause)
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "$ctr" "$out" /pause >/dev/null
  "${BUILDAH[@]}" config --entrypoint '["/pause"]' --user 65535:65535 \
    --label org.opencontainers.image.version="$VERSION" "$ctr"
  "${BUILDAH[@]}" commit --rm "$ctr" "$ref" >/dev/null
  echo "$ref.$(sha256sum <"$REPO/cluster/pause/main.go" | cut -c1-12)" >"$STORE/pause.stamp"
}

# CoreDNS for the node's cluster DNS: the upstream command (every in-tree plugin) built from the Go module proxy,
# static and stripped like the release binaries, cached under $CACHE/coredns-<version>; a FROM-scratch image
# running as 65532 (upstream's nonroot user) with the binary alone.
build_coredns() {
  local ref bin_dir=$CACHE/coredns-$COREDNS_VERSION ctr
  ref=$(ref coredns)
  "${BUILDAH[@]}" inspect --type image "$ref" >/dev/null 2>&1 && return 0
  if [ ! -x "$bin_dir/coredns" ]; then
    command -v go >/dev/null || { echo "go is not installed; CoreDNS is built from the Go module proxy" >&2; exit 1; }
    local start=$SECONDS
    mkdir -p "$bin_dir"
    echo "building coredns $COREDNS_VERSION into $bin_dir (first use only; ~6 min on 2 cores)" >&2
    # `go install pkg@version` builds CoreDNS's own module with its own go.sum (it has no replace directives).
    CGO_ENABLED=0 GOBIN="$bin_dir/.tmp" nice -n 10 go install -p 2 -buildvcs=false -trimpath \
      -ldflags="-s -w -X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" \
      "github.com/coredns/coredns@$COREDNS_VERSION"
    mv "$bin_dir/.tmp/coredns" "$bin_dir/coredns"
    rmdir "$bin_dir/.tmp"
    echo "built coredns in $((SECONDS - start))s" >&2
  fi
  ctr=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" copy "$ctr" "$bin_dir/coredns" /coredns >/dev/null
  "${BUILDAH[@]}" config --entrypoint '["/coredns"]' --user 65532:65532 \
    --label org.opencontainers.image.version="$COREDNS_VERSION" \
    --label org.opencontainers.image.source=https://github.com/coredns/coredns "$ctr"
  "${BUILDAH[@]}" commit --rm "$ctr" "$ref" >/dev/null
}

archive() {
  mkdir -p "$ARCHIVE_DIR"
  for name in "${ARCHIVES[@]}"; do
    local out id
    out=$ARCHIVE_DIR/$name-$(ref "$name" | cut -d: -f2).tar
    id=$("${BUILDAH[@]}" inspect --type image --format '{{.FromImageID}}' "$(ref "$name")")
    # Re-export only when the image changed.
    if [ ! -f "$out" ] || [ "$(cat "$out.id" 2>/dev/null)" != "$id" ]; then
      rm -f "$out"
      "${BUILDAH[@]}" push --quiet "$(ref "$name")" "docker-archive:$out:$(ref "$name")" >/dev/null
      echo "$id" >"$out.id"
    fi
    echo "$out"
  done
}

case "${1:-}" in
  base) need; lock; build_base ;;
  build)
    need; lock; build_base
    for name in "${IMAGES[@]}"; do build_image "$name"; done
    build_pause
    build_coredns
    "${BUILDAH[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep pacsflow >&2
    ;;
  archive)
    need; lock; build_base
    for name in "${IMAGES[@]}"; do build_image "$name"; done
    build_pause
    build_coredns
    archive
    ;;
  names) for name in "${ARCHIVES[@]}"; do ref "$name"; done ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
