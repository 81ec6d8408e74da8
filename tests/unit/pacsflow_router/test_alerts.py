"""workflow/alerts.py: the order update, the ORU alert and the webhook body, parsed back with python-hl7 / json."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import hmac
import json

import hl7
import pytest

from pacsflow_router.config import Hl7Destination
from pacsflow_router.domain import Order
from pacsflow_router.workflow import alerts

AT = dt.datetime(2026, 11, 30, 13, 5, 7, tzinfo=dt.UTC)
ORDER = Order(
    accession="ACC-1001", patient_id="PID-77", placer_order_number="PL-5", filler_order_number="FI-9",
    study_uid="1.2.826.0.1.3680043.8.498.1", requested_procedure_id="RP-3", modality="CT",
    procedure_code="CTHEADWO", procedure_scheme="L", procedure_description="CT head without contrast",
    priority="R", patient_class="E", location="ED^BAY4", patient_name="Doe^Jane", patient_birth_date="19700101",
    patient_sex="F",
)
RESULT = alerts.CriticalResult(
    study_uid=ORDER.study_uid, use_case="ich-head-ct", mode="triage", probability=0.9312,
    finding=alerts.Coded("1386000", "SCT", "Intracranial hemorrhage"),
    procedure=alerts.Coded("303653007", "SCT", "Computed tomography of head"),
    model_name="ich_detector", model_version="2.0.1", sr_sop_uid="1.2.826.0.1.3680043.8.498.99", order=ORDER,
)


def _dest(version: str) -> Hl7Destination:
    return Hl7Destination(name="ris", host="127.0.0.1", port=2575, version=version,  # type: ignore[arg-type]
                          receiving_application="RIS", receiving_facility="HOSP")


def _parse(data: bytes) -> hl7.Message:
    text = data.decode("utf-8")
    assert text.endswith("\r") and "\n" not in text, "segments end with CR only"
    return hl7.parse(text)


def _field(message: hl7.Message, location: str) -> str:
    """``SEG-n`` or ``SEG-n.c`` of the first such segment, unescaped (python-hl7 numbers MSH as HL7 does)."""
    name, _, rest = location.partition("-")
    num, _, comp = rest.partition(".")
    seg = message.segment(name)
    value = seg(int(num)) if not comp else seg(int(num))(1)(int(comp))
    return message.unescape(str(value))


@pytest.mark.parametrize("version,structure,trigger", [("2.3", "ORM^O01", "O01"), ("2.3.1", "ORM^O01^ORM_O01", "O01"),
                                                       ("2.5.1", "OMI^O23^OMI_O23", "O23")])
def test_order_update_raises_the_priority_and_prefixes_the_procedure(version, structure, trigger):
    msg = _parse(alerts.order_update(RESULT, _dest(version), at=AT))
    assert str(msg.segment("MSH")(9)) == structure
    assert _field(msg, "MSH-12") == version
    assert _field(msg, "MSH-5") == "RIS" and _field(msg, "MSH-6") == "HOSP"
    assert _field(msg, "MSH-10") == alerts.control_id(RESULT.study_uid, RESULT.use_case, "order-update")
    assert _field(msg, "ORC-1") == "XO"
    assert _field(msg, "ORC-2") == "PL-5" and _field(msg, "ORC-3") == "FI-9"
    assert _field(msg, "OBR-4.1") == "CTHEADWO"
    assert _field(msg, "OBR-4.2") == "[AI: Critical Finding Suspected] CT head without contrast"
    assert _field(msg, "OBR-18") == "ACC-1001" and _field(msg, "OBR-19") == "RP-3"
    assert _field(msg, "OBR-24") == "CT"
    assert _field(msg, "PID-3") == "PID-77"
    assert _field(msg, "PID-5.1") == "Doe" and _field(msg, "PID-5.2") == "Jane"
    assert _field(msg, "PV1-2") == "E"
    assert _field(msg, "PV1-3") == "ED^BAY4", "a ^ inside a value is escaped, not a component separator"
    if trigger == "O01":
        assert _field(msg, "ORC-7.6") == "S" and _field(msg, "OBR-27.6") == "S"
        assert _field(msg, "ZDS-1.1") == ORDER.study_uid
    else:
        assert _field(msg, "TQ1-9") == "S"
        assert [_field(msg, f"IPC-{i}") for i in (1, 2, 3, 5)] == ["ACC-1001", "RP-3", ORDER.study_uid, "CT"]
        assert _field(msg, "IPC-4"), "IPC-4 (scheduled procedure step ID) is required"


@pytest.mark.parametrize("version,coded", [("2.3", "CE"), ("2.5.1", "CWE")])
def test_alert_has_one_obx_per_fact_all_preliminary(version, coded):
    msg = _parse(alerts.alert(RESULT, _dest(version), at=AT))
    assert str(msg.segment("MSH")(9)).startswith("ORU^R01")
    assert _field(msg, "MSH-10") == alerts.control_id(RESULT.study_uid, RESULT.use_case, "alert")
    assert _field(msg, "OBR-18") == "ACC-1001" and _field(msg, "OBR-25") == "P"
    obx = {str(seg(3)(1)(1)): seg for seg in msg.segments("OBX")}
    assert set(obx) == {"finding", "score", "model", "model-version", "sr-uid"}
    finding = obx["finding"]
    assert str(finding(2)) == coded
    assert [str(finding(5)(1)(i)) for i in (1, 2, 3)] == ["1386000", "Intracranial hemorrhage", "SCT"]
    assert str(finding(8)) == "A"
    assert str(obx["score"](2)) == "NM" and float(str(obx["score"](5))) == pytest.approx(0.9312)
    assert str(obx["model"](5)) == "ich_detector" and str(obx["model-version"](5)) == "2.0.1"
    assert str(obx["sr-uid"](5)) == RESULT.sr_sop_uid
    assert {str(seg(11)) for seg in obx.values()} == {"P"}, "unverified AI: every OBX is preliminary"
    assert [int(str(seg(1))) for seg in msg.segments("OBX")] == [1, 2, 3, 4, 5]


def test_a_study_without_order_or_sr_still_gets_an_alert_with_the_procedure_from_the_manifest():
    bare = dataclasses.replace(RESULT, sr_sop_uid="", order=Order(accession="", patient_id="PID-77"))
    msg = _parse(alerts.alert(bare, _dest("2.5.1"), at=AT))
    assert _field(msg, "OBR-4.1") == "303653007" and _field(msg, "OBR-4.3") == "SCT"
    assert _field(msg, "OBR-18") == ""
    assert "sr-uid" not in {str(seg(3)(1)(1)) for seg in msg.segments("OBX")}
    body = json.loads(alerts.webhook_body(bare))
    assert body["accession"] == "" and body["srSopInstanceUid"] is None


def test_every_separator_in_a_value_is_escaped_and_round_trips():
    nasty = "A|B^C&D~E\\F\r\nG"
    order = dataclasses.replace(ORDER, procedure_description=nasty, accession="X|Y", patient_name="O'Neil^Ann")
    data = alerts.order_update(dataclasses.replace(RESULT, order=order), _dest("2.5.1"), at=AT)
    assert b"\\F\\" in data and b"\\S\\" in data and b"\\T\\" in data and b"\\R\\" in data and b"\\E\\" in data
    msg = _parse(data)
    assert len(msg.segments("OBR")) == 1
    assert _field(msg, "OBR-4.2") == alerts.PREFIX + nasty, "python-hl7 decodes every escape back, \\X0D\\ too"
    assert _field(msg, "OBR-18") == "X|Y" and _field(msg, "IPC-1") == "X|Y"
    assert alerts.escape("\r\n") == "\\X0D\\\\X0A\\", "line breaks must not end the segment"


def test_msh_18_says_utf8_only_when_a_value_is_not_ascii():
    plain = _parse(alerts.alert(RESULT, _dest("2.5.1"), at=AT))
    assert len(plain.segment("MSH")) <= 18 or _field(plain, "MSH-18") == ""
    accented = dataclasses.replace(RESULT, order=dataclasses.replace(ORDER, patient_name="Müller^Zoë"))
    data = alerts.alert(accented, _dest("2.5.1"), at=AT)
    msg = _parse(data)
    assert _field(msg, "MSH-18") == "UNICODE UTF-8"
    assert _field(msg, "PID-5.1") == "Müller" and "Müller".encode() in data


def test_control_ids_are_deterministic_distinct_per_kind_and_fit_msh_10():
    ids = {kind: alerts.control_id(RESULT.study_uid, RESULT.use_case, kind)
           for kind in ("order-update", "alert", "webhook")}
    assert len(set(ids.values())) == 3 and all(len(v) <= 20 for v in ids.values())
    assert alerts.control_id(RESULT.study_uid, RESULT.use_case, "alert") == ids["alert"]
    assert alerts.control_id(RESULT.study_uid, "other-use-case", "alert") != ids["alert"]
    # The same result built twice (a re-run after a crash, a later clock): the same MSH-10.
    later = AT + dt.timedelta(minutes=5)
    assert _field(_parse(alerts.alert(RESULT, _dest("2.3"), at=later)), "MSH-10") == ids["alert"]
    assert alerts.hl7_message("alert", RESULT, _dest("2.3"), at=AT)[0] == ids["alert"]


def test_webhook_body_is_deterministic_complete_and_signed():
    body = alerts.webhook_body(RESULT)
    assert body == alerts.webhook_body(dataclasses.replace(RESULT))
    data = json.loads(body)
    assert data == {
        "criticalFindingFlag": True,
        "suspectedPathology": {"code": "1386000", "scheme": "SCT", "meaning": "Intracranial hemorrhage"},
        "suspicionScore": 0.9312,
        "accession": "ACC-1001",
        "studyInstanceUid": ORDER.study_uid,
        "useCase": "ich-head-ct",
        "mode": "triage",
        "model": {"name": "ich_detector", "version": "2.0.1"},
        "srSopInstanceUid": RESULT.sr_sop_uid,
        "idempotencyKey": alerts.idempotency_key(ORDER.study_uid, "ich-head-ct"),
    }
    assert "sentAt" not in data
    expected = hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    assert alerts.signature(body, b"k3y") == f"sha256={expected}"
    assert alerts.signature(body, b"other") != alerts.signature(body, b"k3y")
