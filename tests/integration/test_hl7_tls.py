"""HL7, HTTP and metrics over TLS, and the allow-lists in front of them, against real peers.

- MLLP over TLS and HTTPS ``POST /hl7/orm`` on the order listener: HAPI HL7v2 (the JDK's own TLS) sends with its
  client certificate; curl posts with ``--cacert``/``--cert``; ``openssl s_client`` shows what is refused (TLS 1.1,
  a CBC/SHA-1 suite, no client certificate, a client certificate from another CA); a rotated certificate reaches new
  connections while an open one keeps working.
- ``allowedNetworks``: a peer outside is closed before anything it sent is read (no order stored), and counted.
- Out: the MLLP sender verifies a HAPI TLS receiver's certificate and host name; an HTTPS webhook whose certificate
  does not verify against ``caFile`` is retried by the durable outbox (never sent unverified), and delivered once
  the CA bundle is right.
- The metrics port over HTTPS with a bearer token: curl (401 without or with a wrong token), and Prometheus
  scraping it with ``tls_config`` and ``authorization``.

Certificates are made by the fixture (tests/peers/certs.py), never committed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from pacsflow_router import metrics
from pacsflow_router.admission import ServerTls
from pacsflow_router.config import Hl7Destination, Metrics, TlsClient, TlsServer, Webhook
from pacsflow_router.config import Hl7Listener as Hl7ListenerConfig
from pacsflow_router.errors import ConfigError
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.metricsendpoint import MetricsEndpoint
from pacsflow_router.results.export import Message, Outbox
from pacsflow_router.tls import client_context
from pacsflow_router.workflow import alerts
from pacsflow_router.workflow.listener import Hl7Listener
from pacsflow_router.workflow.mllp import FrameReader, frame, read_frame
from pacsflow_router.workflow.orders import OrderStore
from pacsflow_router.workflow.senders import MllpSender, SendError, WebhookSender
from tests.peers import hapi
from tests.peers.certs import Pki
from tests.peers.hl7msgs import OrderMessage
from tests.peers.net import eventually, free_port, stop_process, wait_port
from tests.peers.webhook import HttpReceiver
from tests.unit.pacsflow_router.test_alerts import RESULT

for _tool in ("openssl", "curl", "prometheus"):
    if shutil.which(_tool) is None:
        raise RuntimeError(f"{_tool} not found: apt-get install {_tool} (scripts/install-system-deps.sh)")


def _refused(listener: str, reason: str) -> float:
    value = metrics.REGISTRY.get_sample_value("pacsflow_connections_refused_total",
                                              {"listener": listener, "reason": reason})
    return 0.0 if value is None else value


def _order() -> OrderMessage:
    tag = uuid.uuid4().hex[:10].upper()
    return OrderMessage(control_id=f"C{tag}", accession=f"A{tag}", patient_id=f"P{tag}")


def _msa1(ack: bytes) -> str:
    for seg in ack.decode("latin-1").split("\r"):
        if seg.startswith("MSA|"):
            return seg.split("|")[1]
    raise AssertionError(f"no MSA in {ack!r}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("pki")
    ca, rogue = Pki(root / "ca"), Pki(root / "rogue", name="Rogue CA")
    return SimpleNamespace(root=root, ca=ca, server=ca.server(), ris=ca.client("RIS"), rogue=rogue,
                           rogue_ris=rogue.client("RIS"))


@pytest.fixture(scope="module")
def listener(pki: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The order listener with MLLP and HTTPS on TLS, client certificates required, loopback allowed."""
    tmp = tmp_path_factory.mktemp("hl7tls")
    cert, key = tmp / "tls.crt", tmp / "tls.key"  # its own copies: the rotation test replaces them
    shutil.copy(pki.server.cert, cert)
    shutil.copy(pki.server.key, key)
    config = Hl7ListenerConfig(
        port=free_port(), http_port=free_port(), message_timeout_seconds=5,
        tls=TlsServer(cert_file=str(cert), key_file=str(key), client_ca_file=str(pki.ca.ca_file),
                      client_certificate="required"),
        allowed_networks=["127.0.0.0/8"])
    store = OrderStore(Spool(tmp / "spool", 0.999), f"sqlite:///{tmp / 'store.db'}")
    hl7 = Hl7Listener(config, store)
    hl7.start()
    try:
        yield SimpleNamespace(port=config.port, http_port=config.http_port, store=store, cert=cert, key=key,
                              hl7=hl7)
    finally:
        hl7.stop()


