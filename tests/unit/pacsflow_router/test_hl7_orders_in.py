"""HL7 orders in: ORM^O01 / OMI^O23 parsing, MSH-18 charsets, escapes, segment ends, AE/AR with ERR, the handler."""

from __future__ import annotations

import hl7
import pytest

from pacsflow_router import metrics
from pacsflow_router.config import Hl7FieldMap, Hl7Listener
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.workflow.hl7 import Hl7Refusal, ParsedOrder, build_ack, parse_order, parse_report
from pacsflow_router.workflow.listener import Hl7Handler
from pacsflow_router.workflow.orders import OrderStore
from tests.peers.hl7msgs import OrderMessage, encode
from tests.peers.postgres import fresh_database, postgres_server  # noqa: F401  (fixture)

KINDS = ("orm23", "orm231", "omi251")


def _parse(data: bytes, field_map: Hl7FieldMap | None = None) -> ParsedOrder:
    return parse_order(data, field_map or Hl7FieldMap())


def _refusal(data: bytes) -> Hl7Refusal:
    with pytest.raises(Hl7Refusal) as info:
        _parse(data)
    return info.value


def _segment(ack: bytes, name: str, codec: str = "latin-1") -> list[str]:
    for seg in ack.decode(codec).split("\r"):
        if seg.startswith(name + "|"):
            return seg.split("|")
    raise AssertionError(f"no {name} in {ack!r}")


@pytest.mark.parametrize("kind", KINDS)
def test_each_accepted_message_gives_the_order(kind):
    msg = OrderMessage()
    parsed = _parse(msg.encoded(kind))
    assert parsed.order_control == "NW"
    assert parsed.message_type == ("OMI^O23" if kind == "omi251" else "ORM^O01")
    order = parsed.order
    assert (order.accession, order.patient_id, order.study_uid) == (msg.accession, msg.patient_id, msg.study_uid)
    assert (order.requested_procedure_id, order.modality, order.priority) == ("RP0001", "CT", "S")
    assert (order.procedure_code, order.procedure_description, order.procedure_scheme) == (
        "CTHEADWO", "CT head without contrast", "L")
    assert (order.patient_class, order.location) == ("E", "ED")
    assert order.reason == "Fall & headache | GCS 13"  # \T\ and \F\ decoded
    assert order.patient_name == "Núñez-Šimić^José"  # PID-5 as DICOM PN
    assert (order.patient_birth_date, order.patient_sex) == ("19560412", "M")
    assert order.scheduled_start == "20261130121500"
    assert (order.placer_order_number, order.filler_order_number) == ("PLC0001", "FIL0001")
    assert order.scheduled_station_ae_title == ("CT_ED_1" if kind == "omi251" else "")


def test_field_map_is_configurable_first_non_empty_wins():
    msg = OrderMessage(priority="A")
    data = msg.encoded("orm23")
    assert _parse(data).order.priority == "A"  # ORC-7.6
    field_map = Hl7FieldMap(priority=["TQ1-9", "OBR-5"], accession=["IPC-1", "OBR-19"])
    parsed = _parse(data, field_map)
    assert parsed.order.priority == ""
    assert parsed.order.accession == "RP0001"


@pytest.mark.parametrize("charset,family,given", [
    ("UNICODE UTF-8", "Núñez-Šimić", "José"), ("8859/1", "Müller-Lüdenscheid", "José"), ("ASCII", "Nunez", "Jose"),
    ("", "Nunez", "Jose")])
def test_charsets_by_msh18(charset, family, given):
    parsed = _parse(OrderMessage(charset=charset, family=family, given=given).encoded("orm231"))
    assert parsed.order.patient_name == f"{family}^{given}"
    assert parsed.header.charset == charset


def test_latin1_bytes_are_not_read_as_utf8():
    data = OrderMessage(charset="8859/1", family="Müller").encoded("orm23")
    assert b"M\xfcller" in data
    assert _parse(data).order.patient_name.startswith("Müller^")


