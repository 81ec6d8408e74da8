"""Refused HL7 (MLLP, ``POST /hl7/orm``) and metrics connections are chained into the tamper-evident audit.

The DICOM port's refusals were already there (test_dicom_tls); here the order listener and the metrics endpoint get
``AuditLog.record_refusal`` as their ``on_refused`` (what ``RouterService`` wires) and real clients are refused:
plaintext MLLP carrying an order on the TLS port, ``openssl s_client`` without the required client certificate,
plain HTTP on the HTTPS order endpoint, curl scraping without and with a wrong bearer token, and a peer outside the
metrics allow-list. Each must leave one ``association-refused`` record naming the listener, the address and the
reason, the chain must verify, and no record may hold the order's patient data or the token.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pacsflow_router.config import Hl7Listener as Hl7ListenerConfig
from pacsflow_router.config import Metrics, TlsServer
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.metricsendpoint import MetricsEndpoint
from pacsflow_router.results import chain
from pacsflow_router.results.audit import AuditLog
from pacsflow_router.workflow.listener import Hl7Listener
from pacsflow_router.workflow.mllp import frame
from pacsflow_router.workflow.orders import OrderStore
from tests.peers.certs import Pki
from tests.peers.hl7msgs import OrderMessage
from tests.peers.net import eventually, free_port

for _tool in ("openssl", "curl"):
    if shutil.which(_tool) is None:
        raise RuntimeError(f"{_tool} not found: apt-get install {_tool} (scripts/install-system-deps.sh)")

TOKEN = "scrape-token-7f3a9c"  # noqa: S105 - a test token, made up here


@pytest.fixture()
def edge(tmp_path: Path) -> Iterator[SimpleNamespace]:
    """An order listener (MLLP + HTTPS, client certificate required), two metrics endpoints, one audit log."""
    pki = Pki(tmp_path / "pki")
    server = pki.server()
    tls = TlsServer(cert_file=str(server.cert), key_file=str(server.key), client_ca_file=str(pki.ca_file),
                    client_certificate="required")
    audit = AuditLog(f"sqlite:///{tmp_path / 'store.db'}")
    orders = OrderStore(Spool(tmp_path / "spool", 0.999), audit.engine)
    hl7 = Hl7Listener(Hl7ListenerConfig(port=free_port(), http_port=free_port(), message_timeout_seconds=5, tls=tls),
                      orders, on_refused=audit.record_refusal)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    scrape = MetricsEndpoint(Metrics(host="127.0.0.1", port=free_port(), bearer_token_file=str(token)),
                             on_refused=audit.record_refusal)
    fenced = MetricsEndpoint(Metrics(host="127.0.0.1", port=free_port(), allowed_networks=["192.0.2.0/24"]),
                             on_refused=audit.record_refusal)
    hl7.start()
    scrape.start()
    fenced.start()
    try:
        yield SimpleNamespace(hl7=hl7, scrape=scrape, fenced=fenced, audit=audit, pki=pki, orders=orders)
    finally:
        hl7.stop()
        scrape.stop()
        fenced.stop()


def _refusals(audit: AuditLog) -> list[tuple[str, str, str]]:
    return [(r["subject"], r["actor"], json.loads(r["detail"])["reason"])
            for r in chain.records(audit.engine) if r["kind"] == "association-refused"]


def _curl(*args: str) -> str:
    return subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", *args],
                          capture_output=True, text=True, timeout=20).stdout


def test_refused_hl7_and_metrics_connections_are_chained_without_phi(edge: SimpleNamespace) -> None:
    order = OrderMessage(control_id="CREFUSE1", accession="AREFUSE1", patient_id="PREFUSE1")
    # Plaintext MLLP with an order on the TLS port: the handshake fails on it, nothing is parsed or stored.
    with socket.create_connection(("127.0.0.1", edge.hl7.port), timeout=10) as sock:
        sock.sendall(frame(order.encoded("orm23")))
        answer = b""
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass  # closed with unread data: a reset is as good as a close
    assert b"MSA" not in answer
    # TLS without the required client certificate. -ign_eof: keep reading after the handshake, so the TLS 1.3 client
    # sees the alert the server sends then (without it, s_client may exit on stdin's EOF first).
    s_client = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{edge.hl7.port}", "-CAfile",
                               str(edge.pki.ca_file), "-tls1_3", "-ign_eof"], input="", capture_output=True, text=True,
                              timeout=20)
    assert "certificate required" in s_client.stdout + s_client.stderr
    # Plain HTTP on the HTTPS order endpoint.
    assert _curl("-X", "POST", "--data-binary", "x", f"http://127.0.0.1:{edge.hl7.http_port}/hl7/orm") == "000"
    # Scrapes without and with a wrong token: 401; the right one: 200 and no record.
    url = f"http://127.0.0.1:{edge.scrape.port}/metrics"
    assert _curl(url) == "401"
    assert _curl("-H", "Authorization: Bearer not-the-token", url) == "401"
    assert _curl("-H", f"Authorization: Bearer {TOKEN}", url) == "200"
    # A peer outside the metrics allow-list: closed unread.
    assert _curl(f"http://127.0.0.1:{edge.fenced.port}/metrics") == "000"

    expected = [("mllp", "127.0.0.1", "tls-handshake"), ("mllp", "127.0.0.1", "tls-handshake"),
                ("hl7-http", "127.0.0.1", "tls-handshake"), ("metrics", "127.0.0.1", "unauthorized"),
                ("metrics", "127.0.0.1", "unauthorized"), ("metrics", "127.0.0.1", "not-allowed")]
    eventually(lambda: len(_refusals(edge.audit)) >= len(expected), "six refusal records", timeout=10,
               context=lambda: str(_refusals(edge.audit)))
    # Each is written on its own connection's thread, after the socket is closed: compare without the order.
    assert sorted(_refusals(edge.audit)) == sorted(expected)
    records = chain.records(edge.audit.engine)
    details = {json.loads(r["detail"])["detail"] for r in records if r["kind"] == "association-refused"}
    assert any("PEER_DID_NOT_RETURN_A_CERTIFICATE" in d for d in details), details
    assert {"no bearer token", "wrong bearer token"} <= details
    assert chain.verify(edge.audit.engine)[1] == []
    # No patient data, no token: neither in the records nor in the order store.
    dumped = json.dumps(records, default=str)
    for secret in (order.patient_id, order.accession, order.control_id, TOKEN, "not-the-token"):
        assert secret not in dumped
    assert edge.orders.get(order.accession, order.patient_id) is None
