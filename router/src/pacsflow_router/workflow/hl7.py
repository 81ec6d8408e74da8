"""HL7 v2 orders in: ER7 bytes -> :class:`ParsedOrder`, and the ACK that answers them (pure, no I/O).

Accepted: ORM^O01 (v2.3, v2.3.1; also v2.5.1, where ORM still exists) and OMI^O23 (v2.5.1), order control NW, XO,
CA, SC, DC. Fields are read where :class:`~pacsflow_router.config.Hl7FieldMap` says (IHE Scheduled Workflow by
default). A few fields the map does not cover have fixed places: scheduled start (TQ1-7, ORC-7.4, OBR-27.4, OBR-36),
station AE title (IPC-9), procedure description (OBR-4.2), patient name/birth date/sex (PID-5/7/8), order status
for SC (ORC-5).

Steps, each with its own refusal:

1. The MSH is read from the raw bytes: no MSH, or encoding characters that are not four distinct non-alphanumeric
   characters -> AE (100 / 102).
2. The bytes are decoded by MSH-18 (``ASCII``, ``8859/1``..``8859/9``, ``8859/15``, ``UNICODE UTF-8``; empty:
   ASCII, tolerating UTF-8); bytes the character set cannot hold -> AE 102 at MSH-18, an unknown one -> AE 103.
3. ``\\r``, ``\\n`` and ``\\r\\n`` all end segments; python-hl7 parses the tree.
4. MSH-12 not 2.3/2.3.1/2.5.1 -> AR 203; MSH-9 not an accepted type -> AR 200; a required field missing -> AE 101;
   a date of the wrong form -> AE 102; each ERR names the field (``OBR^1^18``).
5. Values are unescaped here (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\X..\\, \\.br\\): python-hl7's own unescape logs
   the field value on a bad sequence (patient data in logs) and reads \\X..\\ bytes as Latin-1 code points whatever
   MSH-18 says, so a UTF-8 ``\\XC3A9\\`` would become two characters.

A NUL (U+0000) is no character of HL7 v2 text (ST/TX/FT/ID hold displayable characters; no character set of table
0211 gives it a meaning), and neither SQL store could keep it the same way (PostgreSQL refuses it in text, SQLite
cuts some readers off at it). Anywhere in the message, raw or as ``\\X00\\`` in a field that is read, it is a data type
error: AE 102 with the ERR naming the field, before anything is stored.

Error texts name fields, never their values.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass

import hl7

from ..config import Hl7FieldMap
from ..domain import Order
from ..errors import Hl7Error, Hl7MessageError, Hl7UnsupportedError

#: Accepted (message type, version) pairs.
SUPPORTED = {("ORM^O01", "2.3"), ("ORM^O01", "2.3.1"), ("ORM^O01", "2.5.1"), ("OMI^O23", "2.5.1")}
SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.5.1")
#: MSH-18 (HL7 table 0211) -> Python codec.
CHARSETS = {"ASCII": "ascii", "UNICODE UTF-8": "utf-8", "UTF-8": "utf-8", "8859/15": "iso8859-15",
            **{f"8859/{n}": f"iso8859-{n}" for n in range(1, 10)}}
#: ORC-5 order status (HL7 table 0038) -> order store status, for order control SC.
ORDER_STATUS = {"SC": "scheduled", "HD": "scheduled", "IP": "in-progress", "A": "in-progress",
                "CM": "completed", "CA": "cancelled", "DC": "discontinued"}
#: HL7 table 0357 texts for ERR-3.
CONDITION_TEXT = {0: "Message accepted", 100: "Segment sequence error", 101: "Required field missing",
                  102: "Data type error", 103: "Table value not found", 200: "Unsupported message type",
                  203: "Unsupported version id", 204: "Unknown key identifier", 207: "Application internal error"}
_HL7_TS = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,4})?)?)?)?)?)?([+-]\d{4})?")
_SEX = {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O", "U": ""}
_DEFAULT_ENCODING = "^~\\&"


@dataclass(frozen=True)
class MessageHeader:
    """The MSH fields an ACK needs, as far as they could be read (empty strings otherwise)."""

    field_separator: str = "|"
    encoding_characters: str = _DEFAULT_ENCODING
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    message_type: str = ""
    """``ORM^O01``: MSH-9 components 1 and 2."""
    control_id: str = ""
    processing_id: str = ""
    version: str = ""
    charset: str = ""
    """MSH-18 as sent."""


@dataclass(frozen=True)
class ParsedOrder:
    """An accepted order message."""

    header: MessageHeader
    order_control: str
    """ORC-1: NW, XO, CA, SC or DC."""
    order: Order
    """The order; for SC, ``status`` holds ORC-5 mapped to a store status."""

    @property
    def message_type(self) -> str:
        """``ORM^O01`` or ``OMI^O23``."""
        return self.header.message_type

    @property
    def version(self) -> str:
        """MSH-12."""
        return self.header.version

    @property
    def control_id(self) -> str:
        """MSH-10."""
        return self.header.control_id

    @property
    def store_key(self) -> str:
        """Key of the message in the order store: MSH-10 is unique per sending application and facility."""
        return "\x1f".join((self.header.sending_application, self.header.sending_facility, self.header.control_id))


class Hl7Refusal(Exception):
    """Carries a refusal and whatever header was read, so that the ACK can quote the control ID."""

    def __init__(self, error: Hl7Error, header: MessageHeader) -> None:
        super().__init__(str(error))
        self.error = error
        self.header = header


# -- reading ------------------------------------------------------------------------------------------------------

def read_header(raw: bytes) -> MessageHeader:
    """Read the MSH of raw ER7 bytes (before decoding: MSH-18 decides how to decode the rest).

    Raises
    ------
    Hl7MessageError
        No MSH segment first (100), or invalid encoding characters MSH-2 (102).
    """
    data = raw.lstrip(b"\r\n\t ")
    if not data.startswith(b"MSH") or len(data) < 8:
        raise Hl7MessageError("the message does not start with an MSH segment", error_code=100, location="MSH")
    first = re.split(rb"[\r\n]", data, maxsplit=1)[0]
    text = first.decode("latin-1")  # header fields are ASCII by the standard; latin-1 never fails
    if len(text) < 8:
        raise Hl7MessageError("MSH-1/MSH-2 field separator and encoding characters are missing", error_code=102,
                              location="MSH^1^2")
    sep = text[3]
    parts = text.split(sep)
    encoding = parts[1] if len(parts) > 1 else ""
    if (len(encoding) != 4 or len(set(encoding + sep)) != 5
            or any(c.isalnum() or c.isspace() or not c.isprintable() for c in encoding + sep)):
        raise Hl7MessageError(
            "MSH-2 encoding characters must be four distinct non-alphanumeric characters (normally ^~\\&) that differ "
            "from the field separator MSH-1", error_code=102, location="MSH^1^2")
    component = encoding[0]

    def field(n: int) -> str:  # MSH-n, first repetition, whole
        return parts[n - 1].split(encoding[1])[0] if n - 1 < len(parts) else ""

    def comp(n: int, c: int) -> str:
        comps = field(n).split(component)
        return comps[c - 1] if c <= len(comps) else ""

    msg_type = comp(9, 1) + (component + comp(9, 2) if comp(9, 2) else "")
    return MessageHeader(sep, encoding, comp(3, 1), comp(4, 1), comp(5, 1), comp(6, 1), msg_type.replace(component, "^"),
                         field(10), comp(11, 1), comp(12, 1), field(18))


def decode_message(raw: bytes, header: MessageHeader) -> str:
    """Decode ER7 bytes by MSH-18 and normalise segment ends (``\\r``, ``\\n``, ``\\r\\n``) to ``\\r``.

    Raises
    ------
    Hl7MessageError
        An unknown character set (103) or bytes it cannot hold (102), both at MSH-18.
    """
    charset = header.charset.strip().upper()
    if charset and charset not in CHARSETS:
        raise Hl7MessageError(f"MSH-18 character set is not one of {sorted(CHARSETS)}", error_code=103,
                              location="MSH^1^18")
    try:
        if charset:
            text = raw.decode(CHARSETS[charset])
        else:
            try:
                text = raw.decode("ascii")
            except UnicodeDecodeError:
                # HL7 says ASCII when MSH-18 is empty; many senders mean UTF-8 without saying so.
                text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Hl7MessageError(f"the message has bytes that are not valid {charset or 'ASCII or UTF-8'} (MSH-18); "
                              "declare the character set the sender uses in MSH-18", error_code=102,
                              location="MSH^1^18") from None
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s.strip()]
    text = "\r".join(segments)
    if "\x00" in text:
        location, name = _nul_location(text, header)
        raise Hl7MessageError(f"{name} holds a NUL character, which HL7 text cannot carry", error_code=102,
                              location=location)
    return text


_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{2}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _nul_location(text: str, header: MessageHeader) -> tuple[str, str]:
    """(ERL location, field name) of the first NUL in decoded ER7 ``text`` (segments ended by ``\\r``).

    ``PID^1^5`` / ``PID-5`` for a field; ``PID^1^5^1^2`` / ``PID-5.2`` when it is not in the first repetition and
    component; ``('', 'a segment ID')`` when the segment has no valid ID to name.
    """
    pos = text.index("\x00")
    start = text.rfind("\r", 0, pos) + 1
    name, before = text[start:start + 3], text[start:pos]
    if not _SEGMENT_ID.fullmatch(name) or len(before) < 3:
        return "", "a segment ID"
    sequence = 1 + sum(1 for segment in text[:start].split("\r") if segment[:3] == name)
    fields = before.split(header.field_separator)
    field_num = len(fields) - 1 + (name == "MSH")  # MSH-1 is the field separator itself
    component, repetition = header.encoding_characters[0], header.encoding_characters[1]
    if name == "MSH" and field_num <= 2:
        return f"MSH^1^{max(field_num, 1)}", f"MSH-{max(field_num, 1)}"
    repetitions = fields[-1].split(repetition)
    rep, comp = len(repetitions), repetitions[-1].count(component) + 1
    if (rep, comp) == (1, 1):
        return f"{name}^{sequence}^{field_num}", f"{name}-{field_num}"
    return f"{name}^{sequence}^{field_num}^{rep}^{comp}", f"{name}-{field_num}.{comp}"


def _no_nul(value: str, location: str) -> str:
    """``value``, refused (AE 102 at ``location``, an ERL) when an escape sequence decoded to a NUL."""
    if "\x00" in value:
        seg, sequence, field_num, *rest = location.split("^")
        name = f"{seg}-{field_num}" + (f".{rest[1]}" if len(rest) > 1 and rest[1] != "1" else "")
        raise Hl7MessageError(f"{name} holds \\X00\\, a NUL character, which HL7 text cannot carry", error_code=102,
                              location=location)
    return value


class _Reader:
    """Field access on a python-hl7 message, unescaping with the message's charset."""

    def __init__(self, message: hl7.Message, header: MessageHeader) -> None:
        self.message = message
        self.header = header
        self.codec = CHARSETS.get(header.charset.strip().upper(), "utf-8")

    def has(self, segment: str) -> bool:
        return any(seg[0][0] == segment for seg in self.message)

    def raw(self, segment: str, field_num: int, component: int = 1, sub: int = 1, repetition: int = 1) -> str:
        for seg in self.message:
            if seg[0][0] != segment:
                continue
            if field_num >= len(seg):
                return ""
            tree = _normalise(seg[field_num])
            if repetition > len(tree) or component > len(tree[repetition - 1]):
                return ""
            subs = tree[repetition - 1][component - 1]
            return subs[sub - 1] if sub <= len(subs) else ""
        return ""

    def value(self, segment: str, field_num: int, component: int = 1, sub: int = 1) -> str:
        text = unescape(self.raw(segment, field_num, component, sub), self.header.field_separator,
                        self.header.encoding_characters, self.codec).strip()
        return _no_nul(text, f"{segment}^1^{field_num}" + (f"^1^{component}" if component > 1 else ""))

    def first(self, locations: list[str]) -> tuple[str, str]:
        """(value, location) of the first non-empty location; ('', first location) when all are empty."""
        for loc in locations:
            seg, field_num, comp = _location(loc)
            if comp is not None:
                value = self.value(seg, field_num, comp)
            else:
                # No component named: the first non-empty one (a coded value's code, else its text: OBR-31 is often
                # sent as ^text; a location's point of care).
                value = next((v for c in range(1, 10) if (v := self.value(seg, field_num, c))), "")
            if value:
                return value, loc
        return "", locations[0] if locations else ""


