"""DICOM TLS (PS3.15 Annex B, BCP 195) on the router's DICOM port, against real peers.

dcmtk ``storescu +tls`` sends to an in-process :class:`DicomReceiver` with mutual TLS and certificates bound to
calling AE titles; ``openssl s_client`` shows what is refused (TLS 1.1, a weak TLS 1.2 cipher, no client
certificate, a client certificate from another CA); a certificate rotated under a running association is used by
new handshakes while the running association keeps sending. The sending side (results.scu, workflow.mwl) is in
test_dicom_tls_scu.py. Certificates are made per test (tests/peers/certs.py), never committed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from pacsflow_router import metrics
from pacsflow_router.config import TlsClient, parse_config
from pacsflow_router.errors import ConfigError
from pacsflow_router.ingest.scp import DicomReceiver
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.ingest.tlsaccept import Refusal
from pacsflow_router.models import phantom
from pacsflow_router.results import chain
from pacsflow_router.results.audit import AuditLog
from pacsflow_router.tls import client_context
from pacsflow_router.workflow.orders import OrderStore
from pacsflow_router.workflow.worklist import worklist_service
from tests.peers.certs import Issued, Pki
from tests.peers.dcmtk import dcmtk_env, storescu
from tests.peers.net import eventually

HOST = "127.0.0.1"

for tool in ("storescu", "openssl"):
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} is missing: install dcmtk and openssl (scripts/install-system-deps.sh)")


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class Door:
    """An in-process receiver with TLS: its spool, its PKI and the refusals it reported."""

    def __init__(self, tmp: Path, *, client_certificate: str = "required", networks: list[str] | None = None,
                 services=()):
        self.tmp = tmp
        self.pki = Pki(tmp / "pki")
        self.server = self.pki.server()
        self.modality_a = self.pki.client("modality-a")
        self.refusals: list[Refusal] = []
        self.spool = Spool(tmp / "spool", 0.999)
        self.config = parse_config({
            "aeTitle": "PACSFLOW", "allowedCallingAETitles": ["CT_A", "CT_B", "ECHO"], "spoolDir": str(tmp / "spool"),
            "allowedNetworks": networks or [],
            "tls": {"certFile": str(self.server.cert), "keyFile": str(self.server.key),
                    "clientCaFile": str(self.pki.ca_file), "clientCertificate": client_certificate,
                    "aeTitlesByCertificate": {"modality-a": ["CT_A"], "modality-b": ["CT_B"]}},
        })
        self.rx = DicomReceiver(self.config, self.spool, port=0, acse_timeout=2, network_timeout=5,
                                on_refused=self.refusals.append, services=services)
        self.rx.start()

    @property
    def port(self) -> int:
        return self.rx.port

    def close(self) -> None:
        # A rejected association waits for the peer to close its connection; stopping before that aborts it in a
        # state pynetdicom does not expect (a thread exception), so wait for the associations to end first.
        eventually(lambda: not self.rx._ae.active_associations, "associations to end", timeout=10)
        self.rx.stop()
        self.spool.close()


@pytest.fixture
def door(tmp_path):
    d = Door(tmp_path)
    yield d
    d.close()


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory) -> list[Path]:
    paths, _ = phantom.write_study(tmp_path_factory.mktemp("ct"), 11, lesion=False, slices=4, rows=64, cols=64)
    return [Path(p) for p in paths]


def tls_storescu(door: Door, files: list[Path], calling: str, client: Issued | None):
    """storescu +tls with ``client``'s key and certificate (``+tla``: anonymous TLS, no client certificate)."""
    tls = ["+tls", str(client.key), str(client.cert)] if client else ["+tla"]
    return storescu(door.port, files, calling=calling,
                    extra=[*tls, "+cf", str(door.pki.ca_file), "-rc"], timeout=60)


def s_client(port: int, *args: str, cert: Issued | None = None, ca: Path | None = None) -> str:
    """``openssl s_client`` against the port; stdout and stderr together (it exits when stdin closes)."""
    cmd = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", "localhost", *args]
    if cert is not None:
        cmd += ["-cert", str(cert.cert), "-key", str(cert.key)]
    if ca is not None:
        cmd += ["-CAfile", str(ca), "-verify_return_error"]
    proc = subprocess.run(cmd, input=b"", capture_output=True, timeout=30, check=False)
    return (proc.stdout + proc.stderr).decode(errors="replace")


