"""Modality Worklist poller: the RIS's worklist as a second source of orders (C-FIND SCU, PS3.4 Annex K).

Every ``pollSeconds`` one association to ``mwlSource`` asks for the Scheduled Procedure Steps of the configured
station AE title and modality within the date window (today minus ``daysBefore`` to today plus ``daysAfter``,
router local time, as the RIS schedules in local time). Each answer becomes a :class:`~..domain.Order` with
``source="mwl"`` and goes through :meth:`OrderStore.upsert`, so new and changed items become the same order records
as HL7 orders. A RIS that is down or answers a failure is logged and counted
(``pacsflow_mwl_polls_total{outcome}``) and asked again at the next poll; the poller thread never dies of it.

Outcomes: ``success`` (final status 0x0000), ``unreachable`` (no association: connection refused, association
rejected or aborted during setup), ``failed`` (a failure or cancel status, no final response, or the store refused
an item). Items answered before a failure are still stored: each is a complete worklist entry on its own.
"""

from __future__ import annotations

import datetime
import logging
import sqlite3
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import AE, evt
from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]  # generated

from .. import dicomnet, metrics
from ..config import MwlSource
from ..domain import Order
from ..errors import PacsflowError
from .orders import OrderStore

log = logging.getLogger(__name__)

dicomnet.keep_identifiers_out_of_logs()

#: DICOM Requested Procedure Priority (0040,1003) -> HL7 priority (Table 0027, what :attr:`Order.priority` holds).
#: MEDIUM and LOW have no HL7 code of their own: they are routine work.
PRIORITY_FROM_DICOM = {"STAT": "S", "HIGH": "A", "ROUTINE": "R", "MEDIUM": "R", "LOW": "R"}

#: Scheduled Procedure Step Status (0040,0020) -> :attr:`Order.status`; anything else (SCHEDULED, ARRIVED, READY,
#: empty) is ``scheduled``.
STATUS_FROM_SPS = {"STARTED": "in-progress", "COMPLETED": "completed", "DISCONTINUED": "discontinued"}

_TOP_LEVEL_KEYS = (
    "AccessionNumber", "PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "RequestedProcedureID", "RequestedProcedureDescription", "RequestedProcedurePriority",
    "CurrentPatientLocation", "AdmissionID", "ReasonForTheRequestedProcedure",
    "PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest",
)
_SPS_KEYS = (
    "ScheduledStationAETitle", "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartTime", "Modality",
    "ScheduledProcedureStepDescription", "ScheduledProcedureStepID", "ScheduledProcedureStepStatus",
)
_CODE_KEYS = ("CodeValue", "CodingSchemeDesignator", "CodeMeaning")
#: C-FIND pending statuses (PS3.4 C.4.1.1.4): a match follows (0xFF01: some optional keys were not supported).
PENDING = frozenset({0xFF00, 0xFF01})


@dataclass
class PollResult:
    """What one poll did: its outcome (a ``pacsflow_mwl_polls_total`` label) and the items by upsert outcome."""

    outcome: str
    items: dict[str, int] = field(default_factory=dict)
    """``created`` / ``updated`` / ``unchanged`` / ``skipped`` (no Accession Number or Patient ID, or unreadable)
    -> count."""