def _normalise(field: object) -> list[list[list[str]]]:
    """python-hl7's field tree as repetitions -> components -> subcomponents of raw strings."""
    if isinstance(field, str):
        return [[[field]]]
    items = list(field)  # type: ignore[call-overload]
    if all(isinstance(x, str) for x in items):
        return [[[x]] for x in items] or [[[""]]]
    reps: list[list[list[str]]] = []
    for rep in items:
        if isinstance(rep, str):
            reps.append([[rep]])
            continue
        comps: list[list[str]] = []
        for comp in rep:
            comps.append([comp] if isinstance(comp, str) else [str(s) for s in comp])
        reps.append(comps)
    return reps


def _location(loc: str) -> tuple[str, int, int | None]:
    seg, _, rest = loc.partition("-")
    num, _, comp = rest.partition(".")
    return seg, int(num), int(comp) if comp else None


def err_location(loc: str) -> str:
    """``OBR-18`` -> ``OBR^1^18``; ``ORC-7.6`` -> ``ORC^1^7^1^6`` (HL7 ERL, first segment and repetition)."""
    seg, field_num, comp = _location(loc)
    return f"{seg}^1^{field_num}" + (f"^1^{comp}" if comp else "")


def unescape(value: str, field_separator: str, encoding_characters: str, codec: str) -> str:
    """Decode HL7 escape sequences (v2.5.1 section 2.7): \\F\\ \\S\\ \\T\\ \\R\\ \\E\\, \\Xhh..\\ (bytes in the
    message's character set), \\.br\\ (line break); highlighting and unknown sequences are dropped.

    Raises
    ------
    ValueError
        A \\X..\\ sequence that is not hex (the caller turns it into a 102 for the field).
    """
    component, repetition, escape, subcomponent = (encoding_characters[i] for i in range(4))
    if escape not in value:
        return value
    named = {"F": field_separator, "S": component, "T": subcomponent, "R": repetition, "E": escape,
             ".br": "\n", "H": "", "N": ""}
    out: list[str] = []
    pos = 0
    while True:
        start = value.find(escape, pos)
        if start < 0:
            out.append(value[pos:])
            break
        end = value.find(escape, start + 1)
        if end < 0:  # an unterminated sequence: keep the text as it is
            out.append(value[pos:])
            break
        out.append(value[pos:start])
        seq = value[start + 1:end]
        if seq in named:
            out.append(named[seq])
        elif seq.startswith("X"):
            hexdigits = seq[1:]
            if len(hexdigits) % 2 or not re.fullmatch(r"[0-9A-Fa-f]*", hexdigits):
                raise ValueError("\\X..\\ escape is not an even number of hex digits")
            out.append(bytes.fromhex(hexdigits).decode(codec, errors="replace"))
        pos = end + 1
    return "".join(out)


