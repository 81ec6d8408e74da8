"""HL7 and webhook messages through the durable outbox to real local receivers: counted where they arrive.

The receivers are tiny servers in this process (an MLLP socket server, ``http.server``): what a test counts is what
crossed the wire. The Java HAPI receiver (tests/peers/hapi) validates the messages' structure in its own tests.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pacsflow_router import metrics
from pacsflow_router.config import Hl7Destination, Webhook
from pacsflow_router.results.export import MessageSender, Outbox, OutboxItem
from pacsflow_router.workflow import alerts
from pacsflow_router.workflow.mllp import FrameReader, frame
from pacsflow_router.workflow.senders import MllpSender, WebhookSender
from tests.peers.net import eventually, free_port
from tests.peers.webhook import HttpReceiver
from tests.unit.pacsflow_router.test_alerts import RESULT

REPO = Path(__file__).resolve().parents[2]


# -- receivers ------------------------------------------------------------------------------------------------------
class MllpReceiver:
    """A minimal HL7 receiver: reads MLLP frames, records each message, answers an ACK with ``code``."""

    def __init__(self, port: int, code: str = "AA") -> None:
        self.port = port
        self.code = code
        self.messages: list[bytes] = []
        self.connections = 0
        self.nodelay_seen: list[bool] = []
        self._server: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def start(self) -> MllpReceiver:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        server.settimeout(0.2)
        self._server = server
        self._stop.clear()
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        reader = FrameReader(1 << 20)
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not data:
                    return
                reader.feed(data)
                while (got := reader.next_frame()) is not None:
                    self.messages.append(got.message)
                    msh = got.message.split(b"\r", 1)[0].decode().split("|")
                    ack = (f"MSH|^~\\&|RCV|RCV|PACSFLOW|PACSFLOW|20260101000000||ACK|A{len(self.messages)}|P|{msh[11]}\r"
                           f"MSA|{self.code}|{msh[9]}\r")
                    if self.code != "AA":
                        ack += "ERR|||207^Application internal error^HL70357|E\r"
                    conn.sendall(frame(ack.encode()))

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.close()
        for thread in self._threads:
            thread.join(5)
        self._threads.clear()


@pytest.fixture
def http_receiver() -> Iterator[Callable[..., HttpReceiver]]:
    made: list[HttpReceiver] = []

    def make(statuses: list[int] | None = None) -> HttpReceiver:
        made.append(HttpReceiver(statuses))
        return made[-1]

    yield make
    for receiver in made:
        receiver.stop()


@pytest.fixture
def mllp_port() -> Iterator[tuple[int, list[MllpReceiver]]]:
    receivers: list[MllpReceiver] = []
    yield free_port(), receivers
    for receiver in receivers:
        receiver.stop()


# -- helpers ---------------------------------------------------------------------------------------------------------
def _factory(hl7_port: int = 1, webhook: Webhook | None = None) -> Callable[[str, str], MessageSender]:
    def make(channel: str, name: str) -> MessageSender:
        if channel == "hl7":
            return MllpSender(Hl7Destination(name=name, host="127.0.0.1", port=hl7_port, version="2.5.1",
                                             timeout_seconds=2))
        assert webhook is not None and channel == "webhook"
        return WebhookSender(webhook)
    return make


def _no_dicom(name: str) -> object:
    raise AssertionError("no DICOM items in these tests")


def _outbox(path: Path, message_senders: Callable[[str, str], MessageSender], results: list | None = None,
            **kwargs: float) -> Outbox:
    opts = {"base_delay": 0.05, "max_delay": 0.2, "poll_interval": 0.05, **kwargs}
    return Outbox(path, _no_dicom, message_senders=message_senders,  # type: ignore[arg-type]
                  on_result=(lambda item, outcome: results.append((item, outcome))) if results is not None else None,
                  **opts)  # type: ignore[arg-type]


def _result(n: int = 1) -> alerts.CriticalResult:
    return dataclasses.replace(RESULT, study_uid=f"{RESULT.study_uid}.{n}")


def _hl7(n: int = 1, kind: str = "alert") -> tuple[str, bytes]:
    dest = Hl7Destination(name="ris", host="127.0.0.1", port=1, version="2.5.1")
    return alerts.hl7_message(kind, _result(n), dest, at=dt.datetime.now(dt.UTC))  # type: ignore[arg-type]


def _sample(name: str, labels: dict[str, str]) -> float:
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


# -- webhook ---------------------------------------------------------------------------------------------------------
def test_webhook_answering_500_then_200_is_delivered_once_signed(tmp_path, http_receiver):
    receiver = http_receiver([500])
    secret = tmp_path / "hmac-key"
    secret.write_bytes(b"s3cret\n")  # as `kubectl create secret --from-file` of an echo'ed file has it
    hook = Webhook(name="sectra", url=receiver.url, secret_file=str(secret), timeout_seconds=5)
    results: list[tuple[OutboxItem, str]] = []
    outbox = _outbox(tmp_path / "outbox", _factory(webhook=hook), results)
    result = _result()
    body, key = alerts.webhook_body(result), alerts.idempotency_key(result.study_uid, result.use_case)
    sent_before = _sample("pacsflow_outbound_messages_total",
                          {"channel": "webhook", "destination": "sectra", "outcome": "sent"})
    assert outbox.enqueue_message("webhook", "sectra", key, body, kind="webhook", study_key="k1", use_case="ich")
    assert not outbox.enqueue_message("webhook", "sectra", key, body, kind="webhook"), "same key: nothing new"
    outbox.start()
    try:
        eventually(lambda: outbox.pending() == 0, "webhook delivery after the 500", timeout=20)
        time.sleep(0.3)  # more rounds: nothing is sent again
    finally:
        outbox.close()
    assert [status for _h, _b, status in receiver.requests] == [500, 200]
    ((headers, got, _),) = receiver.delivered()
    assert got == body and json.loads(got)["idempotencyKey"] == key
    assert headers["Idempotency-Key"] == key and headers["Content-Type"] == "application/json"
    assert headers["X-Pacsflow-Signature"] == alerts.signature(body, b"s3cret")
    assert "X-Pacsflow-Sent-At" in headers
    assert [outcome for _item, outcome in results] == ["retrying", "delivered"]
    assert results[0][0].channel == "webhook" and "HTTP 500" in (results[0][0].last_error or "")
    assert "token" not in (results[0][0].last_error or ""), "the URL's query (a token) stays out of errors"
    assert _sample("pacsflow_outbound_messages_total",
                   {"channel": "webhook", "destination": "sectra", "outcome": "sent"}) == sent_before + 1


@pytest.mark.parametrize("status,parked", [(400, True), (429, False), (503, False)])
def test_webhook_refusal_is_parked_and_overload_is_retried(tmp_path, http_receiver, status, parked):
    receiver = http_receiver([status] * 10)
    hook = Webhook(name="hook", url=receiver.url, timeout_seconds=5)
    outbox = _outbox(tmp_path / "outbox", _factory(webhook=hook), max_attempts=3, base_delay=10, max_delay=60)
    outbox.enqueue_message("webhook", "hook", "key-1", b"{}", kind="webhook")
    start = time.time()
    for minute in range(6):  # simulated clock: every round is after the backoff
        outbox.deliver_due(now=start + 60 * (minute + 1))
    if parked:
        assert outbox.counts() == {"failed": 1}
        assert len(receiver.requests) == 3, "a refusal is resent max_attempts times, then parked"
    else:
        assert outbox.counts() == {"pending": 1}
        assert len(receiver.requests) == 6, "429/5xx are retried every round"
        assert "X-Pacsflow-Signature" not in receiver.requests[0][0], "no secretFile: unsigned"
    outbox.close()


# -- HL7 over MLLP -----------------------------------------------------------------------------------------------------
def test_hl7_receiver_down_then_up_gets_each_message_exactly_once(tmp_path, mllp_port):
    port, receivers = mllp_port
    results: list[tuple[OutboxItem, str]] = []
    outbox = _outbox(tmp_path / "outbox", _factory(hl7_port=port), results)
    messages = [_hl7(1, "alert"), _hl7(1, "order-update"), _hl7(2, "alert")]
    for msh10, body in messages:
        assert outbox.enqueue_message("hl7", "ris", msh10, body, kind="alert", study_key="k", use_case="ich")
    assert outbox.deliver_due() == 0, "nothing listens yet"
    assert outbox.pending("hl7") == 3
    outbox.update_gauges(now=time.time() + 120)
    assert _sample("pacsflow_outbound_pending", {"channel": "hl7"}) == 3
    assert _sample("pacsflow_outbound_oldest_pending_age_seconds", {"channel": "hl7"}) >= 119
    assert "connection refused" in (results[0][0].last_error or "").lower()
    receiver = MllpReceiver(port).start()
    receivers.append(receiver)
    outbox.start()
    try:
        eventually(lambda: outbox.pending() == 0, "HL7 delivery after the receiver came up", timeout=20)
        time.sleep(0.3)
        # The same messages again (a re-run of the study): nothing new is queued or sent.
        assert not any(outbox.enqueue_message("hl7", "ris", msh10, body) for msh10, body in messages)
        time.sleep(0.2)
        sender = outbox._senders[("hl7", "ris")]
        assert isinstance(sender, MllpSender)
        assert sender._sock is not None and sender._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        outbox.close()
    assert sorted(receiver.messages) == sorted(body for _id, body in messages)
    assert receiver.connections == 1, "one kept connection carries every message"
    reopened = _outbox(tmp_path / "outbox", _factory(hl7_port=port))
    assert reopened.counts("hl7") == {"delivered": 3}
    reopened.close()


def test_hl7_refusal_ae_is_recorded_and_parked_not_retried_blindly(tmp_path, mllp_port):
    port, receivers = mllp_port
    receiver = MllpReceiver(port, code="AE").start()
    receivers.append(receiver)
    results: list[tuple[OutboxItem, str]] = []
    outbox = _outbox(tmp_path / "outbox", _factory(hl7_port=port), results, max_attempts=3, base_delay=10,
                     max_delay=60)
    msh10, body = _hl7(3)
    outbox.enqueue_message("hl7", "ris", msh10, body, kind="alert", study_key="k3")
    start = time.time()
    assert outbox.deliver_due(now=start) == 0
    assert outbox.deliver_due(now=start + 1) == 0 and len(receiver.messages) == 1, "backed off, not resent at once"
    for minute in range(6):
        outbox.deliver_due(now=start + 60 * (minute + 1))
    assert len(receiver.messages) == 3, "max_attempts refusals, then parked"
    assert outbox.state(msh10, "ris", channel="hl7") == "failed"
    assert [outcome for _item, outcome in results] == ["retrying", "failed"]
    error = results[-1][0].last_error or ""
    assert "AE" in error and "207" in error and "ris" in error
    assert b"PID-77" not in error.encode() and "Doe" not in error
    outbox.close()


def test_hl7_rejection_ar_is_parked_at_once(tmp_path, mllp_port):
    port, receivers = mllp_port
    receiver = MllpReceiver(port, code="AR").start()
    receivers.append(receiver)
    results: list[tuple[OutboxItem, str]] = []
    outbox = _outbox(tmp_path / "outbox", _factory(hl7_port=port), results, max_attempts=3, base_delay=10,
                     max_delay=60)
    msh10, body = _hl7(4)
    outbox.enqueue_message("hl7", "ris", msh10, body, kind="alert", study_key="k4")
    start = time.time()
    assert outbox.deliver_due(now=start) == 0
    for minute in range(6):
        outbox.deliver_due(now=start + 60 * (minute + 1))
    assert len(receiver.messages) == 1, "a rejected message is never resent"
    assert outbox.state(msh10, "ris", channel="hl7") == "failed"
    assert [outcome for _item, outcome in results] == ["failed"]
    outbox.close()


def test_ack_to_another_message_is_not_taken_as_delivery(tmp_path, mllp_port):
    port, receivers = mllp_port

    class WrongAck(MllpReceiver):
        def _serve(self, conn: socket.socket) -> None:
            with conn:
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(frame(b"MSH|^~\\&|R|R|P|P|2026||ACK|1|P|2.5.1\rMSA|AA|SOMEONE-ELSE\r"))

    receiver = WrongAck(port).start()
    receivers.append(receiver)
    outbox = _outbox(tmp_path / "outbox", _factory(hl7_port=port))
    msh10, body = _hl7(4)
    outbox.enqueue_message("hl7", "ris", msh10, body)
    assert outbox.deliver_due() == 0 and outbox.pending() == 1
    outbox.close()


# -- durability ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "enqueue_messages"])
def test_kill_9_after_enqueue_then_reopen_delivers_each_message_once(tmp_path, mllp_port, http_receiver, batched):
    port, receivers = mllp_port
    receiver = MllpReceiver(port).start()
    receivers.append(receiver)
    web = http_receiver()
    msh10, body = _hl7(5)
    hook_body = alerts.webhook_body(_result(5))
    hook_key = alerts.idempotency_key(_result(5).study_uid, "ich-head-ct")
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from pacsflow_router.results.export import Outbox, Outgoing
        outbox = Outbox(Path({str(tmp_path / 'outbox')!r}), lambda name: None)
        messages = [Outgoing("hl7", "ris", {msh10!r}, {body!r}, kind="alert"),
                    Outgoing("webhook", "hook", {hook_key!r}, {hook_body!r}, kind="webhook")]
        if {batched!r}:  # one transaction for both (what a critical result does: workflow.critical)
            assert outbox.enqueue_messages(messages) == [True, True]
        else:
            for m in messages:
                outbox.enqueue_message(m.channel, m.destination, m.key, m.body, kind=m.kind)
        os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush: only what enqueue made durable survives
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    hook = Webhook(name="hook", url=web.url, timeout_seconds=5)
    outbox = _outbox(tmp_path / "outbox", _factory(hl7_port=port, webhook=hook))
    assert outbox.pending("hl7") == 1 and outbox.pending("webhook") == 1
    assert not outbox.enqueue_message("hl7", "ris", msh10, body), "the killed process's item is the same item"
    outbox.start()
    try:
        eventually(lambda: outbox.pending() == 0, "delivery after the restart", timeout=20)
        time.sleep(0.3)
    finally:
        outbox.close()
    assert receiver.messages == [body]
    assert [b for _h, b, _s in web.delivered()] == [hook_body]


def test_an_outbox_db_from_before_the_channels_is_migrated_and_keeps_its_items(tmp_path):
    directory = tmp_path / "outbox"
    (directory / "items").mkdir(parents=True)
    db = sqlite3.connect(directory / "outbox.db")
    db.executescript("""
        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, sop_uid TEXT NOT NULL,
            file TEXT NOT NULL, study_key TEXT, use_case TEXT, last_received REAL, enqueued_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT NULL, last_error TEXT, status INTEGER,
            delivered_at REAL, UNIQUE (destination, sop_uid));
        CREATE INDEX outbox_due ON outbox (state, next_attempt);
        INSERT INTO outbox (destination, sop_uid, file, study_key, enqueued_at, next_attempt, state)
            VALUES ('pacs', '1.2.3.4', 'a.dcm', 'k1', 1.0, 1.0, 'delivered'),
                   ('pacs', '1.2.3.5', 'b.dcm', 'k2', 2.0, 2.0, 'pending');
    """)
    db.commit()
    db.close()
    outbox = Outbox(directory, _no_dicom)  # type: ignore[arg-type]
    assert outbox.counts("dicom") == {"delivered": 1, "pending": 1}
    assert outbox.state("1.2.3.4", "pacs") == "delivered" and outbox.state("1.2.3.5") == "pending"
    # A key an SR has on 'pacs' is free on another channel's destination of the same name.
    assert outbox.enqueue_message("hl7", "pacs", "1.2.3.4", b"MSH|...")
    outbox.close()
    reopened = Outbox(directory, _no_dicom)  # type: ignore[arg-type]
    assert reopened.counts() == {"delivered": 1, "pending": 2}
    reopened.close()


def test_the_payload_is_on_disk_when_enqueue_returns(tmp_path):
    """Written to a temporary file, fsync'ed and renamed: no partial file, and the name carries no value."""
    outbox = _outbox(tmp_path / "outbox", _factory())
    msh10, body = _hl7(6)
    outbox.enqueue_message("hl7", "ris", msh10, body)
    files = list((tmp_path / "outbox" / "items").glob("*.msg"))
    assert len(files) == 1 and files[0].read_bytes() == body
    assert msh10 not in files[0].name, "file names carry no message values"
    assert not list((tmp_path / "outbox" / "items").glob("*.tmp"))
    outbox.close()