def test_storescu_over_tls_13_with_its_certificate_and_ae_title(door, ct_files):
    result = tls_storescu(door, ct_files, "CT_A", door.modality_a)
    assert result.returncode == 0, result.output
    assert len(result.acknowledged) == len(ct_files)
    study = pydicom.dcmread(ct_files[0], stop_before_pixels=True).StudyInstanceUID
    assert len(door.spool.instances(study)) == len(ct_files)
    # s_client with the same client certificate: TLS 1.3 negotiated (preferred), certificate verified.
    out = s_client(door.port, cert=door.modality_a, ca=door.pki.ca_file)
    assert "TLSv1.3" in out and "Verify return code: 0 (ok)" in out, out


def test_certificate_for_one_ae_title_cannot_send_as_another(door, ct_files):
    rejected = sample("pacsflow_associations_total", outcome="rejected")
    result = tls_storescu(door, ct_files[:1], "CT_B", door.modality_a)
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.output, result.output
    assert door.spool.count() == 0
    assert sample("pacsflow_associations_total", outcome="rejected") == rejected + 1
    refusal = door.refusals[-1]
    assert (refusal.reason, refusal.calling_ae_title, refusal.certificate) == (
        "certificate-ae-title", "CT_B", "modality-a")
    assert refusal.peer == HOST
    # What the router's audit makes of it (RouterService passes AuditLog.record_refusal as on_refused).
    audit = AuditLog(f"sqlite:///{door.tmp / 'audit.db'}")
    try:
        audit.record_refusal(refusal)
        [record] = chain.records(audit.engine)
        assert (record["kind"], record["actor"], record["outcome"]) == ("association-refused", HOST, "failure")
        detail = json.loads(record["detail"])  # stored as its canonical JSON text (the hashed content)
        assert (detail["reason"], detail["calling_ae_title"], detail["certificate"]) == (
            "certificate-ae-title", "CT_B", "modality-a")
        assert "may call as ['CT_A'], not 'CT_B'" in detail["detail"]
    finally:
        audit.close()
    # An AE title that is allowed but bound to no certificate is refused as well (strict binding).
    result = tls_storescu(door, ct_files[:1], "ECHO", door.modality_a)
    assert result.returncode != 0 and door.refusals[-1].reason == "certificate-ae-title"