def test_bytes_the_declared_charset_cannot_hold_are_ae_at_msh18():
    text = OrderMessage(charset="UNICODE UTF-8", family="Müller").message("orm23")
    refusal = _refusal(text.encode("latin-1"))  # declared UTF-8, sent Latin-1
    assert (refusal.error.ack_code, refusal.error.error_code, refusal.error.location) == ("AE", 102, "MSH^1^18")
    unknown = _refusal(OrderMessage(charset="EBCDIC", family="X", given="Y").message("orm23").encode("ascii"))
    assert (unknown.error.ack_code, unknown.error.error_code, unknown.error.location) == ("AE", 103, "MSH^1^18")


@pytest.mark.parametrize("charset,hexed", [("UNICODE UTF-8", "\\XC3A9\\"), ("8859/1", "\\XE9\\")])
def test_escape_sequences(charset, hexed):
    text = OrderMessage(charset=charset, family="Müller").message("orm23")
    raw_reason = "^a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f " + hexed + "\\.br\\g\\H\\h\\N\\"
    obr = next(s for s in text.split("\r") if s.startswith("OBR|"))
    fields = obr.split("|")
    fields[31] = raw_reason
    text = text.replace(obr, "|".join(fields))
    assert _parse(encode(text, charset)).order.reason == "a|b^c&d~e\\f é\ngh"


@pytest.mark.parametrize("ending", ["\r", "\n", "\r\n"])
def test_segment_ends(ending):
    text = OrderMessage().message("omi251")
    parsed = _parse(text.replace("\r", ending).encode("utf-8"))
    assert parsed.order == _parse(text.encode("utf-8")).order


@pytest.mark.parametrize("mutate,ack_code,error_code,location", [
    (lambda t: t[t.index("\r") + 1:], "AE", 100, "MSH"),                       # no MSH
    (lambda t: t.replace("MSH|^~\\&|", "MSH|^~\\|", 1), "AE", 102, "MSH^1^2"),  # three encoding characters
    (lambda t: t.replace("MSH|^~\\&|", "MSH|^^\\&|", 1), "AE", 102, "MSH^1^2"),  # a repeated one
    (lambda t: t.replace("MSH|^~\\&|", "MSH|A~\\&|", 1), "AE", 102, "MSH^1^2"),  # alphanumeric
    (lambda t: t.replace("|P|2.3|", "|P|2.4|", 1), "AR", 203, "MSH^1^12"),
    (lambda t: t.replace("|ORM^O01|", "|ADT^A01|", 1), "AR", 200, "MSH^1^9"),
    (lambda t: t.replace("|ORM^O01|", "|OMI^O23|", 1), "AR", 200, "MSH^1^9"),  # OMI does not exist in 2.3
    (lambda t: t.replace("|MSG00001|", "||", 1), "AE", 101, "MSH^1^10"),
    (lambda t: t.replace("|ACC0001|", "||", 1), "AE", 101, "OBR^1^18"),
    (lambda t: t.replace("PID|1||PID0001^", "PID|1||^", 1), "AE", 101, "PID^1^3^1^1"),
    (lambda t: t.replace("|19560412|", "|1956-04-12|", 1), "AE", 102, "PID^1^7"),
    (lambda t: t.replace("ORC|NW|", "ORC|ZZ|", 1), "AE", 103, "ORC^1^1"),
    (lambda t: t.replace("ORC|NW|", "ORC||", 1), "AE", 101, "ORC^1^1"),
    # A NUL is no HL7 text character, raw or escaped, wherever it is: 102 at its field (component when not the first).
    (lambda t: t.replace("|ACC0001|", "|ACC\x000001|", 1), "AE", 102, "OBR^1^18"),
    (lambda t: t.replace("^José", "^Jo\x00sé", 1), "AE", 102, "PID^1^5^1^2"),
    (lambda t: t.replace("^José", "^Jo\\X00\\sé", 1), "AE", 102, "PID^1^5^1^2"),
    (lambda t: t.replace("|MSG00001|", "|MSG\x0000001|", 1), "AE", 102, "MSH^1^10"),
    (lambda t: t.replace("MSH|^~\\&|", "MSH|^~\x00&|", 1), "AE", 102, "MSH^1^2"),
    (lambda t: t.replace("|19560412|", "|19560412\x00|", 1), "AE", 102, "PID^1^7"),
    (lambda t: t.replace("\rPV1|", "\rP\x001|", 1), "AE", 102, ""),
])
def test_refusals_name_the_field_never_its_value(mutate, ack_code, error_code, location):
    msg = OrderMessage()
    refusal = _refusal(mutate(msg.message("orm23")).encode("utf-8"))
    assert (refusal.error.ack_code, refusal.error.error_code, refusal.error.location) == (
        ack_code, error_code, location)
    for value in (msg.accession, msg.patient_id, "Núñez", msg.study_uid, "19560412", "1956-04-12"):
        assert value not in str(refusal.error)