def build_query(source: MwlSource, today: datetime.date) -> Dataset:
    """The C-FIND identifier for one poll: matching keys from ``source``, and the return keys the mapping reads.

    Parameters
    ----------
    source
        Station AE title and modality (universal matching when unset) and the date window.
    today
        The date the window is centred on.

    Returns
    -------
    pydicom.dataset.Dataset
        Identifier for the Modality Worklist Information Model - FIND (PS3.4 K.6.1.2.2).
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"  # the query is ASCII; this says UTF-8 answers are welcome
    for keyword in _TOP_LEVEL_KEYS:
        setattr(ds, keyword, "")
    code = Dataset()
    for keyword in _CODE_KEYS:
        setattr(code, keyword, "")
    ds.RequestedProcedureCodeSequence = DicomSequence([code])
    sps = Dataset()
    for keyword in _SPS_KEYS:
        setattr(sps, keyword, "")
    sps.ScheduledStationAETitle = source.station_ae_title or ""
    sps.Modality = source.modality or ""
    first = today - datetime.timedelta(days=source.days_before)
    last = today + datetime.timedelta(days=source.days_after)
    sps.ScheduledProcedureStepStartDate = f"{first:%Y%m%d}-{last:%Y%m%d}"
    ds.ScheduledProcedureStepSequence = DicomSequence([sps])
    return ds


class NulInValueError(ValueError):
    """A worklist value holds a NUL (U+0000) inside it: no DICOM text VR carries one, and the order store (PostgreSQL
    text) cannot hold it, so the item is skipped rather than failing every poll."""


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value).strip().rstrip("\x00")  # trailing NUL padding (as UIDs are padded) is tolerated
    if "\x00" in text:
        raise NulInValueError(f"{keyword} holds a NUL character")  # the keyword only: never the value
    return text


def _first_item(ds: Dataset, keyword: str) -> Dataset:
    seq = ds.get(keyword)
    return seq[0] if seq else Dataset()


def _scheduled_start(date: str, time: str) -> str:
    """SPS Start Date (DA) + Start Time (TM, ``HH``, ``HHMM``, ``HHMMSS[.ffffff]``) as DT ``YYYYMMDDHHMMSS``."""
    if len(date) != 8 or not date.isdigit():
        return ""
    digits = time.split(".")[0].replace(":", "")  # ACR-NEMA style colons still occur in old RIS
    if not digits.isdigit():
        digits = ""
    return date + digits[:6].ljust(6, "0")


def order_from_item(item: Dataset) -> Order | None:
    """Map one Modality Worklist response identifier to an order (``source="mwl"``).

    Parameters
    ----------
    item
        A pending C-FIND response identifier (Specific Character Set already applied by pydicom).

    Returns
    -------
    Order or None
        None when the item has no Accession Number or no Patient ID: orders are keyed by both.
    """
    accession = _text(item, "AccessionNumber")
    patient_id = _text(item, "PatientID")
    if not accession or not patient_id:
        return None
    sps = _first_item(item, "ScheduledProcedureStepSequence")
    code = _first_item(item, "RequestedProcedureCodeSequence")
    reason = _text(item, "ReasonForTheRequestedProcedure")
    if not reason:
        reason = _text(_first_item(item, "ReasonForRequestedProcedureCodeSequence"), "CodeMeaning")
    description = (_text(item, "RequestedProcedureDescription") or _text(code, "CodeMeaning")
                   or _text(sps, "ScheduledProcedureStepDescription"))
    return Order(
        accession=accession,
        patient_id=patient_id,
        placer_order_number=_text(item, "PlacerOrderNumberImagingServiceRequest"),
        filler_order_number=_text(item, "FillerOrderNumberImagingServiceRequest"),
        study_uid=_text(item, "StudyInstanceUID"),
        requested_procedure_id=_text(item, "RequestedProcedureID"),
        modality=_text(sps, "Modality") or _text(item, "Modality"),
        procedure_code=_text(code, "CodeValue"),
        procedure_scheme=_text(code, "CodingSchemeDesignator"),
        procedure_description=description,
        priority=PRIORITY_FROM_DICOM.get(_text(item, "RequestedProcedurePriority").upper(), ""),
        location=_text(item, "CurrentPatientLocation"),
        reason=reason,
        patient_name=_text(item, "PatientName"),
        patient_birth_date=_text(item, "PatientBirthDate"),
        patient_sex=_text(item, "PatientSex"),
        scheduled_start=_scheduled_start(_text(sps, "ScheduledProcedureStepStartDate"),
                                         _text(sps, "ScheduledProcedureStepStartTime")),
        scheduled_station_ae_title=_text(sps, "ScheduledStationAETitle"),
        status=STATUS_FROM_SPS.get(_text(sps, "ScheduledProcedureStepStatus").upper(), "scheduled"),
        source="mwl",
    )


def _read_item(identifier: Dataset) -> Order | None:
    """:func:`order_from_item`, with an item that cannot be read skipped instead of ending the poll."""
    try:
        return order_from_item(identifier)
    except NulInValueError as exc:
        log.warning("worklist item skipped: %s", exc)
        return None
    except Exception as exc:  # noqa: BLE001  # pydicom raises many types for values it cannot decode
        log.warning("worklist item cannot be read (%s); skipped", type(exc).__name__)
        return None


class MwlPoller:
    """Polls a RIS Modality Worklist SCP and upserts what it lists into the order store.

    Parameters
    ----------
    source
        The RIS worklist SCP and what to ask it for (``RoutingConfig.mwl_source``).
    store
        Where the orders go.
    calling_ae
        The router's own AE title.
    today
        Today's date (local time); tests pin it.
    connect_timeout, acse_timeout, dimse_timeout
        Seconds to wait for TCP connect, association negotiation and each C-FIND response.
    """

    def __init__(
        self,
        source: MwlSource,
        store: OrderStore,
        calling_ae: str,
        *,
        today: Callable[[], datetime.date] = datetime.date.today,
        connect_timeout: float = 10.0,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 60.0,
    ) -> None:
        self.source = source
        self.store = store
        self.calling_ae = calling_ae
        self._today = today
        self._timeouts = (connect_timeout, acse_timeout, dimse_timeout)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def _where(self) -> str:
        s = self.source
        return f"RIS worklist {s.ae_title}@{s.host}:{s.port}"

    def poll_once(self) -> PollResult:
        """Query the RIS worklist once and upsert every listed order; never raises for a RIS or store problem.

        Returns
        -------
        PollResult
            The outcome (also counted in ``pacsflow_mwl_polls_total``) and the per-item upsert outcomes.
        """
        result = PollResult("failed")
        try:
            items, failure = self._query()
        except _Unreachable as exc:
            log.warning("%s: %s; asking again in %.0fs", self._where, exc, self.source.poll_seconds)
            result.outcome = "unreachable"
        else:
            # Items listed before a failure are complete entries on their own: they are stored either way.
            try:
                for item in items:
                    self._upsert(item, result)
            except _StoreFailed as exc:
                failure = failure or str(exc)
            if failure is None:
                result.outcome = "success"
            else:
                log.warning("%s: %s; asking again in %.0fs", self._where, failure, self.source.poll_seconds)
        metrics.MWL_POLLS.labels(result.outcome).inc()
        for outcome, n in result.items.items():
            metrics.MWL_ITEMS.labels(outcome).inc(n)
        log.info("%s polled: %s, %s", self._where, result.outcome,
                 ", ".join(f"{n} {k}" for k, n in sorted(result.items.items())) or "no items")
        return result

    def _upsert(self, order: Order | None, result: PollResult) -> None:
        if order is None:
            outcome = "skipped"
            log.warning("%s listed an item without Accession Number or Patient ID, or unreadable; skipped",
                        self._where)
        else:
            try:
                outcome = self.store.upsert(order)
            except (sqlite3.Error, OSError, PacsflowError) as exc:
                raise _StoreFailed(f"order {order.key} could not be stored ({type(exc).__name__})") from exc
            log.debug("order %s from the worklist: %s", order.key, outcome)
        result.items[outcome] = result.items.get(outcome, 0) + 1

    def _query(self) -> tuple[list[Order | None], str | None]:
        """One association, one C-FIND: the mapped items and, when the query did not end in success, why."""
        connect_timeout, acse_timeout, dimse_timeout = self._timeouts
        ae = AE(ae_title=self.calling_ae)
        ae.connection_timeout = connect_timeout
        ae.acse_timeout = acse_timeout
        ae.dimse_timeout = dimse_timeout
        ae.network_timeout = dimse_timeout
        ae.add_requested_context(ModalityWorklistInformationFind)
        try:
            tls_args = dicomnet.tls_args(self.source.tls, self.source.host)
        except (OSError, ssl.SSLError) as exc:
            raise _Unreachable(f"mwlSource.tls: cannot load the CA, certificate or key files ({type(exc).__name__}); "
                               "check the mounted Secret") from None
        assoc = ae.associate(self.source.host, self.source.port, ae_title=self.source.ae_title,
                             evt_handlers=[(evt.EVT_CONN_OPEN, dicomnet.set_nodelay_on_connect)], tls_args=tls_args)
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "cannot connect or association aborted"
            if tls_args is not None and not assoc.is_rejected:
                reason += " (over TLS: a failed handshake, e.g. an untrusted server certificate, is logged above)"
            raise _Unreachable(f"{reason}; check that it runs and accepts calling AE title {self.calling_ae!r}")
        items: list[Order | None] = []
        failure: str | None = "no final C-FIND response (timed out or association aborted)"
        try:
            query = build_query(self.source, self._today())
            for status, identifier in assoc.send_c_find(query, ModalityWorklistInformationFind):
                code = int(status.Status) if status is not None and "Status" in status else None
                if code is None:
                    break  # no response: DIMSE timeout or aborted association
                if code in PENDING:
                    if identifier is not None:
                        items.append(_read_item(identifier))
                    continue
                failure = None if code == 0x0000 else f"C-FIND answered status 0x{code:04X}"
                break
        finally:
            if assoc.is_established:
                assoc.release()
        return items, failure

    def start(self) -> None:
        """Poll now and then every ``pollSeconds`` from a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mwl-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and wait for a poll in progress to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=sum(self._timeouts) + 5)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001  # a bug must not end polling for good; counted, logged
                metrics.MWL_POLLS.labels("failed").inc()
                # The type only: a message could quote a value from the RIS (patient data).
                log.error("%s: poll failed unexpectedly (%s); asking again in %.0fs", self._where,
                          type(exc).__name__, self.source.poll_seconds)
            self._stop.wait(self.source.poll_seconds)


class _Unreachable(Exception):
    pass


class _StoreFailed(Exception):
    pass
