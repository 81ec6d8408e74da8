"""A NUL in an HL7 order message, over real MLLP and HTTP sockets, with the order store on a SQLite file and on a real
PostgreSQL: the same answer everywhere (AE, ERR 102 Data type error naming the field), nothing stored, and the
control ID not used up, so the corrected message is then accepted.

Before, SQLite stored the NUL and answered AA while PostgreSQL refused the insert (AE 207, HTTP 503): one message,
two answers depending on the store.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from pacsflow_router.config import Hl7Listener as Hl7ListenerConfig
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.results.schema import HL7_MESSAGES
from pacsflow_router.workflow.listener import Hl7Listener
from pacsflow_router.workflow.mllp import FrameReader, frame, read_frame
from pacsflow_router.workflow.orders import OrderStore
from tests.peers.hl7msgs import OrderMessage
from tests.peers.net import free_port
from tests.peers.postgres import fresh_database, postgres_server  # noqa: F401  (fixture)


@pytest.fixture(params=["sqlite", "postgresql"])
def listener(request: pytest.FixtureRequest, tmp_path) -> Iterator[tuple[Hl7Listener, OrderStore]]:
    """The HL7 listener (MLLP and HTTP on loopback) over an order store in a SQLite file or a PostgreSQL database."""
    url = (f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite"
           else fresh_database(request.getfixturevalue("postgres_server")))
    spool = Spool(tmp_path / "spool", 0.999)
    store = OrderStore(spool, url)
    listener = Hl7Listener(Hl7ListenerConfig(port=free_port(), http_port=free_port()), store)
    listener.start()
    try:
        yield listener, store
    finally:
        listener.stop()
        store.close()
        spool.close()


def _mllp(port: int, message: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(frame(message))
        return read_frame(sock, FrameReader(1 << 20), 10).message


def _post(port: int, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/hl7/orm", data=body, method="POST",
                                     headers={"Content-Type": "x-application/hl7-v2+er7"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _segment(ack: bytes, name: str) -> list[str]:
    for seg in ack.decode("latin-1").split("\r"):
        if seg.startswith(name + "|"):
            return seg.split("|")
    raise AssertionError(f"no {name} in {ack!r}")


def _stored(store: OrderStore) -> tuple[int, int]:
    """(orders, HL7 control IDs) in the store."""
    with store.engine.connect() as conn:
        return store.count(), conn.execute(select(func.count()).select_from(HL7_MESSAGES)).scalar_one()


def _order() -> OrderMessage:
    tag = uuid.uuid4().hex[:10].upper()
    return OrderMessage(control_id=f"C{tag}", accession=f"A{tag}", patient_id=f"P{tag}")


@pytest.mark.parametrize("kind,nul,location", [
    ("omi251", lambda m, o: m.replace(f"|{o.accession}|", f"|{o.accession[:4]}\x00{o.accession[4:]}|"), "OBR^1^18"),
    ("orm231", lambda m, o: m.replace("^José", "^Jo\\X00\\sé"), "PID^1^5^1^2"),  # an escaped NUL in a read field
])
def test_a_nul_over_mllp_is_ae_102_naming_the_field_and_stores_nothing(listener, kind, nul, location):
    hl7, store = listener
    msg = _order()
    ack = _mllp(hl7.port, nul(msg.message(kind), msg).encode("utf-8"))
    assert _segment(ack, "MSA")[1:3] == ["AE", msg.control_id]
    err = _segment(ack, "ERR")
    if kind == "omi251":  # v2.5.1: ERR-2 location, ERR-3 condition
        assert (err[2], err[3]) == (location, "102^Data type error^HL70357")
    else:  # v2.3.1: ERR-1 segment^sequence^field^condition
        assert err[1] == "^".join(location.split("^")[:3]) + "^102&Data type error&HL70357"
    assert "NUL" in _segment(ack, "MSA")[3]
    assert _stored(store) == (0, 0)
    # The control ID was not used up: the corrected message is taken.
    ack = _mllp(hl7.port, msg.encoded(kind))
    assert _segment(ack, "MSA")[1:3] == ["AA", msg.control_id]
    assert _stored(store) == (1, 1)


def test_a_nul_over_http_is_the_same_ae_102(listener):
    hl7, store = listener
    msg = _order()
    body = msg.message("omi251").replace("Núñez", "Nú\x00ñez").encode("utf-8")
    status, answer = _post(hl7.http_port, body)
    assert (status, answer["ack"], answer["errorLocation"], answer["outcome"]) == (422, "AE", "PID^1^5", "refused")
    assert _segment(answer["ackMessage"].encode("latin-1"), "ERR")[3] == "102^Data type error^HL70357"
    assert _stored(store) == (0, 0)
    status, answer = _post(hl7.http_port, msg.encoded("omi251"))
    assert (status, answer["ack"], answer["accession"]) == (200, "AA", msg.accession)


def test_a_nul_in_the_control_id_is_not_echoed_raw(listener):
    """MSA-2 quotes MSH-10 as HL7 escapes it (\\X00\\): a NUL never goes back on the wire."""
    hl7, store = listener
    msg = _order()
    ack = _mllp(hl7.port, msg.message("omi251").replace(msg.control_id, msg.control_id + "\x00").encode("utf-8"))
    assert b"\x00" not in ack
    assert _segment(ack, "MSA")[1:3] == ["AE", msg.control_id + "\\X00\\"]
    assert _segment(ack, "ERR")[2] == "MSH^1^10"
    assert _stored(store) == (0, 0)