def escape_text(text: str, header: MessageHeader) -> str:
    """Escape ``text`` for an ER7 field with the header's separators (the escape character first)."""
    component, repetition, esc, subcomponent = (header.encoding_characters[i] for i in range(4))
    escaped = (text.replace(esc, f"{esc}E{esc}").replace(header.field_separator, f"{esc}F{esc}")
               .replace(component, f"{esc}S{esc}").replace(subcomponent, f"{esc}T{esc}")
               .replace(repetition, f"{esc}R{esc}").replace("\r", " ").replace("\n", " "))
    # Other control characters (a NUL echoed from a refused message's MSH-10) go out as \\Xhh\\, never raw.
    return _CONTROL.sub(lambda m: f"{esc}X{ord(m.group()):02X}{esc}", escaped)


def _date(value: str, loc: str, length: int) -> str:
    """An HL7 TS/DTM as DICOM DA (length 8) or DT without fraction and zone (14); '' stays ''."""
    if not value:
        return ""
    if not _HL7_TS.fullmatch(value):
        raise Hl7MessageError(f"{loc} is not an HL7 date/time (YYYY[MM[DD[HH[MM[SS]]]]])", error_code=102,
                              location=err_location(loc))
    digits = value.split(".")[0].split("+")[0].split("-")[0]
    return digits[:length] if len(digits) >= 8 else ""


