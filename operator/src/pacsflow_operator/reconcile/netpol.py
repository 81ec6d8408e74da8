"""A DicomRouter's NetworkPolicy: the router pod talks only to the peers its spec declares.

Ingress: the DICOM port (and the external AIs' results port) from ``allowedNetworks`` (and the HL7 ports from the
listener's own ``allowedNetworks``); both empty mean any address, as the router's own allow-lists do. The metrics
port is open to scrapers (to ``metrics.allowedNetworks`` when set). Egress: DNS, the Kubernetes API server (the
router watches its ConfigMap), the
TritonCluster's pods, and each destination, HL7 receiver, worklist source, webhook and the audit syslog collector, on
its port; a peer named by an IP address is narrowed to that address
(a host name cannot be, in a NetworkPolicy: that peer gets its port towards any address).
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import Any
from urllib.parse import urlsplit

from ..resources.v1alpha1 import DicomRouterSpec
from .triton import GRPC_PORT, HTTP_PORT
from .triton import labels as triton_labels

API_SERVER_PORTS = (443, 6443)
"""Where the Kubernetes API server listens (the Service ``kubernetes`` and the control plane's own port)."""


def _blocks(networks: list[str]) -> list[dict[str, Any]]:
    return [{"ipBlock": {"cidr": n}} for n in networks]


def _to_host(host: str, port: int) -> dict[str, Any]:
    rule: dict[str, Any] = {"ports": [{"port": port, "protocol": "TCP"}]}
    try:
        address = ip_address(host)
    except ValueError:
        return rule  # a DNS name: the port only
    rule["to"] = [{"ipBlock": {"cidr": f"{address}/{32 if address.version == 4 else 128}"}}]
    return rule


def _webhook_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def router_network_policy(name: str, spec: DicomRouterSpec, selector: dict[str, str],
                          labels: dict[str, str]) -> dict[str, Any]:
    """The NetworkPolicy ``name`` of a router's pods (those matching ``selector``)."""
    dicom: dict[str, Any] = {"ports": [{"port": spec.port, "protocol": "TCP"}]}
    if spec.allowed_networks:
        dicom["from"] = _blocks(list(spec.allowed_networks))
    scrape: dict[str, Any] = {"ports": [{"port": spec.metrics_port, "protocol": "TCP"}]}
    if spec.metrics is not None and spec.metrics.allowed_networks:  # the metrics port's own allow-list
        scrape["from"] = _blocks(list(spec.metrics.allowed_networks))
    ingress = [dicom, scrape]
    if spec.external_ai is not None:  # the external AIs' results port: the DICOM port's allow-list
        ingress.append({**dicom, "ports": [{"port": spec.external_ai.results_port, "protocol": "TCP"}]})
    if spec.hl7_listener is not None:
        hl7_ports = [spec.hl7_listener.port, *([spec.hl7_listener.http_port] if spec.hl7_listener.http_port else [])]
        hl7: dict[str, Any] = {"ports": [{"port": p, "protocol": "TCP"} for p in hl7_ports]}
        if spec.hl7_listener.allowed_networks:
            hl7["from"] = _blocks(list(spec.hl7_listener.allowed_networks))
        ingress.append(hl7)

    egress: list[dict[str, Any]] = [
        {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
        {"ports": [{"port": p, "protocol": "TCP"} for p in API_SERVER_PORTS]},
    ]
    if spec.triton_cluster is not None:
        triton = {k: v for k, v in triton_labels(spec.triton_cluster).items()
                  if k in ("app.kubernetes.io/name", "app.kubernetes.io/instance")}
        egress.append({"to": [{"podSelector": {"matchLabels": triton}}],
                       "ports": [{"port": p, "protocol": "TCP"} for p in (HTTP_PORT, GRPC_PORT)]})
    peers = [(d.host, d.port) for d in spec.destinations] + [(d.host, d.port) for d in spec.hl7_destinations]
    if spec.mwl_source is not None:
        peers.append((spec.mwl_source.host, spec.mwl_source.port))
    peers += [_webhook_port(w.url) for w in spec.webhooks]
    if spec.audit_syslog is not None:  # the audit collector (syslog over TLS)
        peers.append((spec.audit_syslog.host, spec.audit_syslog.port))
    for host, port in dict.fromkeys(peers):  # in spec order, once each
        egress.append(_to_host(host, port))
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "labels": labels},
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress", "Egress"],
                 "ingress": ingress, "egress": egress},
    }