def _tls_connect(port: int, pki: SimpleNamespace) -> ssl.SSLSocket:
    ctx = client_context(TlsClient(ca_file=str(pki.ca.ca_file), cert_file=str(pki.ris.cert),
                                   key_file=str(pki.ris.key)))
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")


def _exchange(sock: socket.socket, message: bytes) -> bytes:
    sock.sendall(frame(message))
    return read_frame(sock, FrameReader(1 << 20), 10).message


# -- in: MLLP and HTTPS on the order listener ---------------------------------------------------------------------

def test_hapi_sends_orders_over_mllp_tls_with_its_client_certificate(pki, listener):
    order = _order()
    tls = hapi.JavaTls(keystore=pki.ris.pkcs12(), truststore=pki.ca.truststore())
    (result,) = hapi.send(listener.port, [order.encoded("omi251")], tls=tls)
    assert result["ack"] == "AA", result
    assert listener.store.get(order.accession, order.patient_id) is not None

    # The same bytes in plaintext on the TLS port: no ACK, the connection is closed, nothing is stored.
    before = _refused("mllp", "tls-handshake")
    plain = _order()
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(frame(plain.encoded("omi251")))
        sock.settimeout(10)
        answer = b""
        try:
            answer = sock.recv(1 << 16)  # at most a TLS alert, then the end of the connection
        except ConnectionResetError:
            pass
        assert b"MSA" not in answer
    eventually(lambda: _refused("mllp", "tls-handshake") == before + 1, "the plaintext connection counted")
    assert listener.store.get(plain.accession, plain.patient_id) is None


def test_curl_posts_an_order_over_https(pki, listener, tmp_path):
    body = tmp_path / "order.hl7"
    order = _order()
    body.write_bytes(order.encoded("orm23"))
    url = f"https://localhost:{listener.http_port}/hl7/orm"
    common = ["curl", "-sS", "--max-time", "20", "-H", "Content-Type: x-application/hl7-v2+er7",
              "--data-binary", f"@{body}", url]
    good = subprocess.run([*common, "--cacert", str(pki.ca.ca_file), "--cert", str(pki.ris.cert),
                           "--key", str(pki.ris.key), "-w", "\n%{http_code}"], capture_output=True, text=True,
                          check=False)
    payload, status = good.stdout.rsplit("\n", 1)
    assert (good.returncode, status) == (0, "200"), good.stderr
    assert json.loads(payload)["ack"] == "AA"
    assert listener.store.get(order.accession, order.patient_id) is not None

    other = _order()
    body.write_bytes(other.encoded("orm23"))
    before = _refused("hl7-http", "tls-handshake")
    no_cert = subprocess.run([*common, "--cacert", str(pki.ca.ca_file)], capture_output=True, text=True, check=False)
    assert no_cert.returncode != 0, no_cert.stdout  # (how curl words it depends on when the alert arrives)
    eventually(lambda: _refused("hl7-http", "tls-handshake") == before + 1, "the refused handshake counted")
    wrong_ca = subprocess.run([*common, "--cacert", str(pki.rogue.ca_file), "--cert", str(pki.ris.cert),
                               "--key", str(pki.ris.key)], capture_output=True, text=True, check=False)
    assert wrong_ca.returncode == 60, wrong_ca.stderr  # curl: the router's certificate does not verify
    assert listener.store.get(other.accession, other.patient_id) is None