def test_a_nul_in_a_final_report_is_refused_and_never_echoed_raw():
    oru = (b"MSH|^~\\&|RIS|HOSP|PACSFLOW|HOSP|20260101120000||ORU^R01|MSG\x00|P|2.5.1\r"
           b"PID|1||PID1^^^HOSP^MR||DOE^JANE\rOBR|1|PLC1|FIL1|CTHEAD^CT Head||||||||||||||ACC1\r"
           b"OBX|1|CWE|ICH\\X00\\^Intracranial hemorrhage^L||Y||||||F\r")
    with pytest.raises(Hl7Refusal) as raw:
        parse_report(oru, Hl7FieldMap())
    assert (raw.value.error.error_code, raw.value.error.location) == (102, "MSH^1^10")
    ack = build_ack(raw.value.header, "AE", application="PACSFLOW", facility="HOSP", error=raw.value.error)
    assert b"\x00" not in ack and _segment(ack, "MSA")[2] == "MSG\\X00\\"
    with pytest.raises(Hl7Refusal) as escaped:
        parse_report(oru.replace(b"MSG\x00", b"MSG1"), Hl7FieldMap())
    assert (escaped.value.error.error_code, escaped.value.error.location) == (102, "OBX^1^3")


def test_a_tab_is_still_taken():
    """Only the NUL is refused: other control characters PostgreSQL and SQLite both keep are left to the sender."""
    assert _parse(OrderMessage(family="N\tz").encoded("orm231")).order.patient_name.startswith("N\tz^")


def test_ack_v23_has_msa3_and_err1():
    msg = OrderMessage(control_id="C-23")
    refusal = _refusal(msg.message("orm23").replace("|ACC0001|", "||").encode("utf-8"))
    ack = build_ack(refusal.header, "AE", application="PACSFLOW", facility="HOSP", error=refusal.error)
    msh, msa, err = _segment(ack, "MSH", "utf-8"), _segment(ack, "MSA"), _segment(ack, "ERR")
    assert msh[2:6] == ["PACSFLOW", "HOSP", "RIS", "HOSP"] and msh[8] == "ACK^O01" and msh[11] == "2.3"
    assert msa[1:3] == ["AE", "C-23"] and "accession" in msa[3]
    assert err[1] == "OBR^1^18^101&Required field missing&HL70357"
    parsed = hl7.parse(ack.decode("utf-8"))  # an independent parser reads it
    assert str(parsed.segment("MSA")[2]) == "C-23"


def test_ack_v251_has_err2_err3_err4():
    refusal = _refusal(OrderMessage().message("omi251").replace("|19560412|", "|x|").encode("utf-8"))
    ack = build_ack(refusal.header, "AE", application="PACSFLOW", facility="HOSP", error=refusal.error)
    err = _segment(ack, "ERR")
    assert err[2:5] == ["PID^1^7", "102^Data type error^HL70357", "E"]
    assert _segment(ack, "MSH")[8] == "ACK^O23^ACK"


