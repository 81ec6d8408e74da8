"""DicomRouter spec.metrics -> the routing config's metrics (TLS, bearer token, allow-list), Secret mounts, probes."""

from __future__ import annotations

import pytest
import yaml

from pacsflow_operator.reconcile import router as router_rc
from pacsflow_operator.reconcile.netpol import router_network_policy
from pacsflow_operator.resources.v1alpha1 import DicomRouterSpec
from pacsflow_router.config import RoutingConfig, parse_config
from tests.unit.pacsflow_operator.test_dicom_tls_render import _spec


def _rendered(spec: DicomRouterSpec) -> tuple[RoutingConfig, dict, dict]:
    plan = router_rc.render_router("r", "ns", spec, {}, image="img")
    # The ConfigMap's text is what the router loads: parse it with the router's own parser.
    [cm] = [c for c in plan.children if c["kind"] == "ConfigMap" and router_rc.CONFIG_KEY in c.get("data", {})]
    [dep] = [c for c in plan.children if c["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    return parse_config(yaml.safe_load(cm["data"][router_rc.CONFIG_KEY])), pod, pod["containers"][0]


def test_metrics_tls_token_and_allow_list_are_mounted_and_rendered():
    spec = _spec(metricsPort=9443, metrics={
        "tlsSecretName": "router-metrics-tls", "bearerTokenSecret": {"secretName": "scrape", "key": "prom-token"},
        "allowedNetworks": ["10.0.0.0/8"]})
    config, pod, container = _rendered(spec)
    assert config.metrics.port == 9443 and config.metrics.host == "0.0.0.0"
    assert config.metrics.tls is not None
    assert (config.metrics.tls.cert_file, config.metrics.tls.key_file) == (
        "/etc/pacsflow-tls/metrics/tls.crt", "/etc/pacsflow-tls/metrics/tls.key")
    assert config.metrics.tls.client_certificate == "none"  # Prometheus authenticates with the token
    assert config.metrics.bearer_token_file == "/etc/pacsflow-tls/metrics-token/prom-token"
    assert config.metrics.allowed_networks == ["10.0.0.0/8"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["metrics-tls"]["secret"] == {"secretName": "router-metrics-tls", "defaultMode": 0o440}
    assert volumes["metrics-token"]["secret"]["secretName"] == "scrape"
    assert volumes["metrics-token"]["secret"]["items"] == [{"key": "prom-token", "path": "prom-token"}]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    # Whole directories, read-only, no subPath: a rotated Secret reaches the pod.
    assert mounts["metrics-tls"] == {"name": "metrics-tls", "mountPath": "/etc/pacsflow-tls/metrics", "readOnly": True}
    assert mounts["metrics-token"] == {"name": "metrics-token", "mountPath": "/etc/pacsflow-tls/metrics-token",
                                       "readOnly": True}
    # The token is a file, never an environment variable or config text.
    assert "scrape" not in str(container.get("env")) and "prom-token" not in str(container.get("env"))
    # Liveness on /healthz, startup and readiness on /readyz (no token needed), all over HTTPS.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics", "scheme": "HTTPS"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics", "scheme": "HTTPS"}
    assert container["startupProbe"]["httpGet"] == container["readinessProbe"]["httpGet"]
    # The NetworkPolicy narrows the metrics port to the same blocks.
    policy = router_network_policy("r", spec, {"app": "r"}, {})
    [scrape] = [rule for rule in policy["spec"]["ingress"] if rule["ports"] == [{"port": 9443, "protocol": "TCP"}]]
    assert scrape["from"] == [{"ipBlock": {"cidr": "10.0.0.0/8"}}]


def test_without_spec_metrics_the_port_is_plain_open_and_probed_over_http():
    config, pod, container = _rendered(_spec())
    assert (config.metrics.tls, config.metrics.bearer_token_file, config.metrics.allowed_networks) == (None, None, [])
    assert not {"metrics-tls", "metrics-token"} & {v["name"] for v in pod["volumes"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics", "scheme": "HTTP"}
    # A token alone (no TLS): the probe stays HTTP and still needs no secret.
    config, pod, container = _rendered(_spec(metrics={"bearerTokenSecret": {"secretName": "scrape"}}))
    assert config.metrics.tls is None and config.metrics.bearer_token_file == "/etc/pacsflow-tls/metrics-token/token"
    assert container["livenessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert "metrics-tls" not in {v["name"] for v in pod["volumes"]}
    policy = router_network_policy("r", _spec(), {"app": "r"}, {})
    [scrape] = [rule for rule in policy["spec"]["ingress"] if rule["ports"] == [{"port": 9108, "protocol": "TCP"}]]
    assert "from" not in scrape


def test_bad_metrics_specs_are_refused():
    with pytest.raises(ValueError, match="address block"):
        _spec(metrics={"allowedNetworks": ["10.0.0.1/8"]})
    with pytest.raises(ValueError, match="pattern"):
        _spec(metrics={"bearerTokenSecret": {"secretName": "s", "key": "../etc/passwd"}})
    with pytest.raises(ValueError, match="extra"):
        _spec(metrics={"tlsSecret": "typo"})
