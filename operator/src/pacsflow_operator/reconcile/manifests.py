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


def deployment(name: str, labels: dict[str, str], selector: dict[str, str], replicas: int,
               pod_spec: dict[str, Any], *, strategy: str | None = None) -> dict[str, Any]:
    """A Deployment whose pods carry ``labels`` (a superset of ``selector``) and run ``pod_spec``."""
    spec: dict[str, Any] = {"replicas": replicas}
    if strategy is not None:
        spec["strategy"] = {"type": strategy}
    spec["selector"] = {"matchLabels": selector}
    spec["template"] = {"metadata": {"labels": labels}, "spec": pod_spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": labels},
            "spec": spec}
