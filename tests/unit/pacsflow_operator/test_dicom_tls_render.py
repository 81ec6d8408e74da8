"""DicomRouter spec.dicomTls / spec.allowedNetworks -> the routing config and the pod's Secret mount."""

from __future__ import annotations

import pytest
import yaml

from pacsflow_operator.reconcile import router as router_rc
from pacsflow_operator.resources.v1alpha1 import DicomRouterSpec
from pacsflow_router.config import parse_config
from tests.unit.pacsflow_operator.test_reconcile import _example


def _spec(**extra: object) -> DicomRouterSpec:
    return DicomRouterSpec.model_validate({**_example("dicomrouter.yaml"), **extra})


def test_dicom_tls_secret_is_mounted_and_the_config_points_at_it():
    spec = _spec(allowedNetworks=["10.20.0.0/16"], dicomTls={
        "secretName": "router-dicom-tls", "clientCertificate": "required",
        "aeTitlesByCertificate": {"ct-scanner-1": ["CT1"]}})
    plan = router_rc.render_router("r", "ns", spec, {}, image="img")
    # The rendered ConfigMap text is what the router loads: parse it with the router's own parser.
    [cm] = [c for c in plan.children if c["kind"] == "ConfigMap" and router_rc.CONFIG_KEY in c.get("data", {})]
    config = parse_config(yaml.safe_load(cm["data"][router_rc.CONFIG_KEY]))
    assert config.allowed_networks == ["10.20.0.0/16"]
    assert config.tls is not None
    assert (config.tls.cert_file, config.tls.key_file, config.tls.client_ca_file) == (
        "/etc/pacsflow-tls/dicom/tls.crt", "/etc/pacsflow-tls/dicom/tls.key", "/etc/pacsflow-tls/dicom/ca.crt")
    assert config.tls.client_certificate == "required"
    assert config.tls.ae_titles_by_certificate == {"ct-scanner-1": ["CT1"]}
    [dep] = [c for c in plan.children if c["kind"] == "Deployment"]
    pod = dep["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "dicom-tls"]
    assert volume["secret"]["secretName"] == "router-dicom-tls"
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "dicom-tls"]
    assert mount == {"name": "dicom-tls", "mountPath": "/etc/pacsflow-tls/dicom", "readOnly": True}  # no subPath


def test_without_dicom_tls_nothing_is_mounted_and_server_tls_needs_no_ca():
    plan = router_rc.render_router("r", "ns", _spec(), {}, image="img")
    assert plan.config.tls is None and plan.config.allowed_networks == []
    tls_only = router_rc.render_router("r", "ns", _spec(dicomTls={"secretName": "s"}), {}, image="img")
    assert tls_only.config.tls is not None and tls_only.config.tls.client_ca_file is None


def test_bad_networks_and_a_secret_mount_over_the_tls_directory_are_refused():
    with pytest.raises(ValueError, match="address block"):
        _spec(allowedNetworks=["10.0.0.1/8"])
    with pytest.raises(ValueError, match="pacsflow-tls"):
        _spec(secretMounts=[{"secretName": "s", "mountPath": "/etc/pacsflow-tls/dicom"}])
