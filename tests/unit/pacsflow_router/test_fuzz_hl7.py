"""Fuzzing the HL7 v2 parser (workflow/hl7.py) with hypothesis: raw bytes, structured ER7 with hostile field
contents, and mutations of the valid ORM^O01 / OMI^O23 / ORU^R01 messages the peers send.

The documented outcomes are the only allowed ones: ``parse_order`` gives a ParsedOrder or raises Hl7Refusal (an AE/AR
with its ERR), ``parse_report`` a ParsedReport or Hl7Refusal, ``is_report`` a bool. Anything else raised is a crash
(the listener would answer no ACK and the sender would resend forever). Every crasher found is in ``CRASHERS`` with its
input as bytes.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pacsflow_router.config import Hl7FieldMap
from pacsflow_router.workflow.hl7 import (
    Hl7Refusal,
    ParsedOrder,
    ParsedReport,
    build_ack,
    is_report,
    parse_order,
    parse_report,
)
from tests.peers.hl7msgs import OrderMessage
from tests.unit.pacsflow_router.fuzzing import FUZZ, keep_crasher

FIELD_MAP = Hl7FieldMap()
ORU = (b"MSH|^~\\&|RIS|HOSP|PACSFLOW|HOSP|20260101120000||ORU^R01|MSG0001|P|2.5.1\r"
       b"PID|1||PID1^^^HOSP^MR||DOE^JANE\rOBR|1|PLC1|FIL1|CTHEAD^CT Head||||||||||||||ACC1\r"
       b"OBX|1|CWE|ICH^Intracranial hemorrhage^L||Y||||||F\r")
SEEDS = [OrderMessage().encoded(kind) for kind in ("orm23", "orm231", "omi251")] + [ORU]
CHARSETS = [b"", b"ASCII", b"8859/1", b"UNICODE UTF-8", b"ISO IR87", b"GB 18030", b"UNICODE", b"\xff\xfe", b"8859/15"]

#: Inputs that once crashed the parser (regression tests; each was a hypothesis find).
CRASHERS: list[bytes] = []


def check(raw: bytes) -> None:
    """The parser's contract on ``raw``: a documented outcome, nothing else."""
    try:
        _check(raw)
    except BaseException:
        keep_crasher("hl7", raw)
        raise


def _check(raw: bytes) -> None:
    try:
        assert isinstance(parse_order(raw, FIELD_MAP), ParsedOrder)
    except Hl7Refusal as refusal:
        assert refusal.error.ack_code in ("AE", "AR")
        # The listener answers a refusal with an ACK built from whatever MSH was read: that must not crash either.
        ack = build_ack(refusal.header, refusal.error.ack_code, application="PACSFLOW", facility="HOSP",
                        error=refusal.error)
        assert ack.startswith(b"MSH|")
    try:
        assert isinstance(parse_report(raw, FIELD_MAP), ParsedReport)
    except Hl7Refusal as refusal:
        assert refusal.error.ack_code in ("AE", "AR")
    assert isinstance(is_report(raw), bool)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "charset", "segment", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[min(at, len(data) - 1)] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"\r", b"\n", b"\\X0D\\", b"\\H\\",
                                                b"\\E\\", b"\\Xzz\\", b"\x00", b"\xc3", b"\xe2\x80", b"\\", b"MSH|"]))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif op == "charset":
            fields = bytes(data).split(b"\r", 1)
            msh = fields[0].split(b"|")
            while len(msh) < 18:
                msh.append(b"")
            msh[17] = draw(st.sampled_from(CHARSETS))
            data = bytearray(b"|".join(msh) + (b"\r" + fields[1] if len(fields) > 1 else b""))
        elif op == "segment":
            segments = bytes(data).split(b"\r")
            data = bytearray(b"\r".join(segments + [draw(st.sampled_from(segments))]))
        elif op == "truncate":
            del data[at:]
    return bytes(data)


FIELD_TEXT = st.text(alphabet=st.sampled_from(list("AZaz09 .-|^~\\&\r\n\x00\x7fÄé\u0394\u4e2d\ufffd")), max_size=12)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    encoding = draw(st.sampled_from(["^~\\&", "^~\\&#", "^~\\", "^^\\&", ""]))
    message_type = draw(st.sampled_from(["ORM^O01", "OMI^O23", "ORU^R01", "ADT^A01", "", "ORM", "ORU^R01^ORU_R01"]))
    version = draw(st.sampled_from(["2.3", "2.3.1", "2.5.1", "2.9", "", "x"]))
    msh = f"MSH|{encoding}|A|B|C|D|20260101||{message_type}|{draw(FIELD_TEXT)}|P|{version}"
    segments = [msh]
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(["PID", "PV1", "ORC", "OBR", "OBX", "TQ1", "ZDS", "NTE", "IPC", "X", ""]))
        fields = draw(st.lists(FIELD_TEXT, max_size=25))
        segments.append("|".join([name, *fields]))
    codec = draw(st.sampled_from(["ascii", "latin-1", "utf-8"]))
    return "\r".join(segments).encode(codec, errors="replace")


@FUZZ
@given(st.binary(max_size=512))
def test_raw_bytes(raw):
    check(raw)


@FUZZ
@given(mutated())
def test_mutated_valid_messages(raw):
    check(raw)


@FUZZ
@given(structured())
def test_structured_messages(raw):
    check(raw)


@pytest.mark.parametrize("raw", CRASHERS or [pytest.param(b"", id="none-yet")])
def test_crashers_stay_fixed(raw):
    check(raw)


def test_the_seeds_parse():
    """The fuzzer starts from messages the parser accepts (else the mutations test only the refusal paths)."""
    for raw in SEEDS[:3]:
        assert isinstance(parse_order(raw, FIELD_MAP), ParsedOrder)
    assert isinstance(parse_report(ORU, FIELD_MAP), ParsedReport)
