"""What a critical triage result sends out: HL7 v2 order update and ORU alert, webhook JSON (pure builders, no I/O).

Three messages, each built from one :class:`CriticalResult`:

- the **order update** for the RIS worklist: ORM^O01 (HL7 v2.3 / v2.3.1) or OMI^O23 (v2.5.1) with ORC-1 ``XO``, the
  priority raised to ``S`` (STAT: ORC-7.6 and OBR-27.6 in an ORM, TQ1-9 in an OMI) and the procedure text of OBR-4
  prefixed with :data:`PREFIX`, for the order's accession, placer and filler numbers and patient (IHE Scheduled
  Workflow: OBR-18 accession, OBR-19 requested procedure ID, ZDS-1 / IPC-3 Study Instance UID);
- the **alert** ORU^R01 for an alerting system or EHR: ORC ``RE``, OBR for the study with result status ``P`` and
  one OBX row per fact (the coded finding, the suspicion score, the model name and version, the SR's SOP Instance
  UID), every OBX-11 ``P``: preliminary, an unverified AI result;
- the **webhook** body: deterministic JSON (sorted keys, no timestamp; the sender puts the time in a header), signed
  with :func:`signature` over the exact bytes sent.

A repeat is the same message: MSH-10 (:func:`control_id`) and the webhook's idempotency key
(:func:`idempotency_key`) are hashes of (Study Instance UID, use case, message kind), so the durable outbox stores a
re-run's message once and a receiver that saw the key drops a resend. Values are escaped (``\\F\\ \\S\\ \\T\\ \\R\\
\\E\\``, line breaks as ``\\X0D\\``/``\\X0A\\``); a message with non-ASCII text says ``UNICODE UTF-8`` in MSH-18 and is
encoded as UTF-8.

Hand-written rather than built with python-hl7: python-hl7 parses and escapes but has no message builder; the tests
parse every message back with python-hl7 (and the HAPI peer validates them).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Literal, Protocol

from ..config import Hl7Destination, Hl7MessageKind
from ..domain import Order

#: Prefix of the procedure description in an order update (the RIS worklist shows it).
PREFIX = "[AI: Critical Finding Suspected] "
#: Coding system of pacsflow's own OBX observation identifiers (HL7 "99zzz" local coding system).
LOCAL = "99PACSFLOW"
#: DICOM coding scheme designator -> HL7 coding system (HL7 table 0396); others are passed as they are.
CODING_SYSTEMS = {"SCT": "SCT", "SRT": "SNM", "LN": "LN", "DCM": "DCM", "RADLEX": "RADLEX"}
#: Message kinds with their own idempotency key (HL7 kinds from the routing config, plus the webhook).
MessageKind = Literal["order-update", "alert", "webhook"]

_SEPARATORS = "|^~\\&"


class _Concept(Protocol):
    @property
    def value(self) -> str: ...
    @property
    def scheme(self) -> str: ...
    @property
    def meaning(self) -> str: ...


@dataclass(frozen=True)
class Coded:
    """A coded concept: code value, coding scheme designator (DICOM's, e.g. ``SCT``), meaning."""

    value: str
    scheme: str
    meaning: str

    @classmethod
    def of(cls, concept: _Concept) -> Coded:
        """From any coded concept (e.g. the model manifest's ``CodedConcept``)."""
        return cls(concept.value, concept.scheme, concept.meaning)


@dataclass(frozen=True)
class CriticalResult:
    """Everything the outgoing messages state about one critical result (patient data: never logged)."""

    study_uid: str
    use_case: str
    mode: str
    probability: float
    finding: Coded
    """The suspected pathology (the model manifest's finding type)."""
    procedure: Coded
    """The procedure reported (the manifest's); OBR-4 of the alert when the order has no procedure code."""
    model_name: str
    model_version: str
    """The model's version string (the SR's Algorithm Version)."""
    sr_sop_uid: str
    """The SR's SOP Instance UID ('' when the use case sends no SR)."""
    order: Order
    """The study's order; for a study without one, an order-like record from the images' header (accession may be
    empty)."""


@dataclass(frozen=True)
class Sender:
    """MSH-3 / MSH-4: who pacsflow says it is."""

    application: str = "PACSFLOW"
    facility: str = "PACSFLOW"


# -- identifiers -------------------------------------------------------------------------------------------------------
def _digest(study_uid: str, use_case: str, kind: str) -> str:
    return hashlib.sha256(f"pacsflow\0{study_uid}\0{use_case}\0{kind}".encode()).hexdigest()


def control_id(study_uid: str, use_case: str, kind: MessageKind) -> str:
    """MSH-10 of a message: 20 hex characters derived from (study, use case, kind), the same on every repeat."""
    return _digest(study_uid, use_case, kind)[:20]


def idempotency_key(study_uid: str, use_case: str, kind: MessageKind = "webhook") -> str:
    """The webhook's ``Idempotency-Key`` (and ``idempotencyKey``): 32 hex characters from (study, use case, kind)."""
    return _digest(study_uid, use_case, kind)[:32]


# -- ER7 ---------------------------------------------------------------------------------------------------------------
def escape(value: str) -> str:
    """Escape one value for an ER7 field with the standard separators (HL7 v2.5.1 section 2.7.4).

    The escape character goes first, so the sequences added afterwards are not escaped again; CR and LF (which would
    end the segment) become the hexadecimal escapes ``\\X0D\\`` and ``\\X0A\\``.
    """
    return (value.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\").replace("&", "\\T\\")
            .replace("~", "\\R\\").replace("\r", "\\X0D\\").replace("\n", "\\X0A\\"))


def _components(*values: str) -> str:
    """One field of escaped components, without trailing empty ones."""
    return "^".join(escape(v) for v in values).rstrip("^")


def _segment(name: str, *fields: str) -> str:
    """A segment of already-escaped fields (field 1 first), without trailing empty fields."""
    return "|".join((name, *fields)).rstrip("|")


def _coded(concept: Coded, text: str | None = None) -> str:
    return _components(concept.value, concept.meaning if text is None else text,
                       CODING_SYSTEMS.get(concept.scheme, concept.scheme))


def _timestamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def _pn(name: str) -> str:
    """A DICOM PN (``Family^Given^Middle^Prefix^Suffix``, first component group) as an HL7 XPN."""
    return _components(*name.split("=")[0].split("^")) if name else ""


def _msh(destination: Hl7Destination, sender: Sender, at: dt.datetime, message_type: tuple[str, str, str],
         msh10: str) -> str:
    # MSH-9.3 (message structure) exists from v2.3.1 on.
    kind = message_type if destination.version != "2.3" else message_type[:2]
    return _segment("MSH", _SEPARATORS[1:], escape(sender.application), escape(sender.facility),
                    escape(destination.receiving_application), escape(destination.receiving_facility),
                    _timestamp(at), "", "^".join(kind), msh10, "P", destination.version)


def _pid(order: Order) -> str:
    return _segment("PID", "1", "", _components(order.patient_id), "", _pn(order.patient_name), "",
                    escape(order.patient_birth_date), escape(order.patient_sex))


def _pv1(order: Order) -> list[str]:
    if not (order.patient_class or order.location):
        return []
    return [_segment("PV1", "1", escape(order.patient_class or "U"), escape(order.location))]


def _finish(segments: list[str]) -> bytes:
    """Join segments (CR ends each) and encode; non-ASCII text puts ``UNICODE UTF-8`` in MSH-18."""
    text = "\r".join(segments) + "\r"
    if not text.isascii():
        msh, rest = text.split("\r", 1)
        fields = msh.split("|")
        fields += [""] * (18 - len(fields))
        fields[17] = "UNICODE UTF-8"  # MSH-18 (the list starts at MSH-0, the segment name; MSH-1 is the separator)
        text = "|".join(fields) + "\r" + rest
    return text.encode("utf-8")


def order_update(result: CriticalResult, destination: Hl7Destination, *, sender: Sender = Sender(),
                 at: dt.datetime) -> bytes:
    """The RIS order update: ORM^O01 (v2.3, v2.3.1) or OMI^O23 (v2.5.1), ORC-1 XO, priority S, prefixed OBR-4 text.

    Parameters
    ----------
    result : CriticalResult
        The critical result and its order.
    destination : config.Hl7Destination
        Its ``version`` chooses the message; MSH-5/6 come from it.
    sender : Sender
        MSH-3/4.
    at : datetime
        MSH-7 and ORC-9 (timezone-aware).

    Returns
    -------
    bytes
        The ER7 message, segments ended by CR, UTF-8 (ASCII unless a value is not).
    """
    order = result.order
    msh10 = control_id(result.study_uid, result.use_case, "order-update")
    stamp = _timestamp(at)
    description = PREFIX + (order.procedure_description or result.procedure.meaning)
    code = order.procedure_code or result.procedure.value
    scheme = order.procedure_scheme if order.procedure_code else CODING_SYSTEMS.get(result.procedure.scheme,
                                                                                      result.procedure.scheme)
    service = _components(code, description, scheme)
    placer, filler = escape(order.placer_order_number), escape(order.filler_order_number)
    omi = destination.version == "2.5.1"
    segments = [
        _msh(destination, sender, at, ("OMI", "O23", "OMI_O23") if omi else ("ORM", "O01", "ORM_O01"), msh10),
        _pid(order),
        *_pv1(order),
        # ORC-7 (quantity/timing) is the ORM's priority; an OMI carries it in TQ1-9 instead.
        _segment("ORC", "XO", placer, filler, "", "", "", "" if omi else "^^^^^S", "", stamp),
    ]
    if omi:
        segments.append(_segment("TQ1", "1", "", "", "", "", "", "", "", "S"))
    obr = ["1", placer, filler, service, *[""] * 13,  # OBR-1..17
           escape(order.accession), escape(order.requested_procedure_id), "", "", "", "",  # OBR-18..23
           escape(order.modality), "", "", "" if omi else "^^^^^S",  # OBR-24..27 (27.6: the ORM's priority)
           "", "", "", escape(order.reason)]  # OBR-28..31
    segments.append(_segment("OBR", *obr))
    if omi:
        # IPC-1..4 are required: accession, requested procedure ID, Study Instance UID, scheduled procedure step ID.
        segments.append(_segment("IPC", escape(order.accession), escape(order.requested_procedure_id),
                                 escape(result.study_uid), escape(order.requested_procedure_id or "1"),
                                 escape(order.modality)))
    else:
        # IHE Scheduled Workflow ZDS-1: Study Instance UID^Application^Application^DICOM.
        segments.append(_segment("ZDS", _components(result.study_uid, sender.application, "Application", "DICOM")))
    return _finish(segments)


def alert(result: CriticalResult, destination: Hl7Destination, *, sender: Sender = Sender(),
          at: dt.datetime) -> bytes:
    """The ORU^R01 alert: OBR for the study (result status P) and one OBX per fact, each OBX-11 P.

    OBX rows (OBX-3 in the local coding system :data:`LOCAL`): ``finding`` (CWE in v2.5.1, CE before: the coded
    suspected pathology, OBX-8 ``A``), ``score`` (NM, the suspicion score), ``model`` and ``model-version`` (ST),
    ``sr-uid`` (ST, the SR's SOP Instance UID; absent when no SR was sent).

    Parameters and return value as :func:`order_update`.
    """
    order = result.order
    msh10 = control_id(result.study_uid, result.use_case, "alert")
    stamp = _timestamp(at)
    coded_type = "CWE" if destination.version == "2.5.1" else "CE"
    if order.procedure_code:
        service = _components(order.procedure_code, order.procedure_description, order.procedure_scheme)
    else:
        service = _coded(result.procedure)
    placer, filler = escape(order.placer_order_number), escape(order.filler_order_number)
    structure = ("ORU", "R01", "ORU_R01")
    rows: list[tuple[str, str, str, str]] = [
        (coded_type, _components("finding", "AI suspected finding", LOCAL), _coded(result.finding), "A"),
        ("NM", _components("score", "AI suspicion score", LOCAL), f"{result.probability:.4f}", ""),
        ("ST", _components("model", "AI model name", LOCAL), escape(result.model_name), ""),
        ("ST", _components("model-version", "AI model version", LOCAL), escape(result.model_version), ""),
    ]
    if result.sr_sop_uid:
        rows.append(("ST", _components("sr-uid", "AI report SOP Instance UID", LOCAL), escape(result.sr_sop_uid), ""))
    segments = [
        _msh(destination, sender, at, structure, msh10),
        _pid(order),
        *_pv1(order),
        _segment("ORC", "RE", placer, filler),
        _segment("OBR", "1", placer, filler, service, "", "", stamp, *[""] * 10, escape(order.accession),
                 escape(order.requested_procedure_id), "", "", stamp, "", escape(order.modality), "P"),
    ]
    for i, (value_type, identifier, value, flag) in enumerate(rows, start=1):
        segments.append(_segment("OBX", str(i), value_type, identifier, "1", value, "", "", flag, "", "", "P",
                                 "", "", stamp))
    return _finish(segments)


def hl7_message(kind: Hl7MessageKind, result: CriticalResult, destination: Hl7Destination, *,
                sender: Sender = Sender(), at: dt.datetime) -> tuple[str, bytes]:
    """``(MSH-10, message)`` for a configured message kind (``order-update`` or ``alert``).

    Raises
    ------
    ValueError
        For ``draft-report``: that message states a reader's accepted draft (:func:`draft_report`), not the finding.
    """
    if kind == "draft-report":
        raise ValueError("draft-report is sent after a reader accepts the result: build it with draft_report()")
    build = order_update if kind == "order-update" else alert
    return control_id(result.study_uid, result.use_case, kind), build(result, destination, sender=sender, at=at)


def draft_control_id(study_uid: str, use_case: str, revision: int) -> str:
    """MSH-10 of a result revision's draft-report ORU (an amendment's accepted draft is a message of its own)."""
    return _digest(study_uid, use_case, f"draft-report\0{revision}")[:20]


def draft_report(study_uid: str, use_case: str, revision: int, text: str, order: Order, destination: Hl7Destination,
                 *, sender: Sender = Sender(), at: dt.datetime) -> tuple[str, bytes]:
    """The accepted draft report as ORU^R01: OBR result status P, one TX OBX per line of text, each OBX-11 P.

    Parameters
    ----------
    study_uid, use_case, revision :
        Which result revision the draft states (MSH-10, :func:`draft_control_id`).
    text : str
        The draft as pacsflow-api rendered it for the reader who accepted it (headed unverified).
    order : domain.Order
        The study's order (or an order-like record of the result's patient and accession).
    destination, sender, at :
        As :func:`order_update`.

    Returns
    -------
    tuple
        ``(MSH-10, message)``.
    """
    msh10 = draft_control_id(study_uid, use_case, revision)
    stamp = _timestamp(at)
    if order.procedure_code:
        service = _components(order.procedure_code, order.procedure_description, order.procedure_scheme)
    else:
        service = _components("", order.procedure_description)
    placer, filler = escape(order.placer_order_number), escape(order.filler_order_number)
    segments = [
        _msh(destination, sender, at, ("ORU", "R01", "ORU_R01"), msh10),
        _pid(order),
        *_pv1(order),
        _segment("ORC", "RE", placer, filler),
        _segment("OBR", "1", placer, filler, service, "", "", stamp, *[""] * 10, escape(order.accession),
                 escape(order.requested_procedure_id), "", "", stamp, "", escape(order.modality), "P"),
    ]
    identifier = _components("draft-report", "AI draft report (unverified)", LOCAL)
    for i, line in enumerate(text.splitlines() or [""], start=1):
        segments.append(_segment("OBX", str(i), "TX", identifier, "1", escape(line), "", "", "", "", "", "P",
                                 "", "", stamp))
    return msh10, _finish(segments)


# -- webhook -----------------------------------------------------------------------------------------------------------
def webhook_body(result: CriticalResult) -> bytes:
    """The webhook's JSON body: the same bytes for the same result (sorted keys, no time), UTF-8.

    Fields: ``criticalFindingFlag``, ``suspectedPathology`` {``code``, ``scheme``, ``meaning``}, ``suspicionScore``,
    ``accession``, ``studyInstanceUid``, ``useCase``, ``mode``, ``model`` {``name``, ``version``},
    ``srSopInstanceUid`` (null without an SR), ``idempotencyKey``.
    """
    body = {
        "criticalFindingFlag": True,
        "suspectedPathology": {"code": result.finding.value, "scheme": result.finding.scheme,
                               "meaning": result.finding.meaning},
        "suspicionScore": round(result.probability, 6),
        "accession": result.order.accession,
        "studyInstanceUid": result.study_uid,
        "useCase": result.use_case,
        "mode": result.mode,
        "model": {"name": result.model_name, "version": result.model_version},
        "srSopInstanceUid": result.sr_sop_uid or None,
        "idempotencyKey": idempotency_key(result.study_uid, result.use_case),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signature(body: bytes, key: bytes) -> str:
    """``X-Pacsflow-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
