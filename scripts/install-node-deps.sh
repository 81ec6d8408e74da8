#!/usr/bin/env bash
# Installs the Debian packages that build pacsflow's images and run its single-node cluster
# (docs/pods.md): buildah (rootless-capable OCI builds, no Docker daemon), debootstrap (the local
# bookworm base), containerd + runc (the node's container runtime), the CNI plugins (bridge,
# host-local, portmap, loopback) and iptables/conntrack (kube-proxy). `make images` and
# `make cluster-up` run it.
set -euo pipefail
need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v ip >/dev/null || need+=(iproute2)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing Debian packages: ${need[*]}; install them with: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