def _s_client(port: int, ca: Path, *args: str, refused: bool = False) -> tuple[int, str]:
    """``openssl s_client`` sending one MLLP frame; (exit status, output).

    With ``refused``, its input stays open, so that it is still reading when a TLS 1.3 server refuses the client's
    certificate (after the client's side of the handshake finished); it must then exit on the server's alert.
    """
    cmd = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca), "-verify_return_error",
           "-brief", *args]
    if not refused:
        proc = subprocess.run(cmd, input=frame(b"MSH|^~\\&|"), capture_output=True, timeout=30, check=False)
        return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")
    with subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as run:
        assert run.stdin is not None and run.stdout is not None
        try:
            run.stdin.write(frame(b"MSH|^~\\&|"))
            run.stdin.flush()
        except BrokenPipeError:
            pass  # it already exited: the refusal came first
        try:
            rc = run.wait(20)
        except subprocess.TimeoutExpired:
            run.kill()
            rc = run.wait()
            return 0, "still connected after 20 s: not refused\n" + run.stdout.read().decode(errors="replace")
        return rc, run.stdout.read().decode(errors="replace")


def test_openssl_s_client_shows_what_the_mllp_port_refuses(pki, listener):
    ca = pki.ca.ca_file
    ris = ["-cert", str(pki.ris.cert), "-key", str(pki.ris.key)]
    rc, out = _s_client(listener.port, ca, *ris)
    assert rc == 0 and "Protocol version: TLSv1.3" in out, out  # 1.3 preferred
    rc, out = _s_client(listener.port, ca, "-tls1_2", *ris)
    assert rc == 0 and "Protocol version: TLSv1.2" in out and "ECDHE-ECDSA-AES256-GCM-SHA384" in out, out

    before = _refused("mllp", "tls-handshake")
    refusals = {
        # SECLEVEL=0 so that the client offers 1.1 at all: the refusal below is the router's.
        "TLS 1.1": (["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", *ris], "alert protocol version"),
        "CBC with SHA-1": (["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA", *ris], "alert handshake failure"),
        "no client certificate": ([], "alert certificate required"),
        "client certificate of another CA": (["-cert", str(pki.rogue_ris.cert), "-key", str(pki.rogue_ris.key)],
                                             "alert unknown ca"),
    }
    for what, (args, alert) in refusals.items():
        rc, out = _s_client(listener.port, ca, *args, refused=True)
        assert rc != 0 and alert in out, f"{what}: {out}"
    eventually(lambda: _refused("mllp", "tls-handshake") == before + len(refusals), "each refusal counted")

    # And the client's side: a router certificate checked against another CA does not verify.
    rc, out = _s_client(listener.port, pki.rogue.ca_file, *ris)
    assert rc != 0 and "verify" in out.lower(), out


def test_a_rotated_certificate_reaches_new_connections_and_open_ones_keep_working(pki, listener):
    def serial(sock: ssl.SSLSocket) -> bytes:
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        return der

    with _tls_connect(listener.port, pki) as kept:
        old = serial(kept)
        assert _msa1(_exchange(kept, _order().encoded("omi251"))) == "AA"
        fresh = pki.ca.server(stem="rotated")
        # As the kubelet updates a Secret: new files, swapped in atomically.
        for src, dst in ((fresh.key, listener.key), (fresh.cert, listener.cert)):
            shutil.copy(src, f"{dst}.new")
            os.replace(f"{dst}.new", dst)
        with _tls_connect(listener.port, pki) as new:
            assert serial(new) != old and serial(new) == ssl.PEM_cert_to_DER_cert(fresh.cert.read_text())
            assert _msa1(_exchange(new, _order().encoded("omi251"))) == "AA"
        assert _msa1(_exchange(kept, _order().encoded("omi251"))) == "AA", "the open connection is not dropped"


