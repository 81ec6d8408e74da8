"""Audit chain records reach a real syslog collector (Debian rsyslog + rsyslog-gnutls, TLS, RFC 5425 framing) as DICOM
audit messages that validate against the PS3.15 A.5.1 schema; a collector that is down loses nothing (durable cursor,
retry), and a collector whose certificate the router does not trust gets nothing."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest
from lxml import etree

from pacsflow_router.config import AuditSyslog, TlsClient
from pacsflow_router.results import chain
from pacsflow_router.results.audit import AuditLog
from pacsflow_router.results.auditforward import AuditForwarder
from pacsflow_router.results.store import ResultsStore
from tests.peers.certs import Pki
from tests.peers.net import eventually
from tests.peers.rsyslog import Collector

SCHEMA = etree.RelaxNG(etree.parse(str(Path(__file__).parents[1] / "peers" / "dicom_audit_message.rng")))
KEY = "cd" * 32


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


@pytest.fixture
def collector(pki):
    peer = Collector(pki.server()).start()
    yield peer
    peer.cleanup()


def _every_kind(url: str) -> None:
    audit = AuditLog(url)
    audit.record_study_received(KEY, instances=3, completion="stable")
    audit.record_result(study_key=KEY, use_case="ich-head-ct", mode="assistive", model_name="ich_detector",
                        model_version=2, probability=0.4, critical=False, outcome="reported", timings={})
    store = ResultsStore.on_engine(audit.engine)
    store.record_reveal(result_key=KEY, reader="dr-a")
    store.record_feedback(result_key=KEY, reader="dr-a", verdict="reject")
    store.record_login("pk_0123456789abcdef", method="api-key")
    assert store.authenticate("pk_0123456789abcdef.nope") is None
    chain.record(audit.engine, "association-refused", actor="192.0.2.1", subject="dicom", outcome="failure",
                 detail={"reason": "calling-ae-title"})
    chain.record(audit.engine, "promotion", actor="routing-config", subject="ich-head-ct",
                 detail={"from": "silent", "to": "assistive"})
    chain.record(audit.engine, "approval", actor="dr-a", subject=KEY, detail={"decision": "approve"})


def _forwarder(url: str, port: int, ca: Path, **extra: object) -> AuditForwarder:
    cfg = AuditSyslog(host="127.0.0.1", port=port, tls=TlsClient(ca_file=str(ca)), retry_seconds=0.2, **extra)
    return AuditForwarder(AuditLog(url).engine, cfg)


def _ids(messages: list[str]) -> set[int]:
    found = set()
    for text in messages:
        for obj in etree.fromstring(text.encode()).iter("ParticipantObjectIdentification"):
            if obj.get("ParticipantObjectID", "").startswith("audit-chain:"):
                found.add(int(obj.get("ParticipantObjectID").split(":")[1]))
    return found


def test_every_record_kind_arrives_as_a_valid_dicom_audit_message(tmp_path, pki, collector):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _every_kind(url)
    forwarder = _forwarder(url, collector.port, pki.ca_file)
    assert forwarder.forward_once() == 9
    assert forwarder.cursor() == 9
    messages = eventually(lambda: (m := collector.messages()) and len(m) >= 9 and m, "9 messages at the collector",
                          timeout=20)
    forwarder.close()
    rows = {r["id"]: r for r in chain.records(forwarder.engine)}
    kinds = set()
    for text in messages:
        doc = etree.fromstring(text.encode())
        assert SCHEMA.validate(doc), SCHEMA.error_log.last_error
        entry = next(o for o in doc.iter("ParticipantObjectIdentification")
                     if o.get("ParticipantObjectID").startswith("audit-chain:"))
        record = rows[int(entry.get("ParticipantObjectID").split(":")[1])]
        details = {d.get("type"): base64.b64decode(d.get("value")).decode() for d in entry.iter("ParticipantObjectDetail")}
        assert details["hash"] == record["hash"] and details["prev_hash"] == record["prev_hash"]
        kinds.add(entry.findtext("ParticipantObjectName"))
        outcome = doc.find("EventIdentification").get("EventOutcomeIndicator")
        assert outcome == ("4" if record["outcome"] == "failure" else "0")
    assert kinds == set(chain.KINDS)
    assert "dr-a" in "".join(messages) and "nope" not in "".join(messages)  # actor named, secret never


def test_a_collector_that_is_down_loses_nothing(tmp_path, pki):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _every_kind(url)
    server = pki.server()
    first = Collector(server).start()
    port = first.port
    forwarder = _forwarder(url, port, pki.ca_file)
    stop = threading.Event()
    forwarder.start(stop)
    try:
        eventually(lambda: _ids(first.messages()) >= set(range(1, 10)), "records 1-9 forwarded", timeout=20)
        first.cleanup()  # the collector goes away; the router keeps auditing
        for n in range(5):
            chain.record(forwarder.engine, "login", actor=f"pk_while_down_{n}")
        second = Collector(server, port=port).start()  # back on the same address
        try:
            eventually(lambda: _ids(second.messages()) >= set(range(10, 15)), "records 10-14 after the outage",
                       timeout=30)
            assert forwarder.cursor() == 14
        finally:
            second.cleanup()
    finally:
        stop.set()


def test_a_collector_with_an_untrusted_certificate_gets_nothing(tmp_path, pki, collector):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _every_kind(url)
    other_ca = Pki(tmp_path / "other", name="some other CA").ca_file
    forwarder = _forwarder(url, collector.port, other_ca)
    with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
        forwarder.forward_once()
    assert forwarder.cursor() == 0
    assert collector.messages() == []


def test_the_router_process_forwards_a_refusal_and_a_promotion(tmp_path, pki, collector, port_factory):
    """The real pacsflow-router with ``audit.syslog``: an association from an unknown AE title (dcmtk echoscu) and a
    config reload that promotes a use case reach the collector as DICOM audit messages."""
    import subprocess

    from tests.peers.router import RouterProcess, router_config, use_case

    config = router_config(workdir=tmp_path / "router", port=port_factory(), metrics_port=port_factory(),
                           pacs_port=None, use_cases=[use_case(mode="silent", destination=None)])
    config["audit"]["syslog"] = {"host": "127.0.0.1", "port": collector.port, "tls": {"caFile": str(pki.ca_file)},
                                 "retrySeconds": 0.5}
    router = RouterProcess(tmp_path / "router", config).start()
    try:
        echo = subprocess.run(["echoscu", "-aet", "INTRUDER", "-aec", "PACSFLOW", "127.0.0.1", str(router.port)],
                              capture_output=True, text=True, timeout=60)
        assert echo.returncode != 0  # rejected
        router.write_config({**config, "useCases": [use_case(mode="assistive", destination=None)]})

        def events() -> dict[str, etree._Element]:
            found = {}
            for text in collector.messages():
                doc = etree.fromstring(text.encode())
                assert SCHEMA.validate(doc), SCHEMA.error_log.last_error
                found[doc.find("EventIdentification/EventTypeCode").get("csd-code")
                      if doc.find("EventIdentification/EventTypeCode") is not None else "-"] = doc
            return found

        found = eventually(lambda: (e := events()) and {"110126", "110131"} <= set(e) and e,
                           "the refusal and the promotion at the collector", timeout=60, context=router.log)
        refused = found["110126"]
        assert refused.find("EventIdentification").get("EventOutcomeIndicator") == "4"
        assert refused.find("ActiveParticipant").get("NetworkAccessPointID") == "127.0.0.1"
        assert found["110131"].find("ParticipantObjectIdentification").get("ParticipantObjectID") == "ich-head-ct"
    finally:
        router.stop()