def _person_name(reader: _Reader) -> str:
    """PID-5 (XPN: family^given^middle^suffix^prefix) as DICOM PN (family^given^middle^prefix^suffix)."""
    # PN's own delimiters may not occur inside a component (an escaped \\S\\ decodes to ^, which would shift the parts).
    family, given, middle, suffix, prefix = [re.sub(r"[\^=\\]", " ", reader.value("PID", 5, c)).strip()
                                             for c in range(1, 6)]
    return "^".join((family, given, middle, prefix, suffix)).rstrip("^")


def parse_order(raw: bytes, field_map: Hl7FieldMap) -> ParsedOrder:
    """Parse one ORM^O01 / OMI^O23 message from raw ER7 bytes.

    Parameters
    ----------
    raw
        The message as received (MLLP frame content or HTTP body), in the character set MSH-18 names.
    field_map
        Where the order fields are.

    Returns
    -------
    ParsedOrder

    Raises
    ------
    Hl7Refusal
        The message is refused; ``.error`` says how (AE or AR, code, location), ``.header`` what was read of MSH.
    """
    header = MessageHeader()
    try:
        header = read_header(raw)
        text = decode_message(raw, header)
        return _parse(text, header, field_map)
    except Hl7Error as exc:
        raise Hl7Refusal(exc, header) from None