def test_allow_list_closes_other_peers_before_reading_them(tmp_path):
    config = Hl7ListenerConfig(port=free_port(), http_port=free_port(), allowed_networks=["10.0.0.0/8"])
    store = OrderStore(Spool(tmp_path / "spool", 0.999), f"sqlite:///{tmp_path / 'store.db'}")
    hl7 = Hl7Listener(config, store)
    hl7.start()
    try:
        before = {name: _refused(name, "not-allowed") for name in ("mllp", "hl7-http")}
        order = _order()
        with socket.create_connection(("127.0.0.1", config.port), timeout=10) as sock:
            sock.sendall(frame(order.encoded("omi251")))
            sock.settimeout(10)
            try:
                assert sock.recv(1 << 16) == b"", "no ACK to a peer outside allowedNetworks"
            except ConnectionResetError:
                pass  # closed with our bytes unread: the kernel answers RST
        request = urllib.request.Request(f"http://127.0.0.1:{config.http_port}/hl7/orm", data=order.encoded("orm23"),
                                         headers={"Content-Type": "x-application/hl7-v2+er7"})
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(request, timeout=10)
        assert store.count() == 0
        for name in ("mllp", "hl7-http"):
            eventually(lambda n=name: _refused(n, "not-allowed") == before[n] + 1, f"{name} refusal counted")
    finally:
        hl7.stop()


def test_tls_files_that_cannot_be_loaded_are_a_config_error_naming_the_setting(pki, tmp_path):
    with pytest.raises(ConfigError, match=r"hl7Listener\.tls"):
        ServerTls(TlsServer(cert_file=str(pki.server.cert), key_file=str(pki.ris.key)), "hl7Listener.tls")
    with pytest.raises(ConfigError, match=r"metrics\.tls"):
        ServerTls(TlsServer(cert_file=str(tmp_path / "missing.crt"), key_file=str(pki.server.key)), "metrics.tls")


# -- out: MLLP to a TLS receiver, HTTPS webhooks ------------------------------------------------------------------

def test_mllp_sender_verifies_the_hapi_tls_receiver(pki, tmp_path):
    _msh10, body = alerts.hl7_message("alert", RESULT,
                                      Hl7Destination(name="ris", host="127.0.0.1", port=1, version="2.5.1"),
                                      at=dt.datetime.now(dt.UTC))
    message = Message(_msh10, body, "alert")
    tls = hapi.JavaTls(keystore=pki.server.pkcs12(tmp_path / "server.p12"))
    with hapi.HapiReceiver(tmp_path / "rx.jsonl", tls=tls) as rx:
        def sender(**tls_opts: str) -> MllpSender:
            return MllpSender(Hl7Destination(name="ris", host="127.0.0.1", port=rx.port, version="2.5.1",
                                             timeout_seconds=10, tls=TlsClient(**tls_opts)))

        for opts, why in (({"ca_file": str(pki.rogue.ca_file)}, "certificate not verified"),
                          ({"ca_file": str(pki.ca.ca_file), "server_name": "ris.hospital.example"},
                           "certificate not verified")):
            with pytest.raises(SendError, match=why) as refused:
                sender(**opts).send(message)
            assert not refused.value.permanent, "a certificate problem is retried, not parked"
        assert rx.records() == []
        good = sender(ca_file=str(pki.ca.ca_file))
        assert good.send(message) == 0
        (record,) = rx.wait_records(1)
        assert (record["controlId"], record["ack"]) == (_msh10, "AA")
        good.close()