# -- the service's wiring ------------------------------------------------------------------------------------------------
def test_the_router_service_sends_each_channel_with_its_own_sender_and_audits_it(tmp_path, http_receiver, mllp_port):
    from pacsflow_router.config import parse_config
    from pacsflow_router.service import RouterService

    port, receivers = mllp_port
    receivers.append(MllpReceiver(port).start())
    web = http_receiver()
    config = parse_config({
        "spoolDir": str(tmp_path / "spool"), "audit": {"url": f"sqlite:///{tmp_path / 'audit.db'}"},
        "port": free_port(), "metrics": {"port": free_port()},
        "hl7Destinations": [{"name": "ris", "host": "127.0.0.1", "port": port, "version": "2.5.1"}],
        "webhooks": [{"name": "hook", "url": web.url}],
        # The outbox holds items of a use case the config lacks or has silent (the kill switch).
        "useCases": [{"name": "ich", "model": {"name": "ich_detector", "version": 1}, "mode": "triage"}],
    })
    service = RouterService(config)
    try:
        msh10, body = _hl7(7)
        service.outbox.enqueue_message("hl7", "ris", msh10, body, kind="alert", study_key="k7", use_case="ich")
        service.outbox.enqueue_message("webhook", "hook", "key-7", b"{}", kind="webhook", study_key="k7",
                                       use_case="ich")
        assert service.outbox.deliver_due() == 2
        assert receivers[0].messages == [body] and len(web.delivered()) == 1
        events = {(e["destination"], e["outcome"], e["detail"]) for e in service.audit.events(study_key="k7")}
        assert events == {("hl7:ris", "delivered", "alert"), ("webhook:hook", "delivered", "webhook")}
        # A webhook the config no longer has: the item stays queued (and the sender factory says why in the log).
        service.apply_config(config.model_copy(update={"webhooks": []}))
        service.outbox.enqueue_message("webhook", "hook", "key-8", b"{}", kind="webhook", study_key="k8")
        assert service.outbox.deliver_due() == 0 and service.outbox.pending("webhook") == 1
    finally:
        service.outbox.close()
        service.audit.close()
        service.spool.close()


def test_wait_sent_returns_once_the_alerts_are_acknowledged_and_is_bounded_when_the_receiver_is_down(tmp_path,
                                                                                                      mllp_port):
    port, receivers = mllp_port
    outbox = _outbox(tmp_path / "outbox", _factory(hl7_port=port))
    outbox.start()
    try:
        msh10, body = _hl7(7)
        outbox.enqueue_message("hl7", "ris", msh10, body, kind="alert", study_key="k7")
        started = time.monotonic()
        assert outbox.wait_sent(("hl7", "webhook"), 0.3) is False  # nobody listens: bounded by the timeout
        assert 0.25 <= time.monotonic() - started < 2
        receiver = MllpReceiver(port).start()
        receivers.append(receiver)
        assert outbox.wait_sent(("hl7", "webhook"), 10) is True
        assert len(receiver.messages) == 1 and outbox.pending("hl7") == 0
    finally:
        outbox.close()
