"""MPPS SCP: the modality says when it has finished (PS3.4 Annex F, Modality Performed Procedure Step SOP Class).

A DIMSE edge on the router's own AE title and port (:class:`~pacsflow_router.ingest.scp.DicomReceiver` takes it
through ``services=``): N-CREATE and N-SET are translated into :class:`~pacsflow_router.ingest.completion.MppsStore`
calls, which commit the step to the spool's ``state.db`` before success is answered. What a COMPLETED or
DISCONTINUED step does to its study is decided in :mod:`pacsflow_router.ingest.completion`.

Answers (PS3.4 F.7.2.1.2 / F.7.2.2.2, PS3.7 Annex C), in one table: :data:`REFUSALS`.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.sop_class import ModalityPerformedProcedureStep  # type: ignore[attr-defined]  # generated at import

from .. import dicomnet, metrics
from ..domain import study_key
from ..ingest.completion import STATUSES, ListedInstance, MppsStore, Outcome, PerformedStep
from ..ingest.spool import Spool
from ..ingest.studies import StudyTracker

log = logging.getLogger(__name__)

dicomnet.keep_identifiers_out_of_logs()

#: The one abstract syntax this edge serves.
SOP_CLASS_UID = str(ModalityPerformedProcedureStep)

#: Refusals: why -> (DIMSE status, Error ID or None, Error Comment). Error Comments are LO (64 chars) and carry no
#: identifiers, only what the sender should fix.
REFUSALS: dict[str, tuple[int, int | None, str]] = {
    # N-CREATE for an SOP Instance UID already created (PS3.4 F.7.2.1.2).
    "duplicate": (0x0111, None, "MPPS SOP Instance already exists"),
    # N-SET for a step never created (PS3.7 Annex C: no such object instance).
    "no-such-instance": (0x0112, None, "No such MPPS SOP Instance"),
    # N-SET on a COMPLETED or DISCONTINUED step: a final step may no longer be updated (PS3.4 F.7.2.2.2, Error ID
    # A710). Nothing is changed, so a modality that re-sends its final N-SET does not move the study's clock.
    "already-final": (0x0110, 0xA710, "Performed Procedure Step may no longer be updated"),
    # A status other than IN PROGRESS / COMPLETED / DISCONTINUED, or an N-CREATE not IN PROGRESS (PS3.4 F.7.2.1:
    # a step is created IN PROGRESS), or an N-CREATE without Affected SOP Instance UID (the SCU provides it).
    "invalid-status": (0x0106, None, "Performed Procedure Step Status value is not valid"),
    "no-instance-uid": (0x0106, None, "N-CREATE needs an Affected SOP Instance UID"),
    # Type 1 attributes the completion rule needs (PS3.4 F.7.2.1 Table F.7.2-1).
    "no-study-uid": (0x0120, None, "Scheduled Step Attributes Sequence lacks Study Instance UID"),
    "no-status": (0x0120, None, "Performed Procedure Step Status is missing"),
    "undecodable": (0x0110, None, "The attribute list could not be decoded"),
    # The spool's database failed: the modality keeps its step and retries; nothing half-written (one transaction).
    "store-failed": (0x0110, None, "MPPS could not be stored; retry"),
}

_LABELS = {"IN PROGRESS": "in-progress", "COMPLETED": "completed", "DISCONTINUED": "discontinued"}

Handler = Callable[[evt.Event], tuple[Dataset, Dataset | None]]


class _Refused(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _status(why: str) -> Dataset:
    code, error_id, comment = REFUSALS[why]
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment
    if error_id is not None:
        ds.ErrorID = error_id
    return ds


def _success() -> Dataset:
    ds = Dataset()
    ds.Status = 0x0000
    return ds


def _decode(event: evt.Event, attr: str) -> Dataset:
    try:
        ds = getattr(event, attr)
        # pydicom decodes lazily: touch every element now so bad bytes fail here, not half-way through the store.
        for _ in ds.iterall():
            pass
    # pydicom raises almost anything on hostile bytes (struct.error, ValueError, KeyError ...): all of them mean
    # "cannot decode" and become a failure status, never a crashed association.
    except Exception:  # noqa: BLE001
        raise _Refused("undecodable") from None
    assert isinstance(ds, Dataset)
    return ds


def _checked_status(ds: Dataset, *, required: bool) -> str | None:
    if "PerformedProcedureStepStatus" not in ds:
        if required:
            raise _Refused("no-status")
        return None
    value = str(ds.PerformedProcedureStepStatus or "").strip()
    if value not in STATUSES:
        raise _Refused("invalid-status")
    return value


def listed_instances(ds: Dataset) -> tuple[ListedInstance, ...] | None:
    """The instances an MPPS lists: Performed Series Sequence > Referenced Image Sequence and Referenced Non-Image
    Composite SOP Instance Sequence (PS3.3 C.4.17). None when the data set has no Performed Series Sequence."""
    if "PerformedSeriesSequence" not in ds:
        return None
    found: list[ListedInstance] = []
    for series in ds.PerformedSeriesSequence:
        series_uid = str(series.get("SeriesInstanceUID", "") or "")
        for seq in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for item in series.get(seq) or ():
                sop = str(item.get("ReferencedSOPInstanceUID", "") or "")
                if sop:
                    found.append(ListedInstance(series_uid, sop))
    return tuple(found)


def study_uids(ds: Dataset) -> tuple[str, ...]:
    """Study Instance UIDs of the Scheduled Step Attributes Sequence (one per scheduled step; often one)."""
    uids: list[str] = []
    for item in ds.get("ScheduledStepAttributesSequence") or ():
        uid = str(item.get("StudyInstanceUID", "") or "")
        if uid and uid not in uids:
            uids.append(uid)
    return tuple(uids)


def _count(event_name: str, status: str | None) -> None:
    metrics.MPPS.labels(event_name, _LABELS.get(status or "", "refused")).inc()


def mpps_service(target: StudyTracker | Spool, on_change: Callable[[], None] | None = None
                 ) -> tuple[list[str], list[tuple[evt.InterventionEvent, Handler]]]:
    """The MPPS SCP as a ``DicomReceiver(services=[...])`` entry.

    Parameters
    ----------
    target
        The study tracker (or its spool) whose ``state.db`` records the steps.
    on_change
        Called on the association thread after a step was stored (e.g. wake the pipeline: a COMPLETED step may make
        a study due at once). Keep it cheap.

    Returns
    -------
    tuple
        ``([MPPS SOP Class UID], [(evt.EVT_N_CREATE, handler), (evt.EVT_N_SET, handler)])``.
    """
    store = MppsStore(target.spool if isinstance(target, StudyTracker) else target)

    def changed() -> None:
        if on_change is not None:
            on_change()

    def handle_create(event: evt.Event) -> tuple[Dataset, Dataset | None]:
        request = event.request
        assert isinstance(request, N_CREATE)  # the handler is bound to EVT_N_CREATE only
        uid = request.AffectedSOPInstanceUID
        try:
            if not uid:
                raise _Refused("no-instance-uid")
            ds = _decode(event, "attribute_list")
            status = _checked_status(ds, required=True)
            if status != "IN PROGRESS":
                raise _Refused("invalid-status")
            studies = study_uids(ds)
            if not studies:
                raise _Refused("no-study-uid")
            step = PerformedStep(str(uid), status, studies, listed_instances(ds),
                                 str(ds.get("Modality", "") or "") or None)
            outcome = _store(lambda: store.create(step))
            if outcome is Outcome.DUPLICATE:
                raise _Refused("duplicate")
        except _Refused as refused:
            log.warning("MPPS N-CREATE refused: %s", REFUSALS[refused.why][2])
            _count("n-create", None)
            return _status(refused.why), None
        log.info("MPPS %s created IN PROGRESS for %d stud(ies): %s", study_key(str(uid)), len(studies),
                 ", ".join(study_key(s) for s in studies))
        _count("n-create", status)
        changed()
        return _success(), Dataset()

    def handle_set(event: evt.Event) -> tuple[Dataset, Dataset | None]:
        request = event.request
        assert isinstance(request, N_SET)  # the handler is bound to EVT_N_SET only
        uid = str(request.RequestedSOPInstanceUID or "")
        try:
            ds = _decode(event, "modification_list")
            status = _checked_status(ds, required=False)
            outcome = _store(lambda: store.update(uid, status, listed_instances(ds)))
            if outcome is Outcome.NO_SUCH_INSTANCE:
                raise _Refused("no-such-instance")
            if outcome is Outcome.ALREADY_FINAL:
                raise _Refused("already-final")
        except _Refused as refused:
            log.warning("MPPS N-SET refused: %s", REFUSALS[refused.why][2])
            _count("n-set", None)
            return _status(refused.why), None
        now = store.status(uid)
        log.info("MPPS %s set %s (%d listed instance(s))", study_key(uid), now, len(store.listed(uid)))
        _count("n-set", now)
        changed()
        return _success(), Dataset()

    return [SOP_CLASS_UID], [(evt.EVT_N_CREATE, handle_create), (evt.EVT_N_SET, handle_set)]


def _store(call: Callable[[], Outcome]) -> Outcome:
    try:
        return call()
    except (sqlite3.Error, OSError) as exc:
        log.error("MPPS could not be stored, answered processing failure: %s", exc)
        raise _Refused("store-failed") from None