def _parse(text: str, header: MessageHeader, field_map: Hl7FieldMap) -> ParsedOrder:
    for name, loc in (("message type", "MSH-9"), ("version", "MSH-12")):
        if not getattr(header, "message_type" if name == "message type" else "version"):
            raise Hl7MessageError(f"{loc} ({name}) is empty", error_code=101, location=err_location(loc))
    if header.version not in SUPPORTED_VERSIONS:
        raise Hl7UnsupportedError(f"HL7 version (MSH-12) is not one of {', '.join(SUPPORTED_VERSIONS)}",
                                  error_code=203, location="MSH^1^12")
    if (header.message_type, header.version) not in SUPPORTED:
        accepted = sorted(f"{t} v{v}" for t, v in SUPPORTED)
        raise Hl7UnsupportedError(f"message type (MSH-9) is not accepted with this version; accepted: "
                                  f"{', '.join(accepted)}", error_code=200, location="MSH^1^9")
    if not header.control_id:
        raise Hl7MessageError("MSH-10 (message control ID) is empty", error_code=101, location="MSH^1^10")
    try:
        message = hl7.parse(text)
    except (hl7.ParseException, ValueError, IndexError, KeyError) as exc:  # what python-hl7 raises on bad structure
        raise Hl7MessageError(f"the message structure cannot be parsed ({type(exc).__name__})", error_code=100,
                              location="MSH") from None
    reader = _Reader(message, header)
    try:
        return _order_fields(reader, header, field_map)
    except ValueError:
        raise Hl7MessageError("a \\X..\\ escape sequence is not hex", error_code=102) from None


