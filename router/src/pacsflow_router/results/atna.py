"""Audit chain records as DICOM audit messages (PS3.15 A.5, the IHE ATNA format) in RFC 5424 syslog messages.

Each record (:mod:`.chain`) becomes one ``AuditMessage`` that validates against the schema of PS3.15 A.5.1:
``EventIdentification`` (the event code of the record's kind, below), two ``ActiveParticipant`` (who acted, and
pacsflow itself), ``AuditSourceIdentification`` and ``ParticipantObjectIdentification`` for the subject (a study or
result key, a use case) and for the chain record itself, whose details carry the record's hash, the previous hash
and its canonical detail, so a collector holds everything needed to check the chain independently.

No patient data leaves: studies and results are named by their keys (SHA-256 hashes, a ``pacsflow`` code system,
not the DICOM "Study Instance UID" code), actors are key ids, reader identities, AE titles and addresses.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from xml.etree import ElementTree as ET

# kind -> (EventID (code, meaning), EventActionCode, EventTypeCode or None); PS3.16 CID 400 / 401 codes, DCM.
EVENTS: dict[str, tuple[tuple[str, str], str, tuple[str, str] | None]] = {
    "study-received": (("110104", "DICOM Instances Transferred"), "C", None),
    "ai-result": (("110103", "DICOM Instances Accessed"), "C", None),
    "result-shown": (("110103", "DICOM Instances Accessed"), "R", None),
    "feedback": (("110103", "DICOM Instances Accessed"), "U", None),
    "approval": (("110103", "DICOM Instances Accessed"), "U", None),
    "promotion": (("110113", "Security Alert"), "E", ("110131", "Software Configuration")),
    "login": (("110114", "User Authentication"), "E", ("110122", "Login")),
    "bad-key": (("110114", "User Authentication"), "E", ("110122", "Login")),
    "association-refused": (("110113", "Security Alert"), "E", ("110126", "Node Authentication")),
}
#: Syslog PRI: facility 10 (security/authorization), severity 5 (notice); RFC 5424 6.2.1.
PRI = 10 * 8 + 5
MSGID = "IHE+RFC-3881"
BOM = "\ufeff"


def _code(parent: ET.Element, tag: str, code: str, meaning: str, system: str = "DCM") -> None:
    ET.SubElement(parent, tag, {"csd-code": code, "codeSystemName": system, "originalText": meaning})


def _looks_like_address(value: str) -> bool:
    return bool(value) and all(c in "0123456789abcdefABCDEF.:" for c in value)


def audit_message(record: Mapping[str, Any], *, source_id: str) -> bytes:
    """The PS3.15 A.5 ``AuditMessage`` (UTF-8 XML, one line) of one audit chain record.

    Parameters
    ----------
    record : Mapping
        A row of ``audit_chain`` (:func:`.chain.records`).
    source_id : str
        AuditSourceID and pacsflow's own ActiveParticipant UserID.
    """
    (event_code, event_meaning), action, event_type = EVENTS[str(record["kind"])]
    failed = record["outcome"] != "success"
    root = ET.Element("AuditMessage")
    event = ET.SubElement(root, "EventIdentification", {
        "EventActionCode": action, "EventDateTime": str(record["at"]), "EventOutcomeIndicator": "4" if failed else "0"})
    _code(event, "EventID", event_code, event_meaning)
    if event_type is not None:
        _code(event, "EventTypeCode", *event_type)
    if failed:
        ET.SubElement(event, "EventOutcomeDescription").text = f"{record['kind']} refused"
    actor = str(record["actor"]) or "unknown"
    requestor = {"UserID": actor, "UserIsRequestor": "true"}
    if _looks_like_address(actor):
        requestor.update(NetworkAccessPointID=actor, NetworkAccessPointTypeCode="2")
    ET.SubElement(root, "ActiveParticipant", requestor)
    application = ET.SubElement(root, "ActiveParticipant", {"UserID": source_id, "UserIsRequestor": "false"})
    _code(application, "RoleIDCode", "110150", "Application")
    source = ET.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": source_id})
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server process
    if record["subject"]:
        subject = ET.SubElement(root, "ParticipantObjectIdentification", {
            "ParticipantObjectID": str(record["subject"]), "ParticipantObjectTypeCode": "2",
            "ParticipantObjectTypeCodeRole": "3" if record["kind"] != "promotion" else "4"})
        _code(subject, "ParticipantObjectIDTypeCode", "subject-key", "pacsflow study/result key or use case",
              system="pacsflow")
        ET.SubElement(subject, "ParticipantObjectName").text = str(record["kind"])
    entry = ET.SubElement(root, "ParticipantObjectIdentification", {
        "ParticipantObjectID": f"audit-chain:{record['id']}", "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "13"})
    _code(entry, "ParticipantObjectIDTypeCode", "audit-chain-record", "pacsflow audit chain record", system="pacsflow")
    ET.SubElement(entry, "ParticipantObjectName").text = str(record["kind"])
    for name in ("hash", "prev_hash", "detail"):
        ET.SubElement(entry, "ParticipantObjectDetail", {
            "type": name, "value": base64.b64encode(str(record[name]).encode()).decode()})
    encoded: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=False)
    return encoded


def syslog_frame(record: Mapping[str, Any], *, source_id: str, app_name: str = "pacsflow") -> bytes:
    """One RFC 5424 syslog message carrying :func:`audit_message`, octet-counted for TLS transport (RFC 5425 4.3:
    ``MSG-LEN SP SYSLOG-MSG``)."""
    header = f"<{PRI}>1 {record['at']} {source_id} {app_name} - {MSGID} - {BOM}".encode()
    message = header + audit_message(record, source_id=source_id)
    return str(len(message)).encode() + b" " + message
