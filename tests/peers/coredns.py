"""Cluster DNS for the test node: upstream CoreDNS as a Deployment in ``kube-system``, Service ``kube-dns``.

The manifests follow what kubeadm deploys (ServiceAccount, ClusterRole for the ``kubernetes`` plugin, ConfigMap
with the Corefile, Deployment, Service at a fixed ClusterIP that the kubelet's ``clusterDNS`` names), with two
changes for a pod that runs non-root with a read-only root filesystem and no capabilities: CoreDNS listens on
port 1053 in the pod (binding :53 needs ``NET_BIND_SERVICE``) and the Service maps 53 -> 1053; the image is
``localhost/pacsflow/coredns`` from ``scripts/images.sh`` (the binary alone, ``FROM scratch``). See docs/pods.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cluster import SERVICE_CLUSTER_IP_RANGE

DNS_SERVICE_IP = "10.0.0.10"
"""The ``kube-dns`` Service's ClusterIP (kubelet ``clusterDNS``), the tenth address of the service range."""
CLUSTER_DOMAIN = "cluster.local"
DNS_PORT = 1053
"""CoreDNS's port inside its pod (unprivileged); the Service's port 53 targets it."""
NAMESPACE = "kube-system"
NAME = "coredns"

assert SERVICE_CLUSTER_IP_RANGE == "10.0.0.0/24", "DNS_SERVICE_IP must lie in the service range"

COREFILE = f""".:{DNS_PORT} {{
    errors
    health :8080 {{
        lameduck 5s
    }}
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    prometheus :9153
    forward . /etc/resolv.conf {{
        max_concurrent 1000
    }}
    cache 30
    loop
    reload
    loadbalance
}}
"""


def image_of(archives: list[Path]) -> str:
    """The CoreDNS image reference of ``scripts/images.sh archive``'s ``coredns-<version>.tar``."""
    archive = next((a for a in archives if a.name.startswith("coredns-")), None)
    if archive is None:
        raise ValueError("no coredns-<version>.tar among the image archives: scripts/images.sh archive builds it")
    return "localhost/pacsflow/coredns:" + archive.name.removeprefix("coredns-").removesuffix(".tar")


def manifests(image: str) -> list[dict[str, Any]]:
    """Every object of the cluster DNS, in the order ``kubectl apply`` should create them.

    Parameters
    ----------
    image
        The CoreDNS image (already in the node's containerd; ``imagePullPolicy: Never``).

    Returns
    -------
    list of dict
        ServiceAccount, ClusterRole, ClusterRoleBinding, ConfigMap, Deployment, Service.
    """
    labels = {"k8s-app": "kube-dns"}
    meta = {"name": NAME, "namespace": NAMESPACE, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:coredns", "labels": labels},
         # What the kubernetes plugin watches (upstream's deployment/kubernetes/coredns.yaml.sed).
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": COREFILE}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "serviceAccountName": NAME,
                "priorityClassName": "system-cluster-critical",
                # CoreDNS itself resolves upstream names through the node's resolver, not through itself.
                "dnsPolicy": "Default",
                "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "coredns", "image": image, "imagePullPolicy": "Never",
                    "args": ["-conf", "/etc/coredns/Corefile"],
                    "ports": [{"name": "dns", "containerPort": DNS_PORT, "protocol": "UDP"},
                              {"name": "dns-tcp", "containerPort": DNS_PORT, "protocol": "TCP"},
                              {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}],
                    "resources": {"requests": {"cpu": "50m", "memory": "70Mi"}, "limits": {"memory": "170Mi"}},
                    "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                    "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "initialDelaySeconds": 10,
                                      "periodSeconds": 10, "failureThreshold": 5},
                    # ready answers once the kubernetes plugin has synced its watches.
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                    "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "capabilities": {"drop": ["ALL"]}},
                }],
                "volumes": [{"name": "config", "configMap": {"name": NAME,
                                                              "items": [{"key": "Corefile", "path": "Corefile"}]}}],
            }},
        }},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "kube-dns", "namespace": NAMESPACE, "labels": labels},
         "spec": {"selector": labels, "clusterIP": DNS_SERVICE_IP, "ports": [
             {"name": "dns", "port": 53, "targetPort": DNS_PORT, "protocol": "UDP"},
             {"name": "dns-tcp", "port": 53, "targetPort": DNS_PORT, "protocol": "TCP"},
             {"name": "metrics", "port": 9153, "targetPort": 9153, "protocol": "TCP"}]}},
    ]
