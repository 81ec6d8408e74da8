"""Manifest shapes shared by the router and Triton reconcilers (pure dicts, no API calls)."""

from __future__ import annotations

from typing import Any


def cluster_ip_service(name: str, labels: dict[str, str], selector: dict[str, str],
                       ports: list[tuple[str, int]]) -> dict[str, Any]:
    """A ClusterIP Service whose named ports target the pod's container ports of the same names."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}
                      for port_name, port in ports],
        },
    }