def test_https_webhook_that_does_not_verify_is_retried_until_the_ca_bundle_is_right(pki, tmp_path):
    receiver = HttpReceiver(tls=(pki.server.cert, pki.server.key))
    try:
        ca_bundle = tmp_path / "ca.crt"
        shutil.copy(pki.rogue.ca_file, ca_bundle)
        hook = Webhook(name="sectra", url=receiver.url, ca_file=str(ca_bundle), timeout_seconds=5)
        assert hook.url.startswith("https://")
        results: list[tuple[object, str]] = []
        outbox = Outbox(tmp_path / "outbox", lambda name: None,  # type: ignore[arg-type,return-value]
                        message_senders=lambda channel, name: WebhookSender(hook),
                        on_result=lambda item, outcome: results.append((item, outcome)),
                        base_delay=0.05, max_delay=0.2, poll_interval=0.05)
        body = alerts.webhook_body(RESULT)
        assert outbox.enqueue_message("webhook", "sectra", "key-1", body, kind="webhook", study_key="k",
                                      use_case="ich")
        labels = {"channel": "webhook", "destination": "sectra", "outcome": "retrying"}

        def retried() -> float:
            return metrics.REGISTRY.get_sample_value("pacsflow_outbound_messages_total", labels) or 0.0

        before = retried()
        outbox.start()
        try:
            eventually(lambda: retried() >= before + 2, "two failed attempts")
            assert receiver.requests == [], "nothing is posted to a server whose certificate does not verify"
            ((first, outcome),) = results
            assert outcome == "retrying" and "certificate not verified" in (first.last_error or "")  # type: ignore[attr-defined]
            shutil.copy(pki.ca.ca_file, ca_bundle)  # the right CA bundle mounted: the next attempt goes through
            eventually(lambda: outbox.pending() == 0, "delivery once the CA bundle verifies the receiver")
        finally:
            outbox.close()
        assert [json.loads(b) for _h, b, _s in receiver.delivered()] == [json.loads(body)]
    finally:
        receiver.stop()


# -- the metrics port ----------------------------------------------------------------------------------------------

def _curl(url: str, *args: str) -> tuple[int, str, str]:
    proc = subprocess.run(["curl", "-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", *args, url],
                          capture_output=True, text=True, check=False)
    body, _, status = proc.stdout.rpartition("\n")
    return proc.returncode, status, body + proc.stderr


def test_metrics_over_https_with_a_bearer_token_scraped_by_prometheus(pki, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-scrape-token\n")
    endpoint = MetricsEndpoint(Metrics(
        port=free_port(), tls=TlsServer(cert_file=str(pki.server.cert), key_file=str(pki.server.key)),
        bearer_token_file=str(token), allowed_networks=["127.0.0.1/32"])).start()
    url = f"https://localhost:{endpoint.port}/metrics"
    ca = ["--cacert", str(pki.ca.ca_file)]
    try:
        unauthorized = _refused("metrics", "unauthorized")
        assert _curl(url, *ca)[:2] == (0, "401")
        assert _curl(url, *ca, "-H", "Authorization: Bearer wrong")[:2] == (0, "401")
        assert _refused("metrics", "unauthorized") == unauthorized + 2
        rc, status, body = _curl(url, *ca, "-H", "Authorization: Bearer s3cret-scrape-token")
        assert (rc, status) == (0, "200") and "pacsflow_connections_refused_total" in body
        rc, status, body = _curl(url.replace("/metrics", "/healthz"), *ca)  # a liveness probe needs no token
        assert (rc, status, body.strip()) == (0, "200", "ok") and "pacsflow_" not in body
        handshakes = _refused("metrics", "tls-handshake")
        assert _curl(f"http://localhost:{endpoint.port}/metrics")[1] != "200"  # plaintext on the HTTPS port
        eventually(lambda: _refused("metrics", "tls-handshake") == handshakes + 1, "plaintext counted")

        # Prometheus: one job with the CA and the token (up), one without the token (down, 401).
        config = tmp_path / "prometheus.yml"
        target = f"localhost:{endpoint.port}"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {"job_name": "pacsflow", "scheme": "https", "static_configs": [{"targets": [target]}],
                 "tls_config": {"ca_file": str(pki.ca.ca_file)},
                 "authorization": {"type": "Bearer", "credentials_file": str(token)}},
                {"job_name": "no-token", "scheme": "https", "static_configs": [{"targets": [target]}],
                 "tls_config": {"ca_file": str(pki.ca.ca_file)}},
            ]}))
        port = free_port()
        with open(tmp_path / "prometheus.log", "w") as log:
            prom = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                     f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(port, 60, prom)

            def targets() -> dict[str, dict] | None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as resp:
                        active = json.load(resp)["data"]["activeTargets"]
                except urllib.error.HTTPError as exc:  # 503 until Prometheus is ready
                    if exc.code != 503:
                        raise
                    return None
                got = {t["labels"]["job"]: t for t in active if t["health"] != "unknown"}
                return got if len(got) == 2 else None

            got = eventually(targets, "Prometheus scraped both jobs", timeout=60,
                             context=lambda: (tmp_path / "prometheus.log").read_text()[-2000:])
            assert got["pacsflow"]["health"] == "up", got["pacsflow"]
            assert got["no-token"]["health"] == "down" and "401" in got["no-token"]["lastError"], got["no-token"]
        finally:
            stop_process(prom)
    finally:
        endpoint.stop()