def test_what_the_tls_door_refuses(door, tmp_path, ct_files):
    def refused_since(before: int) -> list[str]:
        return [r.detail for r in door.refusals[before:] if r.reason == "tls-handshake"]

    handshakes = sample("pacsflow_connections_refused_total", listener="dicom", reason="tls-handshake")
    rogue = Pki(tmp_path / "rogue", name="Rogue CA").client("modality-a")
    # what -> (s_client options, client certificate, the alert s_client gets, the router's OpenSSL reason)
    cases = {
        "TLS 1.1": (["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"], door.modality_a, "alert protocol version",
                    "UNSUPPORTED_PROTOCOL"),
        "a weak TLS 1.2 cipher (RSA key exchange, CBC)": (
            ["-tls1_2", "-cipher", "AES128-SHA:@SECLEVEL=0"], door.modality_a, "alert handshake failure",
            "NO_SHARED_CIPHER"),
        "no client certificate": ([], None, "alert certificate required", "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        "a client certificate from another CA": ([], rogue, "alert unknown ca", "CERTIFICATE_VERIFY_FAILED"),
    }
    for what, (args, cert, alert, reason) in cases.items():
        before = len(door.refusals)
        # -ign_eof: keep reading after the handshake, so a TLS 1.3 client sees the alert the server sends then.
        out = s_client(door.port, "-ign_eof", *args, cert=cert, ca=door.pki.ca_file)
        assert refused_since(before) == [reason], f"{what}: router refusals {door.refusals[before:]}\n{out}"
        assert alert in out, f"{what}: s_client did not get {alert!r}\n{out}"
        assert door.spool.count() == 0
    assert sample("pacsflow_connections_refused_total", listener="dicom", reason="tls-handshake") == \
        handshakes + len(cases)
    # dcmtk with anonymous TLS (no client certificate) and in plaintext: refused the same way, nothing stored.
    for client_tls in (["+tla"], []):
        before = len(door.refusals)
        result = storescu(door.port, ct_files[:1], calling="CT_A",
                          extra=[*client_tls, "+cf", str(door.pki.ca_file)] if client_tls else [], timeout=60)
        assert result.returncode != 0 and refused_since(before), result.output
    assert door.spool.count() == 0


def test_addresses_outside_allowed_networks_are_refused_before_the_association(door, ct_files):
    refused = sample("pacsflow_connections_refused_total", listener="dicom", reason="not-allowed")
    door.rx.update_config(door.config.model_copy(update={"allowed_networks": ["10.0.0.0/8"]}))
    result = tls_storescu(door, ct_files[:1], "CT_A", door.modality_a)
    assert result.returncode != 0 and door.spool.count() == 0
    assert sample("pacsflow_connections_refused_total", listener="dicom", reason="not-allowed") == refused + 1
    assert door.refusals[-1].reason == "not-allowed"
    door.rx.update_config(door.config.model_copy(update={"allowed_networks": ["127.0.0.0/8"]}))
    assert tls_storescu(door, ct_files[:1], "CT_A", door.modality_a).returncode == 0


def _served_certificate(port: int, ca: Path, client: Issued) -> bytes:
    ctx = client_context(TlsClient(ca_file=str(ca), cert_file=str(client.cert), key_file=str(client.key)))
    with socket.create_connection((HOST, port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def _der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def test_rotated_certificate_serves_new_handshakes_and_keeps_the_running_association(door, ct_files):
    client = door.modality_a
    ae = AE(ae_title="CT_A")
    ae.add_requested_context(CTImageStorage)
    ctx = client_context(TlsClient(ca_file=str(door.pki.ca_file), cert_file=str(client.cert),
                                   key_file=str(client.key)))
    assoc = ae.associate(HOST, door.port, ae_title="PACSFLOW", tls_args=(ctx, "localhost"))
    assert assoc.is_established
    try:
        assert assoc.send_c_store(pydicom.dcmread(ct_files[0])).Status == 0
        old = _der(door.server.cert)
        assert _served_certificate(door.port, door.pki.ca_file, client) == old
        # Rotate as the kubelet does: the new files appear under the same paths in one rename each.
        new = door.pki.server(stem="server-next")
        for src, dst in ((new.key, door.server.key), (new.cert, door.server.cert)):
            os.replace(src, dst)
        assert _served_certificate(door.port, door.pki.ca_file, client) == _der(door.server.cert) != old
        assert door.rx.tls is not None and door.rx.tls.reloads == 1
        # The association opened before the rotation is still up and still stores.
        assert assoc.is_established
        assert assoc.send_c_store(pydicom.dcmread(ct_files[1])).Status == 0
    finally:
        assoc.release()
    assert door.spool.count() == 2


def test_a_tcp_probe_is_not_a_refusal(door):
    """The kubelet's readiness probe connects and closes without a byte: no refusal counted or audited."""
    handshakes = sample("pacsflow_connections_refused_total", listener="dicom", reason="tls-handshake")
    for _ in range(3):
        socket.create_connection((HOST, door.port), timeout=5).close()
    # A plaintext DICOM peer that does send something is refused (the s_client cases above show the rest).
    with socket.create_connection((HOST, door.port), timeout=5) as plain:
        plain.sendall(b"\x01\x00\x00\x00\x00\x10")
        eventually(lambda: door.refusals, "the plaintext peer to be refused", timeout=10)
    assert [r.reason for r in door.refusals] == ["tls-handshake"]
    assert sample("pacsflow_connections_refused_total", listener="dicom", reason="tls-handshake") == handshakes + 1


def test_the_worklist_on_the_same_port_is_behind_the_same_door(tmp_path):
    """pacsflow's worklist C-FIND (and MPPS) share the DICOM port, so TLS and the certificate binding apply to them."""
    spool = Spool(tmp_path / "orders-spool", 0.999)
    store = OrderStore(spool, f"sqlite:///{tmp_path / 'orders.db'}")
    door = Door(tmp_path / "door", services=[worklist_service(store)])
    try:
        def findscu(*tls: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(["findscu", "-W", "-to", "10", "-ta", "10", "-aec", "PACSFLOW", "-aet", "CT_A",
                                   *tls, "-k", "PatientName", HOST, str(door.port)],
                                  capture_output=True, text=True, timeout=60, env=dcmtk_env(), check=False)

        a = door.modality_a
        ok = findscu("+tls", str(a.key), str(a.cert), "+cf", str(door.pki.ca_file))
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert door.refusals == []
        plain = findscu()
        assert plain.returncode != 0
        assert [r.reason for r in door.refusals] == ["tls-handshake"]
    finally:
        door.close()
        spool.close()


def test_unloadable_certificate_files_stop_the_start_and_a_bad_reload_keeps_the_running_ones(door, tmp_path):
    bad = door.config.model_copy(update={"tls": door.config.tls.model_copy(  # type: ignore[union-attr]
        update={"key_file": str(door.modality_a.key)})})  # a key that is not the certificate's
    with pytest.raises(ConfigError, match=r"^tls: cannot load"):
        DicomReceiver(bad, door.spool, port=0)
    running = door.rx.tls
    door.rx.update_config(bad)
    assert door.rx.tls is running and door.rx.config.tls == door.config.tls
    out = s_client(door.port, cert=door.modality_a, ca=door.pki.ca_file)
    assert "Verify return code: 0 (ok)" in out, out  # still serving with the certificate it started with
