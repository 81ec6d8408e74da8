"""DicomRouter spec.auditSyslog -> the routing config's audit.syslog, the collector's Secret mount, NetworkPolicy."""

from __future__ import annotations

import pytest

from pacsflow_operator.reconcile import router as router_rc
from pacsflow_operator.reconcile.netpol import router_network_policy
from tests.unit.pacsflow_operator.test_dicom_tls_render import _spec
from tests.unit.pacsflow_operator.test_metrics_tls_render import _rendered

_DIR = "/etc/pacsflow-tls/audit-syslog"


def test_audit_syslog_is_rendered_mounted_and_allowed_out():
    spec = _spec(auditSyslog={"host": "atna.hospital.example", "port": 6515, "tlsSecretName": "atna-client",
                              "clientCertificate": True, "serverName": "arr.hospital.example", "minVersion": "1.3",
                              "retrySeconds": 2})
    config, pod, container = _rendered(spec)
    syslog = config.audit.syslog
    assert syslog is not None
    assert (syslog.host, syslog.port, syslog.retry_seconds) == ("atna.hospital.example", 6515, 2.0)
    assert syslog.audit_source_id == "r"  # the DicomRouter's name
    assert (syslog.tls.ca_file, syslog.tls.cert_file, syslog.tls.key_file) == (
        f"{_DIR}/ca.crt", f"{_DIR}/tls.crt", f"{_DIR}/tls.key")
    assert (syslog.tls.server_name, syslog.tls.min_version) == ("arr.hospital.example", "1.3")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["audit-syslog-tls"]["secret"] == {"secretName": "atna-client", "defaultMode": 0o440}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    # One whole directory, read-only, no subPath: a rotated Secret reaches the pod.
    assert mounts["audit-syslog-tls"] == {"name": "audit-syslog-tls", "mountPath": _DIR, "readOnly": True}
    assert "atna-client" not in str(container.get("env"))
    # Egress to the collector's port (a host name: any address on that port).
    policy = router_network_policy("r", spec, {"app": "r"}, {})
    assert {"ports": [{"port": 6515, "protocol": "TCP"}]} in policy["spec"]["egress"]


def test_audit_syslog_defaults_server_only_tls_and_an_address_narrows_egress():
    spec = _spec(auditSyslog={"host": "10.9.8.7", "tlsSecretName": "atna-ca", "auditSourceId": "RAD-AI-1"})
    config, pod, container = _rendered(spec)
    syslog = config.audit.syslog
    assert syslog is not None
    assert (syslog.port, syslog.audit_source_id, syslog.retry_seconds) == (6514, "RAD-AI-1", 5.0)
    assert (syslog.tls.ca_file, syslog.tls.cert_file, syslog.tls.key_file) == (f"{_DIR}/ca.crt", None, None)
    assert syslog.tls.server_name is None and syslog.tls.min_version == "1.2"
    policy = router_network_policy("r", spec, {"app": "r"}, {})
    assert {"ports": [{"port": 6514, "protocol": "TCP"}], "to": [{"ipBlock": {"cidr": "10.9.8.7/32"}}]} in (
        policy["spec"]["egress"])
    # A long DicomRouter name is cut to the 64 characters an AuditSourceID may have.
    long_name = "r" * 70
    plan = router_rc.render_router(long_name, "ns", _spec(auditSyslog={"host": "a", "tlsSecretName": "s"}), {},
                                   image="img")
    assert plan.config.audit.syslog is not None and plan.config.audit.syslog.audit_source_id == "r" * 64


def test_without_audit_syslog_nothing_is_forwarded_mounted_or_allowed():
    spec = _spec()
    config, pod, container = _rendered(spec)
    assert config.audit.syslog is None
    assert "audit-syslog-tls" not in {v["name"] for v in pod["volumes"]}
    policy = router_network_policy("r", spec, {"app": "r"}, {})
    assert not [rule for rule in policy["spec"]["egress"] if rule["ports"] == [{"port": 6514, "protocol": "TCP"}]]


def test_bad_audit_syslog_specs_are_refused():
    with pytest.raises(ValueError, match="tlsSecretName"):
        _spec(auditSyslog={"host": "atna"})  # the CA bundle is required: the collector's certificate is verified
    with pytest.raises(ValueError, match="pattern"):
        _spec(auditSyslog={"host": "atna", "tlsSecretName": "s", "auditSourceId": "has space"})
    with pytest.raises(ValueError, match="pattern"):
        _spec(auditSyslog={"host": "atna; rm -rf /", "tlsSecretName": "s"})
    with pytest.raises(ValueError, match="extra"):
        _spec(auditSyslog={"host": "atna", "tlsSecretName": "s", "caFile": "/etc/ssl/ca.pem"})