def _order_fields(reader: _Reader, header: MessageHeader, field_map: Hl7FieldMap) -> ParsedOrder:
    if not reader.has("ORC"):
        raise Hl7MessageError("the message has no ORC segment (order control)", error_code=101,
                              location="ORC^1^1")
    order_control = reader.value("ORC", 1)
    if not order_control:
        raise Hl7MessageError("ORC-1 (order control) is empty", error_code=101, location="ORC^1^1")
    if order_control not in ("NW", "XO", "CA", "SC", "DC"):
        raise Hl7MessageError("ORC-1 order control is not one of NW, XO, CA, SC, DC", error_code=103,
                              location="ORC^1^1")

    def required(locations: list[str], what: str) -> str:
        value, loc = reader.first(locations)
        if not value:
            raise Hl7MessageError(f"{what} is missing (looked in {', '.join(locations)})", error_code=101,
                                  location=err_location(loc))
        return value

    accession = required(field_map.accession, "accession number")
    patient_id = required(field_map.patient_id, "patient ID")
    procedure_code = procedure_description = procedure_scheme = ""
    for loc in field_map.procedure_code:
        seg, num, comp = _location(loc)
        if comp is not None:
            procedure_code = reader.value(seg, num, comp)
        else:  # a coded element: code ^ text ^ coding scheme
            procedure_code, procedure_description, procedure_scheme = (reader.value(seg, num, c) for c in (1, 2, 3))
        if procedure_code or procedure_description:
            break
    start = ""
    for loc in ("TQ1-7", "ORC-7.4", "OBR-27.4", "OBR-36"):
        seg, num, comp = _location(loc)
        start = _date(reader.value(seg, num, comp or 1), loc, 14)
        if start:
            break
    status = "scheduled"
    if order_control == "SC":
        status = ORDER_STATUS.get(reader.value("ORC", 5), "")
        if not status:
            raise Hl7MessageError("ORC-5 order status of an SC is missing or not one of "
                                  f"{', '.join(ORDER_STATUS)}", error_code=103, location="ORC^1^5")
    order = Order(
        accession=accession,
        patient_id=patient_id,
        placer_order_number=reader.first(field_map.placer_order_number)[0],
        filler_order_number=reader.first(field_map.filler_order_number)[0],
        study_uid=reader.first(field_map.study_instance_uid)[0],
        requested_procedure_id=reader.first(field_map.requested_procedure_id)[0],
        modality=reader.first(field_map.modality)[0],
        procedure_code=procedure_code,
        procedure_scheme=procedure_scheme,
        procedure_description=procedure_description,
        priority=reader.first(field_map.priority)[0],
        patient_class=reader.first(field_map.patient_class)[0],
        location=reader.first(field_map.location)[0],
        reason=reader.first(field_map.reason)[0],
        patient_name=_person_name(reader),
        patient_birth_date=_date(reader.value("PID", 7), "PID-7", 8),
        patient_sex=_SEX.get(reader.value("PID", 8).upper(), ""),
        scheduled_start=start,
        scheduled_station_ae_title=reader.value("IPC", 9),
        status=status,
        source="hl7",
    )
    return ParsedOrder(header, order_control, order)


# -- final reports (ground truth) ---------------------------------------------------------------------------------

#: Accepted final-report messages: ORU^R01 in the accepted versions.
REPORTS = {("ORU^R01", version) for version in SUPPORTED_VERSIONS}
#: OBR-25 result status of a report that is ground truth: F final, C corrected final (HL7 table 0123).
FINAL_STATUSES = ("F", "C")
#: OBX-5 of a coded finding -> present: Y/N (HL7 table 0136), SNOMED CT Present 52101004 / Absent 2667000.
PRESENCE = {"Y": True, "N": False, "52101004": True, "2667000": False, "POS": True, "NEG": False}


@dataclass(frozen=True)
class ParsedReport:
    """A final-report ORU^R01: the accession it reports on and its coded findings."""

    header: MessageHeader
    accession: str
    result_status: str
    """OBR-25 (``F``, ``C``, or what else it said: only F and C are ground truth)."""
    findings: tuple[tuple[str, bool], ...]
    """(finding code, present) of each OBX with a coded (CE/CWE) value: OBX-3.1 the finding, OBX-5.1 Y/N or SNOMED
    Present/Absent."""

    @property
    def final(self) -> bool:
        """A final (or corrected final) report."""
        return self.result_status in FINAL_STATUSES


