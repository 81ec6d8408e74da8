"""Realistic HL7 v2 imaging orders for tests and benchmarks: ORM^O01 (v2.3, v2.3.1) and OMI^O23 (v2.5.1).

Built the way a RIS sends them under IHE Scheduled Workflow:

- ORM^O01: MSH, PID, PV1 (patient class, location), ORC (order control, placer/filler numbers, ORC-7.6 priority),
  OBR (OBR-4 procedure, OBR-18 accession, OBR-19 requested procedure ID, OBR-24 modality, OBR-27.6 priority,
  OBR-31 reason) and a ZDS segment whose ZDS-1 is the Study Instance UID.
- OMI^O23: the same patient and order segments, TQ1 (TQ1-9 priority) and IPC (accession, requested procedure ID,
  Study Instance UID, scheduled procedure step ID, modality, station AE title) instead of ZDS.

Text fields are escaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\``); :func:`encode` turns a message into the bytes of the
character set its MSH-18 names (``UNICODE UTF-8``, ``8859/1``, ``ASCII``). Every value here is made up.

Example::

    msg = OrderMessage(control_id="C1", accession="ACC1", patient_id="P1")
    data = encode(msg.orm_o01("2.3"), msg.charset)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

SEPARATORS = "|^~\\&"

#: MSH-18 value -> Python codec.
CHARSETS = {"": "ascii", "ASCII": "ascii", "8859/1": "latin-1", "UNICODE UTF-8": "utf-8"}


def escape(text: str) -> str:
    """Escape ``text`` for an HL7 v2 field with the standard separators (HL7 v2 2.7 section 2.7.4).

    The escape character goes first so that the sequences added afterwards are not escaped again.
    """
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\"))


def encode(message: str, charset: str = "") -> bytes:
    """The bytes of ``message`` in the character set an MSH-18 of ``charset`` names."""
    return message.encode(CHARSETS[charset])


def segments(message: str) -> list[str]:
    """The segments of an ER7 message (``\\r``, ``\\n`` or ``\\r\\n`` ends)."""
    return [s for s in message.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]


def field_of(message: str, location: str) -> str:
    """The raw (still escaped) value at ``SEG-n`` or ``SEG-n.c`` of the first such segment, '' if absent.

    MSH is numbered as HL7 numbers it (MSH-1 is the field separator); used by tests to read what they sent.
    """
    seg_name, _, rest = location.partition("-")
    num, _, comp = rest.partition(".")
    for seg in segments(message):
        parts = seg.split("|")
        if parts[0] != seg_name:
            continue
        index = int(num) - 1 if seg_name == "MSH" else int(num)
        if seg_name == "MSH" and index == 0:
            return "|"
        value = parts[index] if index < len(parts) else ""
        if comp:
            comps = value.split("~")[0].split("^")
            value = comps[int(comp) - 1] if int(comp) <= len(comps) else ""
        return value
    return ""


@dataclass
class OrderMessage:
    """One imaging order, renderable as ORM^O01 (v2.3 / v2.3.1) or OMI^O23 (v2.5.1).

    Defaults describe an emergency-department non-contrast head CT; names are non-ASCII on purpose.
    """

    control_id: str = "MSG00001"
    accession: str = "ACC0001"
    patient_id: str = "PID0001"
    order_control: str = "NW"
    placer_order_number: str = "PLC0001"
    filler_order_number: str = "FIL0001"
    requested_procedure_id: str = "RP0001"
    procedure_step_id: str = "SPS0001"
    study_uid: str = "1.2.826.0.1.3680043.8.498.10000000000000000000000000000000001"
    modality: str = "CT"
    procedure_code: str = "CTHEADWO"
    procedure_text: str = "CT head without contrast"
    procedure_scheme: str = "L"
    priority: str = "S"
    patient_class: str = "E"
    location: tuple[str, str, str] = ("ED", "R01", "B1")
    reason: str = "Fall & headache | GCS 13"
    family: str = "Núñez-Šimić"
    given: str = "José"
    birth_date: str = "19560412"
    sex: str = "M"
    station_ae_title: str = "CT_ED_1"
    scheduled_start: str = "20261130121500"
    sending_application: str = "RIS"
    sending_facility: str = "HOSP"
    receiving_application: str = "PACSFLOW"
    receiving_facility: str = "PACSFLOW"
    timestamp: str = "20261130120000"
    charset: str = "UNICODE UTF-8"
    """MSH-18: ``UNICODE UTF-8``, ``8859/1``, ``ASCII`` or '' (none: 7-bit ASCII)."""
    extra_segments: list[str] = field(default_factory=list)
    """Raw segments appended at the end (tests of unexpected structure)."""

    def replace(self, **changes: object) -> OrderMessage:
        """A copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # -- segments ------------------------------------------------------------------------------------------------

    def msh(self, message_type: str, version: str) -> str:
        fields = ["MSH", SEPARATORS[1:], self.sending_application, self.sending_facility,
                  self.receiving_application, self.receiving_facility, self.timestamp, "", message_type,
                  self.control_id, "P", version, "", "", "AL", "NE", "", self.charset]
        return "|".join(fields).rstrip("|")

    def pid(self) -> str:
        name = f"{escape(self.family)}^{escape(self.given)}"
        return f"PID|1||{escape(self.patient_id)}^^^HOSP^MR||{name}||{self.birth_date}|{self.sex}"

    def pv1(self) -> str:
        return f"PV1|1|{self.patient_class}|{'^'.join(escape(p) for p in self.location)}"

    def orc(self, with_priority: bool = True) -> str:
        timing = f"^^^{self.scheduled_start}^^{self.priority}" if with_priority else ""
        return (f"ORC|{self.order_control}|{escape(self.placer_order_number)}|{escape(self.filler_order_number)}"
                f"||SC||{timing}||{self.timestamp}")

    def obr(self, with_priority: bool = True) -> str:
        fields = [""] * 32
        fields[0] = "OBR"
        fields[1] = "1"
        fields[2] = escape(self.placer_order_number)
        fields[3] = escape(self.filler_order_number)
        fields[4] = f"{escape(self.procedure_code)}^{escape(self.procedure_text)}^{escape(self.procedure_scheme)}"
        fields[7] = self.scheduled_start
        fields[18] = escape(self.accession)
        fields[19] = escape(self.requested_procedure_id)
        fields[24] = escape(self.modality)
        if with_priority:
            fields[27] = f"^^^{self.scheduled_start}^^{self.priority}"
        fields[31] = f"^{escape(self.reason)}"
        return "|".join(fields).rstrip("|")

    def zds(self) -> str:
        return f"ZDS|{self.study_uid}^PACSFLOW^Application^DICOM"

    def tq1(self) -> str:
        return f"TQ1|1||||||{self.scheduled_start}||{self.priority}"

    def ipc(self) -> str:
        return (f"IPC|{escape(self.accession)}|{escape(self.requested_procedure_id)}|{self.study_uid}"
                f"|{escape(self.procedure_step_id)}|{escape(self.modality)}||||{escape(self.station_ae_title)}")

    # -- messages ------------------------------------------------------------------------------------------------

    def orm_o01(self, version: str = "2.3") -> str:
        """ORM^O01 in ``version`` (2.3 or 2.3.1), segments ended by ``\\r``."""
        if version not in ("2.3", "2.3.1"):
            raise ValueError(f"ORM^O01 is built for 2.3 and 2.3.1, not {version}")
        segs = [self.msh("ORM^O01", version), self.pid(), self.pv1(), self.orc(), self.obr(), self.zds(),
                *self.extra_segments]
        return "\r".join(segs) + "\r"

    def omi_o23(self) -> str:
        """OMI^O23 v2.5.1 (priority in TQ1-9, IHE identifiers in IPC), segments ended by ``\\r``."""
        segs = [self.msh("OMI^O23^OMI_O23", "2.5.1"), self.pid(), self.pv1(), self.orc(with_priority=False),
                self.tq1(), self.obr(with_priority=False), self.ipc(), *self.extra_segments]
        return "\r".join(segs) + "\r"

    def message(self, kind: str) -> str:
        """``kind``: ``orm23``, ``orm231`` or ``omi251``."""
        if kind == "orm23":
            return self.orm_o01("2.3")
        if kind == "orm231":
            return self.orm_o01("2.3.1")
        if kind == "omi251":
            return self.omi_o23()
        raise ValueError(f"unknown message kind {kind!r}: orm23, orm231 or omi251")

    def encoded(self, kind: str) -> bytes:
        """:meth:`message` as bytes in the MSH-18 character set."""
        return encode(self.message(kind), self.charset)