def test_ar_for_an_unsupported_version_quotes_the_control_id():
    refusal = _refusal(OrderMessage(control_id="C-24").message("orm23").replace("|P|2.3|", "|P|2.4|").encode())
    ack = build_ack(refusal.header, refusal.error.ack_code, application="A", facility="F", error=refusal.error)
    assert _segment(ack, "MSA")[1:3] == ["AR", "C-24"]
    assert _segment(ack, "ERR")[2:4] == ["MSH^1^12", "203^Unsupported version id^HL70357"]


# -- the handler: parse -> store -> ACK -------------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def handler(request, tmp_path):
    """The handler over an order store in a SQLite file or a fresh PostgreSQL database."""
    url = (f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite"
           else fresh_database(request.getfixturevalue("postgres_server")))
    spool = Spool(tmp_path / "spool", 0.999)
    store = OrderStore(spool, url)
    yield Hl7Handler(store, Hl7Listener(port=2575, max_message_bytes=4096)), store
    store.close()
    spool.close()


def _count(kind: str, ack: str) -> float:
    return metrics.REGISTRY.get_sample_value("pacsflow_hl7_messages_total", {"kind": kind, "ack": ack}) or 0.0


def test_handler_stores_then_acks_and_replays_duplicates(handler):
    h, store = handler
    before = _count("OMI^O23", "AA")
    data = OrderMessage(control_id="DUP-1").encoded("omi251")
    first = h.process(data)
    assert (first.ack_code, first.outcome, first.accession) == ("AA", "created", "ACC0001")
    again = h.process(data)
    assert (again.ack, again.outcome) == (first.ack, "duplicate")
    assert store.count() == 1
    assert _count("OMI^O23", "AA") - before == 2


def test_handler_answers_ae_for_an_unknown_order(handler):
    h, store = handler
    result = h.process(OrderMessage(control_id="XO-1", order_control="XO").encoded("orm23"))
    assert (result.ack_code, result.outcome, result.error_location) == ("AE", "rejected", "OBR^1^18")
    assert _segment(result.ack, "ERR")[1].startswith("OBR^1^18^204&")
    assert store.count() == 0
    again = h.process(OrderMessage(control_id="XO-1", order_control="XO").encoded("orm23"))
    assert (again.ack, again.outcome, again.error_location) == (result.ack, "duplicate", "OBR^1^18")
    assert "no order" in again.error_text


def test_handler_refuses_a_too_large_message_with_ae(handler):
    h, _store = handler
    head = OrderMessage(control_id="BIG-1").encoded("orm23")[:200]
    ack = h.refuse_too_large(head, 20 * 1024 * 1024)
    assert _segment(ack, "MSA")[1:3] == ["AE", "BIG-1"]
    assert "too large" in _segment(ack, "MSA")[3]


def test_mangled_messages_always_get_an_ack(handler):
    """Separators, line ends, NULs and stray bytes inserted or deleted at random (seeded): every message gets an ACK
    (never an exception), and exactly the orders answered "created" are in the store."""
    import random

    h, store = handler
    rnd = random.Random(8)
    bases = [OrderMessage(control_id=f"F{i}", accession=f"FA{i}").encoded(k)
             for i, k in enumerate(("orm23", "orm231", "omi251"))]
    codes, created = set(), 0
    for i in range(600):
        data = bytearray(rnd.choice(bases))
        data[data.index(b"|F") + 1:data.index(b"|F") + 1] = f"{i}-".encode()  # its own control ID
        for _ in range(rnd.randint(1, 6)):
            pos = rnd.randrange(len(data))
            roll = rnd.random()
            if roll < 0.4:
                data[pos] = rnd.choice(b"|^~\\&\r\nX0\x00\xff\xc3")
            elif roll < 0.7:
                del data[pos:pos + rnd.randint(1, 30)]
            else:
                data[pos:pos] = bytes(rnd.choice(b"|^~\\&\rX") for _ in range(rnd.randint(1, 5)))
        result = h.process(bytes(data))
        assert result.ack_code in ("AA", "AE", "AR") and b"MSA|" in result.ack
        codes.add(result.ack_code)
        created += result.outcome == "created"
    assert codes == {"AA", "AE", "AR"}
    assert store.count() == created > 0
