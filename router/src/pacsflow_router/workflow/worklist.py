"""pacsflow's Modality Worklist SCP: the order store as a worklist, with the AI priority applied (PS3.4 Annex K).

A C-FIND handler for the Modality Worklist Information Model - FIND, served on the router's own AE title and port
through :class:`~..ingest.scp.DicomReceiver`'s ``services`` (wired with :func:`worklist_service`). Any standard
worklist client (a modality, a RIS, ``findscu -W``) sees the orders of :meth:`OrderStore.worklist` in reading order,
with a study that a triage use case flagged critical raised to Requested Procedure Priority ``STAT`` and its
Requested Procedure Description and Scheduled Procedure Step Description prefixed :data:`AI_PREFIX`.

Matching (PS3.4 C.2.2.2): single value and wildcard (``*``, ``?``) matching on Accession Number, Patient ID,
Patient's Name (case-insensitive, as C.2.2.2.1 allows for PN) and, inside the Scheduled Procedure Step Sequence,
Modality and Scheduled Station AE Title; UID list matching on Study Instance UID; range matching on Scheduled
Procedure Step Start Date and (independently, no combined date-time matching) Start Time. A matching value on any
other key is ignored and every pending response then says so with 0xFF01 (PS3.4 C.4.1.1.4, "one or more Optional
Keys were not supported"). Return keys are the keys of the request, zero length where the order has no value.

Refusal table, in one place (status, ``pacsflow_worklist_queries_total`` outcome): an identifier that does not fit
the model (more than one Scheduled Procedure Step item, a malformed date or time range) 0xA900 ``refused``; an
identifier that cannot be decoded 0xC000 ``failed``; the order store failing 0xC001 ``failed``; each with an
Error Comment that says what to change, and never a value from the query.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.valuerep import PersonName
from pynetdicom import evt
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]  # generated

from .. import dicomnet, metrics
from ..domain import Order
from ..errors import PacsflowError
from .orders import OrderStore, WorklistEntry

log = logging.getLogger(__name__)

dicomnet.keep_identifiers_out_of_logs()

#: Prefix of the Requested Procedure Description and Scheduled Procedure Step Description of an AI-critical order.
AI_PREFIX = "[AI: Critical Finding Suspected] "

#: HL7 priority (table 0027, :attr:`Order.priority`) -> DICOM Requested Procedure Priority (0040,1003) defined terms.
#: Timing-critical work is urgent (HIGH); pre-op and callback come before routine (MEDIUM). An order without a
#: priority is returned without one (the attribute is type 2).
PRIORITY_TO_DICOM = {"S": "STAT", "A": "HIGH", "T": "HIGH", "C": "MEDIUM", "P": "MEDIUM", "R": "ROUTINE"}

#: :attr:`Order.status` -> Scheduled Procedure Step Status (0040,0020).
SPS_STATUS = {"scheduled": "SCHEDULED", "in-progress": "STARTED", "completed": "COMPLETED",
              "discontinued": "DISCONTINUED"}

#: C-FIND statuses (PS3.4 C.4.1.1.4).
PENDING = 0xFF00
PENDING_UNSUPPORTED_KEYS = 0xFF01
CANCELLED = 0xFE00
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000
STORE_UNAVAILABLE = 0xC001

_LO_MAX = 64
_UTF8 = "ISO_IR 192"
_SPS = "ScheduledProcedureStepSequence"
_WILDCARD_KEYS = ("AccessionNumber", "PatientID")
_SPS_WILDCARD_KEYS = ("Modality", "ScheduledStationAETitle")
_SPS_RANGE_KEYS = ("ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime")
_NOT_KEYS = ("SpecificCharacterSet", "TimezoneOffsetFromUTC")
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


class QueryRefused(PacsflowError):
    """A C-FIND identifier this SCP cannot answer: the failure ``status`` and an Error Comment saying why."""

    def __init__(self, status: int, comment: str, offending: Sequence[int] = ()) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment
        self.offending = list(offending)


# -- matching (PS3.4 C.2.2.2) -----------------------------------------------------------------------------------

def _wildcard(pattern: str, *, fold_case: bool = False) -> Callable[[str], bool]:
    """Single value matching, or wildcard matching when the value holds ``*`` or ``?`` (C.2.2.2.1, C.2.2.2.4)."""
    if fold_case:
        pattern = pattern.casefold()
    if "*" in pattern or "?" in pattern:
        regex = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern),
                           re.DOTALL)
        match: Callable[[str], bool] = lambda value: regex.fullmatch(value) is not None  # noqa: E731
    else:
        match = pattern.__eq__
    if fold_case:
        return lambda value: match(value.casefold())
    return match


def _range(value: str, pattern: re.Pattern[str], keyword: str, tag: int) -> tuple[str, str]:
    """``A``, ``A-B``, ``A-`` or ``-B`` (C.2.2.2.5) as inclusive (low, high); empty for an open end."""
    low, dash, high = value.partition("-")
    if not dash:
        high = low
    if not (low or high) or any(part and not pattern.match(part) for part in (low, high)):
        raise QueryRefused(IDENTIFIER_DOES_NOT_MATCH,
                           f"{keyword} must be a single value or a range (YYYYMMDD / HHMMSS forms, A-B, A-, -B)",
                           [tag])
    return low, high


def _time_bound(value: str, *, high: bool) -> str:
    """A TM bound as ``HHMMSS``: a high bound given as ``HH`` or ``HHMM`` covers that whole hour or minute."""
    if not value:
        return ""
    digits = value.split(".")[0]
    return digits + ("595959" if high else "000000")[len(digits):]


@dataclass
class WorklistQuery:
    """A parsed C-FIND identifier: the store's filters, the matchers applied here, the keys to return.

    Build it with :meth:`parse`; it holds no patient data beyond the request itself and is never logged.
    """

    request: Dataset
    modality: str | None = None
    station_ae_title: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    matchers: list[Callable[[Order], bool]] = field(default_factory=list)
    unsupported_keys: list[str] = field(default_factory=list)
    """Keywords (or tags) whose matching value was ignored: each pending response is then 0xFF01."""

    @classmethod
    def parse(cls, request: Dataset) -> WorklistQuery:
        """Read the matching keys of a Modality Worklist C-FIND identifier.

        Raises
        ------
        QueryRefused
            0xA900 for an identifier that does not fit the information model.
        """
        query = cls(request)
        for elem in request:
            keyword = elem.keyword or str(elem.tag)
            if keyword in _NOT_KEYS or elem.tag.element == 0:
                continue
            if keyword == _SPS:
                query._parse_sps(elem)
            elif keyword in _WILDCARD_KEYS and _value(elem):
                query._add(keyword, _wildcard(_value(elem)))
            elif keyword == "PatientName" and _value(elem):
                query._add(keyword, _wildcard(_value(elem), fold_case=True))
            elif keyword == "StudyInstanceUID" and _value(elem):
                query.matchers.append(_uid_list_matcher(_value(elem)))
            elif _has_matching_value(elem):
                query.unsupported_keys.append(keyword)
        return query

    def _add(self, keyword: str, match: Callable[[str], bool], *, empty_matches: bool = False) -> None:
        attribute = _ORDER_ATTRIBUTE[keyword]

        def matcher(order: Order) -> bool:
            value: str = getattr(order, attribute)
            return (empty_matches and not value) or match(value)

        self.matchers.append(matcher)

    def _parse_sps(self, elem: DataElement) -> None:
        items = elem.value or []
        if len(items) > 1:
            raise QueryRefused(IDENTIFIER_DOES_NOT_MATCH,
                               "Scheduled Procedure Step Sequence must have one item in a worklist query",
                               [int(elem.tag)])
        for sub in items[0] if items else ():
            keyword = sub.keyword or str(sub.tag)
            value = _value(sub)
            if keyword in _SPS_WILDCARD_KEYS and value:
                literal = "*" not in value and "?" not in value
                if keyword == "Modality" and literal:
                    self.modality = value  # the store filters it in SQL
                elif keyword == "ScheduledStationAETitle" and literal:
                    self.station_ae_title = value
                # An order assigned to no station is every station's work (as OrderStore.worklist lists it).
                self._add(keyword, _wildcard(value), empty_matches=keyword == "ScheduledStationAETitle")
            elif keyword == "ScheduledProcedureStepStartDate" and value:
                low, high = _range(value, _DATE, keyword, int(sub.tag))
                self.date_from, self.date_to = low or None, high or None
            elif keyword == "ScheduledProcedureStepStartTime" and value:
                low, high = _range(value, _TIME, keyword, int(sub.tag))
                self.matchers.append(_time_matcher(_time_bound(low, high=False), _time_bound(high, high=True)))
            elif _has_matching_value(sub):
                self.unsupported_keys.append(f"{_SPS}>{keyword}")

    def matches(self, order: Order) -> bool:
        """Whether ``order`` matches every key matched here (the store already applied its filters)."""
        return all(match(order) for match in self.matchers)


_ORDER_ATTRIBUTE = {
    "AccessionNumber": "accession", "PatientID": "patient_id", "PatientName": "patient_name",
    "Modality": "modality", "ScheduledStationAETitle": "scheduled_station_ae_title",
}


def _uid_list_matcher(value: str) -> Callable[[Order], bool]:
    """List of UID matching (C.2.2.2.2) on the Study Instance UID."""
    uids = frozenset(value.split("\\"))
    return lambda order: order.study_uid in uids


def _time_matcher(low: str, high: str) -> Callable[[Order], bool]:
    """Range matching on the scheduled start time (``HHMMSS`` bounds, empty for an open end). An order without a
    scheduled time matches: it is scheduled for the day, at no particular time."""

    def match(order: Order) -> bool:
        time = order.scheduled_start[8:14]
        if len(time) != 6:
            return True
        return (not low or time >= low) and (not high or time <= high)

    return match


def _value(elem: DataElement) -> str:
    value = elem.value
    if value is None or elem.VR == "SQ":
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _has_matching_value(elem: DataElement) -> bool:
    """A non-empty value other than universal matching (``*``), or a sequence item with one."""
    if elem.VR == "SQ":
        return any(_has_matching_value(sub) for item in (elem.value or []) for sub in item)
    return _value(elem) not in ("", "*")


# -- responses --------------------------------------------------------------------------------------------------

def _prefixed(description: str, critical: bool) -> str:
    if not critical:
        return description
    return (AI_PREFIX + description)[:_LO_MAX].rstrip()  # LO holds 64 characters


def entry_dataset(entry: WorklistEntry) -> Dataset:
    """Every return key this SCP supports for one worklist entry, AI priority applied.

    Parameters
    ----------
    entry
        An order and its AI state from :meth:`OrderStore.worklist`.

    Returns
    -------
    pydicom.dataset.Dataset
        Patient, visit, imaging service request, requested procedure and scheduled procedure step attributes
        (PS3.4 Table K.6-1). Specific Character Set is ISO_IR 192 when any value is not ASCII.
    """
    order, critical = entry.order, entry.ai_critical
    description = _prefixed(order.procedure_description, critical)
    ds = Dataset()
    ds.AccessionNumber = order.accession
    ds.ReferringPhysicianName = ""
    ds.ReferencedStudySequence = DicomSequence()
    ds.ReferencedPatientSequence = DicomSequence()
    ds.PatientName = order.patient_name
    ds.PatientID = order.patient_id
    ds.PatientBirthDate = order.patient_birth_date
    ds.PatientSex = order.patient_sex
    ds.StudyInstanceUID = order.study_uid
    ds.AdmissionID = ""
    ds.CurrentPatientLocation = order.location
    ds.RequestedProcedureDescription = description
    code = Dataset()
    if order.procedure_code:
        code.CodeValue = order.procedure_code
        code.CodingSchemeDesignator = order.procedure_scheme
        code.CodeMeaning = order.procedure_description[:_LO_MAX]
    ds.RequestedProcedureCodeSequence = DicomSequence([code] if order.procedure_code else [])
    ds.RequestedProcedureID = order.requested_procedure_id
    ds.ReasonForTheRequestedProcedure = order.reason
    ds.RequestedProcedurePriority = "STAT" if critical else PRIORITY_TO_DICOM.get(order.priority, "")
    ds.RequestedProcedureComments = (f"AI critical finding suspected ({', '.join(entry.ai_use_cases)})"
                                     if critical else "")
    ds.PlacerOrderNumberImagingServiceRequest = order.placer_order_number
    ds.FillerOrderNumberImagingServiceRequest = order.filler_order_number
    sps = Dataset()
    sps.Modality = order.modality
    sps.ScheduledStationAETitle = order.scheduled_station_ae_title
    sps.ScheduledStationName = ""
    sps.ScheduledProcedureStepLocation = ""
    sps.ScheduledProcedureStepStartDate = order.scheduled_start[:8]
    sps.ScheduledProcedureStepStartTime = order.scheduled_start[8:14]
    sps.ScheduledPerformingPhysicianName = ""
    sps.ScheduledProcedureStepDescription = description
    sps.ScheduledProtocolCodeSequence = DicomSequence([code] if order.procedure_code else [])
    sps.ScheduledProcedureStepID = order.requested_procedure_id or order.accession
    sps.ScheduledProcedureStepStatus = SPS_STATUS.get(order.status, "")
    ds.ScheduledProcedureStepSequence = DicomSequence([sps])
    return ds


def _empty_like(elem: DataElement) -> DataElement:
    return DataElement(elem.tag, elem.VR, DicomSequence() if elem.VR == "SQ" else None)


def _project(full: Dataset, request: Dataset) -> Dataset:
    """The return keys of ``request`` filled from ``full`` (C.2.2.1.3): a zero-item sequence in the request returns
    the whole sequence, a sequence with an item returns each item reduced to that item's keys; keys this SCP does
    not know come back zero length."""
    out = Dataset()
    for elem in request:
        keyword = elem.keyword
        if keyword in _NOT_KEYS or elem.tag.element == 0:
            continue
        if keyword and keyword in full:
            have = full[elem.tag]
            if have.VR == "SQ" and elem.VR == "SQ" and elem.value:
                out.add(DataElement(elem.tag, "SQ", DicomSequence([_project(item, elem.value[0])
                                                                   for item in have.value])))
            else:
                out.add(have)
        else:
            out.add(_empty_like(elem))
    return out


def _is_ascii(ds: Dataset) -> bool:
    for elem in ds:
        if elem.VR == "SQ":
            if not all(_is_ascii(item) for item in elem.value):
                return False
        elif isinstance(elem.value, (str, PersonName)):
            if not str(elem.value).isascii():
                return False
    return True


def response_for(entry: WorklistEntry, request: Dataset) -> Dataset:
    """The pending response identifier for one matching entry: the request's keys, values from the entry.

    Specific Character Set is ``ISO_IR 192`` (UTF-8) when any returned value is not ASCII, else left out (the
    default repertoire).
    """
    out = _project(entry_dataset(entry), request)
    if not _is_ascii(out):
        out.SpecificCharacterSet = _UTF8
    return out


def _status(code: int, comment: str, offending: Sequence[int] = ()) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:_LO_MAX]
    if offending:
        status.OffendingElement = [BaseTag(t) for t in offending]
    return status


# -- the handler ------------------------------------------------------------------------------------------------

def find_worklist(store: OrderStore, event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
    """EVT_C_FIND handler: the matching worklist entries as pending responses, then success (pynetdicom).

    Parameters
    ----------
    store
        The order store the worklist is read from.
    event
        pynetdicom's C-FIND event (``event.identifier`` is the request).

    Yields
    ------
    tuple
        ``(0xFF00 or 0xFF01, identifier)`` per match; a failure status data set with an Error Comment for a query
        that cannot be answered; ``(0xFE00, None)`` when the requester cancels.
    """
    try:
        request = event.identifier
    except Exception as exc:  # noqa: BLE001  # pydicom raises many types for bytes it cannot read
        metrics.WORKLIST_QUERIES.labels("failed").inc()
        log.warning("worklist C-FIND refused: identifier cannot be decoded (%s)", type(exc).__name__)
        yield _status(UNABLE_TO_PROCESS, "the identifier cannot be decoded; send a valid data set"), None
        return
    try:
        query = WorklistQuery.parse(request)
        entries = store.worklist(modality=query.modality, station_ae_title=query.station_ae_title,
                                 date_from=query.date_from, date_to=query.date_to)
    except QueryRefused as exc:
        metrics.WORKLIST_QUERIES.labels("refused").inc()
        log.warning("worklist C-FIND refused (0x%04X): %s", exc.status, exc.comment)
        yield _status(exc.status, exc.comment, exc.offending), None
        return
    except (sqlite3.Error, OSError) as exc:
        metrics.WORKLIST_QUERIES.labels("failed").inc()
        log.error("worklist C-FIND failed: order store unavailable (%s)", type(exc).__name__)
        yield _status(STORE_UNAVAILABLE, "the order store is unavailable; try again later"), None
        return
    pending = PENDING_UNSUPPORTED_KEYS if query.unsupported_keys else PENDING
    if query.unsupported_keys:
        # Keywords only (never values): they say which client configuration to change.
        log.info("worklist C-FIND: matching not supported on %s; ignored (0xFF01)", ", ".join(query.unsupported_keys))
    matched = 0
    for entry in entries:
        if not query.matches(entry.order):
            continue
        if event.is_cancelled:
            metrics.WORKLIST_QUERIES.labels("cancelled").inc()
            yield CANCELLED, None
            return
        matched += 1
        yield pending, response_for(entry, request)
    metrics.WORKLIST_QUERIES.labels("success").inc()
    log.debug("worklist C-FIND answered %d of %d open orders", matched, len(entries))


def worklist_service(store: OrderStore) -> tuple[list[str], list[tuple[Any, Callable[..., Any]]]]:
    """The worklist SCP as a ``DicomReceiver`` service: ``(abstract syntaxes, [(EVT_C_FIND, handler)])``.

    Parameters
    ----------
    store
        The order store the worklist is read from.

    Examples
    --------
    >>> receiver = DicomReceiver(config, spool, services=[worklist_service(store)])  # doctest: +SKIP
    """

    def handler(event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        return find_worklist(store, event)

    return [ModalityWorklistInformationFind], [(evt.EVT_C_FIND, handler)]