def is_report(raw: bytes) -> bool:
    """Whether raw ER7 bytes are an ORU^R01 (read from MSH-9 only; a bad MSH is the order parser's to refuse)."""
    try:
        return read_header(raw).message_type == "ORU^R01"
    except Hl7Error:
        return False


def parse_report(raw: bytes, field_map: Hl7FieldMap) -> ParsedReport:
    """Parse one ORU^R01 from raw ER7 bytes (decoding and refusals as :func:`parse_order`).

    Raises
    ------
    Hl7Refusal
        AR 203/200 for a version or type not accepted; AE 101 without MSH-10, OBR or an accession (the field map's
        ``accession``, OBR-18 by default); AE 103 for a coded finding whose OBX-5 is not Y/N or SNOMED Present/Absent.
    """
    header = MessageHeader()
    try:
        header = read_header(raw)
        text = decode_message(raw, header)
        if header.version not in SUPPORTED_VERSIONS:
            raise Hl7UnsupportedError(f"HL7 version (MSH-12) is not one of {', '.join(SUPPORTED_VERSIONS)}",
                                      error_code=203, location="MSH^1^12")
        if (header.message_type, header.version) not in REPORTS:
            raise Hl7UnsupportedError("message type (MSH-9) is not ORU^R01", error_code=200, location="MSH^1^9")
        if not header.control_id:
            raise Hl7MessageError("MSH-10 (message control ID) is empty", error_code=101, location="MSH^1^10")
        try:
            message = hl7.parse(text)
        except (hl7.ParseException, ValueError, IndexError, KeyError) as exc:
            raise Hl7MessageError(f"the message structure cannot be parsed ({type(exc).__name__})", error_code=100,
                                  location="MSH") from None
        reader = _Reader(message, header)
        if not reader.has("OBR"):
            raise Hl7MessageError("the report has no OBR segment", error_code=101, location="OBR^1^1")
        accession, loc = reader.first(field_map.accession)
        if not accession:
            raise Hl7MessageError(f"accession number is missing (looked in {', '.join(field_map.accession)})",
                                  error_code=101, location=err_location(loc))
        return ParsedReport(header, accession, reader.value("OBR", 25), _coded_findings(reader, header))
    except ValueError:
        raise Hl7Refusal(Hl7MessageError("a \\X..\\ escape sequence is not hex", error_code=102), header) from None
    except Hl7Error as exc:
        raise Hl7Refusal(exc, header) from None


def _coded_findings(reader: _Reader, header: MessageHeader) -> tuple[tuple[str, bool], ...]:
    found: list[tuple[str, bool]] = []
    for index, segment in enumerate(seg for seg in reader.message if seg[0][0] == "OBX"):
        def value(num: int, comp: int = 1, segment: object = segment, index: int = index) -> str:
            tree = _normalise(segment[num]) if num < len(segment) else [[[""]]]  # type: ignore[index, arg-type]
            raw = tree[0][comp - 1][0] if comp <= len(tree[0]) else ""
            text = unescape(raw, header.field_separator, header.encoding_characters, reader.codec).strip()
            return _no_nul(text, f"OBX^{index + 1}^{num}" + (f"^1^{comp}" if comp > 1 else ""))

        if value(2) not in ("CE", "CWE"):
            continue  # report text (TX, FT, ST): not a coded finding
        code, answer = value(3), value(5).upper()
        if not code:
            raise Hl7MessageError("OBX-3 (the coded finding) is empty", error_code=101,
                                  location=f"OBX^{index + 1}^3")
        if answer not in PRESENCE:
            raise Hl7MessageError("OBX-5 of a coded finding is not Y/N or SNOMED CT Present (52101004) / Absent "
                                  "(2667000)", error_code=103, location=f"OBX^{index + 1}^5")
        found.append((code[:64], PRESENCE[answer]))
    return tuple(found)


# -- answering ----------------------------------------------------------------------------------------------------

