"""The HL7 order listener over real sockets: python-hl7's mllp_send as an independent sender, and every bad-input
case of the issue (framing, no MSH, version, encoding characters, 20 MB, split/coalesced segments, unknown orders, a
cancel after the images arrived, idle and slow sockets). Each bad case gets the protocol's answer and leaves other
connections and the stored orders as they were.

The listener runs in its own process (tests/peers/hl7listener.py) so that its memory can be measured and it can be
killed with SIGKILL.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsflow_router.ingest.spool import Spool
from pacsflow_router.models import phantom
from pacsflow_router.workflow.mllp import FrameReader, frame, read_frame
from tests.peers.dicomfiles import part10
from tests.peers.hl7listener import ListenerProcess
from tests.peers.hl7msgs import OrderMessage
from tests.peers.net import eventually

MLLP_SEND = Path(sys.executable).parent / "mllp_send"


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenerProcess]:
    proc = ListenerProcess(tmp_path_factory.mktemp("hl7") / "spool", idle_timeout=3.0, message_timeout=6.0)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def _order(**fields: str) -> OrderMessage:
    """An order with its own control ID, accession and patient (tests share the listener's store)."""
    tag = uuid.uuid4().hex[:10].upper()
    base = {"control_id": f"C{tag}", "accession": f"A{tag}", "patient_id": f"P{tag}"}
    return OrderMessage(**{**base, **fields})  # type: ignore[arg-type]


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _exchange(port: int, *messages: bytes) -> list[bytes]:
    """Send each message framed on one connection and read its ACK (the message ACKed before the next one)."""
    with _connect(port) as sock:
        reader = FrameReader(1 << 20)
        acks = []
        for message in messages:
            sock.sendall(frame(message))
            acks.append(read_frame(sock, reader, 10).message)
        return acks


def _msa(ack: bytes) -> list[str]:
    for seg in ack.decode("latin-1").split("\r"):
        if seg.startswith("MSA|"):
            return seg.split("|")
    raise AssertionError(f"no MSA in {ack!r}")


def _err(ack: bytes) -> list[str]:
    for seg in ack.decode("latin-1").split("\r"):
        if seg.startswith("ERR|"):
            return seg.split("|")
    raise AssertionError(f"no ERR in {ack!r}")


def _err_location_and_code(ack: bytes) -> tuple[str, str]:
    """ERR location and condition code, from ERR-1 (v2.3/2.3.1 ELD) or ERR-2/ERR-3 (v2.5.1)."""
    err = _err(ack)
    if err[1]:
        parts = err[1].split("^")
        return "^".join(parts[:3]).rstrip("^"), parts[3].split("&")[0]
    return err[2], err[3].split("^")[0]


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# -- independent sender -------------------------------------------------------------------------------------------

def test_mllp_send_delivers_orders_of_each_kind(listener, tmp_path):
    msgs = [_order(), _order(), _order()]
    kinds = ["orm23", "orm231", "omi251"]
    # --loose: messages start at MSH|^~\&| and newlines end segments (the tool turns them into CR).
    text = "\n".join(m.message(k).replace("\r", "\n") for m, k in zip(msgs, kinds, strict=True))
    path = tmp_path / "msgs.hl7"
    path.write_bytes(text.encode("utf-8"))
    out = subprocess.run([str(MLLP_SEND), "--port", str(listener.port), "--file", str(path), "--loose", "127.0.0.1"],
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(b"MSA|AA|") == 3, out.stdout
    for m in msgs:
        assert f"MSA|AA|{m.control_id}".encode() in out.stdout
    stored = listener.orders()
    for m in msgs:
        assert (m.accession, m.patient_id, "scheduled") in stored


def test_duplicate_control_id_gets_the_same_ack_and_creates_nothing(listener):
    msg = _order()
    first, again = _exchange(listener.port, msg.encoded("orm23"), msg.replace(priority="R").encoded("orm23"))
    assert again == first and _msa(first)[1] == "AA"
    assert [o for o in listener.orders() if o[0] == msg.accession] == [(msg.accession, msg.patient_id, "scheduled")]


# -- framing ------------------------------------------------------------------------------------------------------

def test_bytes_outside_a_frame_close_that_connection_only(listener):
    before = listener.orders()
    with _connect(listener.port) as good:
        reader = FrameReader(1 << 20)
        with _connect(listener.port) as bad:
            bad.sendall(_order().encoded("orm23"))  # no <VT>...<FS><CR>
            assert _closed_by_peer(bad, 10)
        ok = _order()
        good.sendall(frame(ok.encoded("orm23")))
        assert _msa(read_frame(good, reader, 10).message)[1] == "AA"
    after = listener.orders()
    assert set(after) - set(before) == {(ok.accession, ok.patient_id, "scheduled")}


def test_one_message_split_over_many_segments_and_several_in_one(listener):
    msgs = [_order() for _ in range(4)]
    with _connect(listener.port) as sock:
        reader = FrameReader(1 << 20)
        data = frame(msgs[0].encoded("omi251"))
        for i in range(0, len(data), 7):
            sock.sendall(data[i:i + 7])
            time.sleep(0.002)
        assert _msa(read_frame(sock, reader, 10).message)[1:3] == ["AA", msgs[0].control_id]
        sock.sendall(b"".join(frame(m.encoded("orm23")) for m in msgs[1:]))
        acks = [read_frame(sock, reader, 10).message for _ in msgs[1:]]
    assert [_msa(a)[1:3] for a in acks] == [["AA", m.control_id] for m in msgs[1:]]


def test_a_20_mb_message_is_refused_without_buffering_it(listener):
    head = _order().encoded("orm23")
    filler = b"OBX|1|TX|||" + b"x" * 65_000 + b"\r"
    chunks = 20 * 1024 * 1024 // len(filler) + 1
    peak_before = listener.rss_peak_bytes()
    with _connect(listener.port) as sock:
        reader = FrameReader(1 << 20)
        sock.sendall(b"\x0b" + head)
        for _ in range(chunks):
            sock.sendall(filler)
        sock.sendall(b"\x1c\r")
        ack = read_frame(sock, reader, 30).message
        assert _msa(ack)[1] == "AE" and "too large" in _msa(ack)[3]
        # The same connection goes on: the next message is read normally.
        ok = _order()
        sock.sendall(frame(ok.encoded("orm23")))
        assert _msa(read_frame(sock, reader, 10).message)[1:3] == ["AA", ok.control_id]
    grown = listener.rss_peak_bytes() - peak_before
    assert grown < 8 * 1024 * 1024, f"listener peak RSS grew by {grown} bytes for a refused 20 MB message"
    assert not [o for o in listener.orders() if o[0] == "ACC0001"]


# -- malformed and unsupported messages ---------------------------------------------------------------------------

@pytest.mark.parametrize("mutate,code,err_code,location", [
    (lambda t: t[t.index("\r") + 1:], "AE", "100", "MSH"),
    (lambda t: t.replace("|P|2.3|", "|P|2.6|", 1), "AR", "203", "MSH^1^12"),
    (lambda t: t.replace("MSH|^~\\&|", "MSH|^~\\^|", 1), "AE", "102", "MSH^1^2"),
    (lambda t: t.replace("|ORM^O01|", "|ORU^R01|", 1), "AR", "200", "MSH^1^9"),
])
def test_bad_messages_get_the_protocols_answer_and_change_nothing(listener, mutate, code, err_code, location):
    before = listener.orders()
    msg = _order()
    bad = mutate(msg.message("orm23")).encode("utf-8")
    ok = _order()
    bad_ack, ok_ack = _exchange(listener.port, bad, ok.encoded("orm23"))
    assert _msa(bad_ack)[1] == code
    assert _err_location_and_code(bad_ack) == (location, err_code)
    assert _msa(ok_ack)[1] == "AA"
    assert set(listener.orders()) - set(before) == {(ok.accession, ok.patient_id, "scheduled")}


@pytest.mark.parametrize("control", ["XO", "CA"])
def test_change_for_an_unknown_order_is_ae_and_stored_orders_stay(listener, control):
    existing = _order()
    _exchange(listener.port, existing.encoded("omi251"))
    before = listener.orders()
    ack, = _exchange(listener.port, _order(order_control=control).encoded("omi251"))
    assert _msa(ack)[1] == "AE"
    assert _err(ack)[2:5] == ["OBR^1^18", "204^Unknown key identifier^HL70357", "E"]
    assert listener.orders() == before


def test_cancel_after_the_images_arrived_is_refused(listener):
    datasets, _ = phantom.generate_study(5, lesion=False, slices=1, rows=16, cols=16)
    msg = _order(study_uid=datasets[0].StudyInstanceUID)
    assert _msa(_exchange(listener.port, msg.encoded("orm231"))[0])[1] == "AA"
    spool = Spool(listener.spool_dir, 0.999)  # the modality's image lands in the same spool
    try:
        spool.store(part10(datasets[0]))
    finally:
        spool.close()
    cancel = msg.replace(control_id=msg.control_id + "X", order_control="CA")
    ack, = _exchange(listener.port, cancel.encoded("orm231"))
    assert _msa(ack)[1] == "AE" and "unable to cancel" in _msa(ack)[3]
    assert (msg.accession, msg.patient_id, "scheduled") in listener.orders()
    # Before the images, a cancel works.
    other = _order()
    _exchange(listener.port, other.encoded("orm231"))
    ack, = _exchange(listener.port, other.replace(control_id=other.control_id + "X", order_control="CA")
                     .encoded("orm231"))
    assert _msa(ack)[1] == "AA"
    assert (other.accession, other.patient_id, "cancelled") in listener.orders()


# -- slow and idle peers ------------------------------------------------------------------------------------------

def test_idle_and_slow_sockets_are_closed_without_affecting_others(listener):
    with _connect(listener.port) as idle, _connect(listener.port) as slow:
        slow.sendall(b"\x0b" + _order().encoded("orm23")[:20])
        started = time.monotonic()
        # The slow sender keeps trickling bytes (never idle), but its message never completes.
        reader = FrameReader(1 << 20)
        with _connect(listener.port) as busy:
            slow_closed = False
            while time.monotonic() - started < 20 and not slow_closed:
                try:
                    slow.sendall(b"x")
                except OSError:
                    slow_closed = True
                    break
                ok = _order()
                busy.sendall(frame(ok.encoded("orm23")))  # a third connection is served meanwhile
                assert _msa(read_frame(busy, reader, 10).message)[1:3] == ["AA", ok.control_id]
                slow_closed = _closed_by_peer(slow, 0.5)
            assert slow_closed, "a sender that never completes its message was not disconnected"
        assert _closed_by_peer(idle, 10), "an idle connection was not closed"
    assert "message timeout" in listener.log() and "idle timeout" in listener.log()


# -- HTTP ---------------------------------------------------------------------------------------------------------

def _post(port: int, body: bytes, content_type: str = "x-application/hl7-v2+er7") -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/hl7/orm", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_http_post_same_parser_same_store(listener):
    msg = _order(charset="8859/1", family="Müller", given="Jörg")
    status, body = _post(listener.http_port, msg.encoded("orm23"))
    assert (status, body["status"], body["accession"], body["ack"]) == (200, "triggered", msg.accession, "AA")
    assert (msg.accession, msg.patient_id, "scheduled") in listener.orders()
    # The same control ID over MLLP: the same ACK, nothing new.
    ack, = _exchange(listener.port, msg.encoded("orm23"))
    assert ack.decode("latin-1") == body["ackMessage"]
    status, body = _post(listener.http_port, _order(accession="").encoded("orm23"), "text/plain")
    assert (status, body["ack"], body["errorLocation"]) == (422, "AE", "OBR^1^18")
    status, body = _post(listener.http_port, _order().message("orm23").replace("|P|2.3|", "|P|2.2|").encode())
    assert (status, body["ack"]) == (400, "AR")


def test_http_body_over_the_limit_is_refused_unread(listener):
    with socket.create_connection(("127.0.0.1", listener.http_port), timeout=10) as sock:
        sock.sendall(b"POST /hl7/orm HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 20971520\r\n\r\n")
        answer = b""  # no body sent at all: the answer comes from the header alone, then the server closes
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert b"too large" in answer


# -- durability -----------------------------------------------------------------------------------------------------

def test_order_acked_aa_survives_kill_9(tmp_path):
    proc = ListenerProcess(tmp_path / "spool").start()
    msg = _order()
    try:
        ack, = _exchange(proc.port, msg.encoded("omi251"))
        assert _msa(ack)[1] == "AA"
        proc.kill9()
        proc = ListenerProcess(tmp_path / "spool").start()
        assert proc.orders() == [(msg.accession, msg.patient_id, "scheduled")]
        again, = _exchange(proc.port, msg.encoded("omi251"))
        assert again == ack
        assert len(proc.orders()) == 1
    finally:
        proc.stop()
    for secret in (msg.accession, msg.patient_id, "Núñez", msg.study_uid):
        assert secret not in proc.log()


def test_no_patient_data_in_the_listener_log(listener):
    eventually(lambda: listener.log(), "the listener to log")
    for secret in ("Núñez", "ACC0001", "PID0001", "1.2.826.0.1.3680043.8.498"):
        assert secret not in listener.log()


# -- the service's wiring -----------------------------------------------------------------------------------------

def test_the_router_service_serves_hl7_orders_into_its_order_store(tmp_path):
    from pacsflow_router.config import parse_config
    from pacsflow_router.service import RouterService
    from tests.peers.net import free_port

    mllp_port, http_port = free_port(), free_port()
    config = parse_config({
        "spoolDir": str(tmp_path / "spool"), "audit": {"url": f"sqlite:///{tmp_path / 'audit.db'}"},
        "port": free_port(), "metrics": {"port": free_port()},
        "hl7Listener": {"port": mllp_port, "httpPort": http_port},
    })
    service = RouterService(config)
    service.start()
    try:
        msg = _order()
        ack, = _exchange(mllp_port, msg.encoded("orm23"))
        assert _msa(ack)[1] == "AA"
        order = service.orders.get(msg.accession, msg.patient_id)
        assert order is not None and order.modality == "CT"
        assert service.pipeline.orders is service.orders
        status, body = _post(http_port, _order().encoded("omi251"))
        assert (status, body["ack"]) == (200, "AA")
        assert service.orders.count() == 2
    finally:
        service.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mllp_port), timeout=2).close()
