"""The TritonCluster's NetworkPolicy: routers on HTTP/gRPC, the operator's pods on HTTP, scrapers on metrics."""

from __future__ import annotations

from pacsflow_operator.reconcile import triton as triton_rc
from pacsflow_operator.resources.v1alpha1 import TritonClusterSpec

SPEC = TritonClusterSpec.model_validate({"image": "triton:1", "gpusPerReplica": 0,
                                         "modelRepository": {"persistentVolumeClaim": "model-repo"}})


def _rules_for(policy: dict, port: int) -> list[dict]:
    return [r for r in policy["spec"]["ingress"] if {"port": port, "protocol": "TCP"} in r["ports"]]


def test_operator_pods_of_its_namespace_reach_tritons_http_port_only():
    plan = triton_rc.render_triton("cpu", SPEC, {}, render_image="r", operator_namespace="pacsflow-system")
    policy = next(c for c in plan.children if c["kind"] == "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "cpu"
    operator_peer = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "pacsflow-system"}},
                     "podSelector": {"matchLabels": {"app.kubernetes.io/name": "pacsflow-operator",
                                                     "app.kubernetes.io/component": "operator"}}}
    http_sources = [peer for rule in _rules_for(policy, triton_rc.HTTP_PORT) for peer in rule["from"]]
    assert operator_peer in http_sources
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "pacsflow-router"}}} in http_sources
    # gRPC (inference) stays the routers' alone; nothing else is opened to any source.
    grpc_sources = [peer for rule in _rules_for(policy, triton_rc.GRPC_PORT) for peer in rule["from"]]
    assert operator_peer not in grpc_sources
    assert all("from" in r for r in policy["spec"]["ingress"] if r["ports"] != [
        {"port": triton_rc.METRICS_PORT, "protocol": "TCP"}])


def test_without_a_known_namespace_the_operator_pods_are_admitted_by_label_from_any_namespace():
    policy = triton_rc.network_policy("cpu")
    peers = [peer for rule in _rules_for(policy, triton_rc.HTTP_PORT) for peer in rule["from"]]
    operator = next(p for p in peers if "namespaceSelector" in p)
    assert operator["namespaceSelector"] == {}
    assert operator["podSelector"]["matchLabels"] == triton_rc.OPERATOR_POD_LABELS
