"""Every edge of one router PROCESS on TLS, with real peers: DICOM in and out, MLLP, metrics, the results port.

One ``pacsflow-router`` subprocess configured as a hospital would run it:

- DICOM in: mutual TLS, client certificate required, ``aeTitlesByCertificate`` binds the CT's certificate to its
  AE title. dcmtk ``storescu +tls`` sends a phantom head CT with that certificate.
- DICOM out: the SR goes over mutual TLS to an Orthanc with ``DicomTlsEnabled`` that requires a client certificate;
  it is fetched back from Orthanc and passes ``dciodvfy`` and ``dsrdump``.
- Metrics: HTTPS with a bearer token, scraped with curl (``/healthz`` open, ``/metrics`` 401 without the token).
- HL7: one order over MLLP/TLS with the RIS's client certificate gets AA.
- The de-identification results port (``externalAi``) sits behind the same TLS door as the DICOM port: dcmtk
  ``echoscu +tls`` with the vendor's certificate is answered, plaintext is not.
- Refusals (a certificate used with another AE title, plaintext MLLP, a scrape without the token) are chained in the
  router's tamper-evident audit, and the chain verifies.

Certificates are made by the test (tests/peers/certs.py), never committed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import create_engine, text

from pacsflow_router.config import TlsClient
from pacsflow_router.results import chain
from pacsflow_router.tls import client_context
from pacsflow_router.workflow.mllp import FrameReader, frame, read_frame
from tests.e2e.conftest import wait_for
from tests.peers import orthanc as orthanc_peer
from tests.peers.certs import Issued, Pki
from tests.peers.dcmtk import dcmtk_env, storescu
from tests.peers.hl7msgs import OrderMessage
from tests.peers.net import free_port
from tests.peers.orthanc import Orthanc
from tests.peers.router import use_case
from tests.peers.srcheck import check_sr, tools_available

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

for _tool in ("storescu", "echoscu", "curl"):
    if shutil.which(_tool) is None:
        raise RuntimeError(f"{_tool} not found: install dcmtk and curl (scripts/install-system-deps.sh)")
if not orthanc_peer.available() or not tools_available():
    raise RuntimeError("Orthanc, dciodvfy and dsrdump are needed: scripts/install-system-deps.sh")

HOST = "127.0.0.1"
TIMEOUT = 180
TOKEN = "e2e-scrape-token-4c1d"  # noqa: S105 - made up for the test
CT_CERT, CT_AE = "ct-ed-1.radiology.test", "CT_ED_1"
VENDOR_CERT, VENDOR_AE = "vendor-ai.test", "VENDOR_AI"


def _curl(url: str, ca: Path, *headers: str) -> tuple[str, str]:
    args = ["curl", "-s", "--max-time", "10", "--cacert", str(ca), "-w", "\n%{http_code}", url]
    for header in headers:
        args += ["-H", header]
    out = subprocess.run(args, capture_output=True, text=True, timeout=20).stdout
    body, _, status = out.rpartition("\n")
    return status, body


def _echoscu_tls(port: int, calling: str, client: Issued | None, ca: Path) -> subprocess.CompletedProcess[str]:
    tls = ["+tls", str(client.key), str(client.cert), "+cf", str(ca)] if client else []
    return subprocess.run(["echoscu", "-to", "10", "-ta", "10", "-aec", "PACSFLOW_RESULTS", "-aet", calling, *tls,
                           HOST, str(port)], capture_output=True, text=True, timeout=30, env=dcmtk_env())


def _mllp_tls(port: int, message: bytes, ca: Path, client: Issued) -> bytes:
    ctx = client_context(TlsClient(ca_file=str(ca), cert_file=str(client.cert), key_file=str(client.key)))
    with ctx.wrap_socket(socket.create_connection((HOST, port), timeout=10), server_hostname="localhost") as sock:
        sock.sendall(frame(message))
        return read_frame(sock, FrameReader(1 << 20), 30).message


def test_dicom_hl7_and_metrics_all_over_tls_with_one_router_process(make_router, studies, tmp_path):
    pki = Pki(tmp_path / "pki")
    router_server, orthanc_server = pki.server("router"), pki.server("orthanc")
    router_client, ct, ris, vendor = (pki.client("pacsflow"), pki.client(CT_CERT), pki.client("ris"),
                                      pki.client(VENDOR_CERT))
    pacs = Orthanc(tmp_path / "orthanc", aet="ORTHANC", modalities={"pacsflow": ("PACSFLOW", HOST, 104)}, config={
        "DicomScpTimeout": 5, "DicomTlsEnabled": True, "DicomTlsCertificate": str(orthanc_server.cert),
        "DicomTlsPrivateKey": str(orthanc_server.key), "DicomTlsTrustedCertificates": str(pki.ca_file),
        "DicomTlsRemoteCertificateRequired": True}).start()
    try:
        token = tmp_path / "metrics-token"
        token.write_text(TOKEN + "\n")
        key_file = tmp_path / "deid.key"
        key_file.write_bytes(os.urandom(48))
        server_tls = {"certFile": str(router_server.cert), "keyFile": str(router_server.key)}
        mutual = {**server_tls, "clientCaFile": str(pki.ca_file), "clientCertificate": "required"}
        router = make_router([use_case("ich-assist", "assistive")], pacs_port=pacs.dicom_port,
                             hl7Listener={"port": free_port(), "messageTimeoutSeconds": 5, "tls": mutual},
                             externalAi={"keyFile": str(key_file), "resultsPort": free_port(),
                                         "allowedCallingAETitles": [VENDOR_AE]})
        cfg = router.config
        cfg["tls"] = {**mutual, "aeTitlesByCertificate": {CT_CERT: [CT_AE], VENDOR_CERT: [VENDOR_AE]}}
        cfg["destinations"][0]["tls"] = {"caFile": str(pki.ca_file), "certFile": str(router_client.cert),
                                         "keyFile": str(router_client.key)}
        cfg["metrics"] = {"port": cfg["metrics"]["port"], "tls": server_tls, "bearerTokenFile": str(token)}
        router.write_config(cfg)
        router.start()

        # DICOM in over mutual TLS, with the CT's certificate and AE title.
        paths, truth = studies(41, lesion=True)
        tls = ["+tls", str(ct.key), str(ct.cert), "+cf", str(pki.ca_file)]
        sent = storescu(router.port, paths, calling=CT_AE, extra=tls, timeout=120)
        assert len(sent.acknowledged) == len(paths), sent.output[-2000:]
        # The same certificate calling as another AE title is rejected: nothing stored.
        other = storescu(router.port, paths[:1], calling="CT_ED_2", extra=tls, timeout=60)
        assert other.acknowledged == [] and "Association Rejected" in other.output, other.output[-2000:]

        # DICOM out: the SR, over mutual TLS into Orthanc, valid.
        srs = wait_for(lambda: pacs.instances(modality="SR", study_uid=truth.study_instance_uid), TIMEOUT,
                       "the SR in Orthanc over DICOM TLS", router)
        assert len(srs) == 1
        sr_path = tmp_path / "sr.dcm"
        sr_path.write_bytes(pacs.instance_file(srs[0]))
        sr = pydicom.dcmread(sr_path)
        assert sr.StudyInstanceUID == truth.study_instance_uid and sr.Modality == "SR"
        check = check_sr(sr_path)
        assert check.errors == [], check.errors

        # Metrics over HTTPS: /healthz open, /metrics only with the bearer token.
        base = f"https://localhost:{cfg['metrics']['port']}"
        assert _curl(f"{base}/healthz", pki.ca_file)[0] == "200"
        assert _curl(f"{base}/metrics", pki.ca_file)[0] == "401"
        status, body = _curl(f"{base}/metrics", pki.ca_file, f"Authorization: Bearer {TOKEN}")
        assert status == "200" and "pacsflow_instances_received_total" in body
        received = next(line for line in body.splitlines() if line.startswith("pacsflow_instances_received_total"))
        assert float(received.split()[-1]) == len(paths)

        # HL7: one order over MLLP/TLS with the RIS's certificate is stored (AA); plaintext gets nothing.
        order = OrderMessage(control_id="CTLS0001", accession="ATLS0001", patient_id="PTLS0001")
        ack = _mllp_tls(cfg["hl7Listener"]["port"], order.encoded("orm23"), pki.ca_file, ris)
        assert b"MSA|AA|CTLS0001" in ack, ack
        with socket.create_connection((HOST, cfg["hl7Listener"]["port"]), timeout=10) as plain:
            plain.sendall(frame(order.replace(control_id="CTLS0002").encoded("orm23")))
            try:
                assert b"MSA" not in plain.recv(4096)
            except ConnectionResetError:
                pass  # closed with the frame unread
        engine = create_engine(cfg["audit"]["url"])
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM orders")).scalar() == 1

        # The results port for external AIs: the same TLS door and certificate binding as the DICOM port.
        results_port = cfg["externalAi"]["resultsPort"]
        echo = _echoscu_tls(results_port, VENDOR_AE, vendor, pki.ca_file)
        assert echo.returncode == 0, echo.stdout + echo.stderr
        assert _echoscu_tls(results_port, VENDOR_AE, None, pki.ca_file).returncode != 0
        assert _echoscu_tls(results_port, VENDOR_AE, ct, pki.ca_file).returncode != 0, \
            "the CT's certificate is not bound to the vendor's AE title"

        # Every refusal above is in the tamper-evident audit, and the chain verifies.
        def refusals() -> list[tuple[str, str]]:
            return [(r["subject"], json.loads(r["detail"])["reason"]) for r in chain.records(engine)
                    if r["kind"] == "association-refused"]

        wanted = [("dicom", "certificate-ae-title"), ("metrics", "unauthorized"), ("mllp", "tls-handshake"),
                  ("dicom", "tls-handshake"), ("dicom", "certificate-ae-title")]
        wait_for(lambda: len(refusals()) >= len(wanted), 20, f"{len(wanted)} refusal records", router)
        assert sorted(refusals()) == sorted(wanted)  # each is written on its own connection's thread
        assert chain.verify(engine)[1] == []
        # No patient data or token in the records or the log.
        dumped = json.dumps(chain.records(engine), default=str) + router.log()
        header = pydicom.dcmread(paths[0], stop_before_pixels=True)
        for value in (truth.study_instance_uid, str(header.PatientID), str(header.PatientName), order.patient_id,
                      order.accession, TOKEN):
            assert value and value not in dumped
        engine.dispose()
    finally:
        pacs.stop()