def build_ack(header: MessageHeader, code: str, *, application: str, facility: str, error: Hl7Error | None = None,
              text: str = "") -> bytes:
    """An HL7 ACK (original mode) for a message with ``header``, encoded in the message's character set.

    Parameters
    ----------
    header
        What was read of the message's MSH (MSA-2 quotes its MSH-10; the ACK's MSH-5/6 are its MSH-3/4).
    code
        ``AA``, ``AE`` or ``AR``.
    application, facility
        MSH-3 and MSH-4 of the ACK (``hl7Listener.application`` / ``facility``).
    error
        For AE/AR: the ERR segment's location and condition code. v2.3/v2.3.1 have ERR-1 only (``ELD``:
        segment^sequence^field^code); v2.5.1 has ERR-2 location, ERR-3 code, ERR-4 severity ``E``.
    text
        MSA-3 text (defaults to the error's message; fixed texts only, never a field value).
    """
    standard = MessageHeader()  # the ACK uses the standard separators whatever the message used
    version = header.version if header.version in SUPPORTED_VERSIONS else "2.5.1"
    event = header.message_type.split("^")[1] if "^" in header.message_type else ""
    charset = header.charset if header.charset.strip().upper() in CHARSETS else ""
    stamp = time.strftime("%Y%m%d%H%M%S")
    ack_type = "ACK^" + event + ("^ACK" if version != "2.3" else "") if event else "ACK"
    message_text = text or (str(error) if error is not None else "")

    def esc(value: str) -> str:
        return escape_text(value, standard)

    msh = ["MSH", "^~\\&", esc(application), esc(facility), esc(header.sending_application),
           esc(header.sending_facility), stamp, "", ack_type, uuid.uuid4().hex[:20], esc(header.processing_id or "P"),
           version]
    if charset:
        msh += [""] * 5 + [charset]
    segments = ["|".join(msh)]
    msa = ["MSA", code, esc(header.control_id)]
    if code != "AA" and message_text:
        msa.append(esc(message_text[:80]))
    segments.append("|".join(msa))
    if error is not None and code != "AA":
        condition = f"{error.error_code}&{CONDITION_TEXT.get(error.error_code, '')}&HL70357"
        location = error.location
        if version in ("2.3", "2.3.1"):
            # ERR-1 (ELD): segment ID ^ sequence ^ field position ^ code (CE with subcomponents).
            seg, _, rest = location.partition("^")
            seq, _, rest = rest.partition("^")
            field_pos = rest.split("^")[0]
            segments.append(f"ERR|{seg}^{seq}^{field_pos}^{condition}")
        else:
            code_cwe = condition.replace("&", "^")
            segments.append("|".join(["ERR", "", location, code_cwe, "E", "", "", "", esc(message_text)]))
    body = "\r".join(segments) + "\r"
    codec = CHARSETS.get(charset.strip().upper(), "ascii")
    return body.encode(codec, errors="replace")


def _msa(ack: bytes, index: int) -> str:
    for segment in ack.split(b"\r"):
        if segment.startswith(b"MSA|"):
            fields = segment.split(b"|")
            return fields[index].decode("latin-1") if index < len(fields) else ""
    return ""


def ack_code_of(ack: bytes) -> str:
    """MSA-1 of an ACK built here (``AA``/``AE``/``AR``), for metrics and HTTP status."""
    return _msa(ack, 1)


def ack_text_of(ack: bytes) -> str:
    """MSA-3 of an ACK built here (the refusal's fixed text; '' for an AA)."""
    return _msa(ack, 3)


def ack_error_location(ack: bytes) -> str:
    """ERR location of an ACK built here (``OBR^1^18``; v2.3 ERR-1 or v2.5.1 ERR-2), '' when it has none."""
    for segment in ack.split(b"\r"):
        if segment.startswith(b"ERR|"):
            fields = segment.decode("ascii", "replace").split("|")
            if len(fields) > 1 and fields[1]:
                return "^".join(fields[1].split("^")[:3]).rstrip("^")
            return fields[2] if len(fields) > 2 else ""
    return ""