def test_metrics_allow_list_refuses_other_peers(tmp_path):
    endpoint = MetricsEndpoint(Metrics(port=free_port(), allowed_networks=["10.0.0.0/8", "::1/128"])).start()
    try:
        before = _refused("metrics", "not-allowed")
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=10)
        eventually(lambda: _refused("metrics", "not-allowed") == before + 1, "refusal counted")
    finally:
        endpoint.stop()


def test_a_tcp_probe_is_not_counted_as_a_refused_handshake(listener):
    before = _refused("mllp", "tls-handshake")
    socket.create_connection(("127.0.0.1", listener.port), timeout=10).close()  # what a tcpSocket probe does
    # A refusal counted after the probe would be counted before this plaintext one: wait for this one, then compare.
    with socket.create_connection(("127.0.0.1", listener.port), timeout=10) as sock:
        sock.sendall(b"not TLS")
        eventually(lambda: _refused("mllp", "tls-handshake") >= before + 1, "the plaintext connection counted")
    assert _refused("mllp", "tls-handshake") == before + 1, "the probe was counted"


def test_mllp_sender_presents_its_client_certificate_where_one_is_required(pki, listener):
    """The sender's certFile/keyFile, against the router's own listener (client certificates required)."""
    def send(**tls_opts: str) -> int:
        order = _order()
        sender = MllpSender(Hl7Destination(name="peer-router", host="localhost", port=listener.port,
                                           timeout_seconds=10, tls=TlsClient(ca_file=str(pki.ca.ca_file), **tls_opts)))
        try:
            return sender.send(Message(order.control_id, order.encoded("omi251"), "order"))
        finally:
            sender.close()

    assert send(cert_file=str(pki.ris.cert), key_file=str(pki.ris.key)) == 0
    with pytest.raises(SendError) as refused:  # TLS 1.3: the refusal arrives as the ACK is awaited
        send()
    assert not refused.value.permanent


def test_the_router_service_wires_tls_and_tokens_from_the_routing_config(pki, tmp_path):
    from pacsflow_router.config import parse_config
    from pacsflow_router.service import RouterService

    token = tmp_path / "token"
    token.write_text("scrape-me\n")
    server_tls = {"certFile": str(pki.server.cert), "keyFile": str(pki.server.key)}
    config = parse_config({
        "spoolDir": str(tmp_path / "spool"), "audit": {"url": f"sqlite:///{tmp_path / 'audit.db'}"},
        "port": free_port(),
        "metrics": {"port": free_port(), "tls": server_tls, "bearerTokenFile": str(token),
                    "allowedNetworks": ["127.0.0.0/8"]},
        "hl7Listener": {"port": free_port(), "tls": {**server_tls, "clientCaFile": str(pki.ca.ca_file),
                                                      "clientCertificate": "required"}},
    })
    service = RouterService(config)
    service.start()
    try:
        order = _order()
        with _tls_connect(config.hl7_listener.port, pki) as sock:  # type: ignore[union-attr]
            assert _msa1(_exchange(sock, order.encoded("omi251"))) == "AA"
        assert service.orders.get(order.accession, order.patient_id) is not None
        url = f"https://localhost:{config.metrics.port}/metrics"
        ca = ["--cacert", str(pki.ca.ca_file)]
        assert _curl(url, *ca)[:2] == (0, "401")
        assert _curl(url, *ca, "-H", "Authorization: Bearer scrape-me")[:2] == (0, "200")
    finally:
        service.stop()
