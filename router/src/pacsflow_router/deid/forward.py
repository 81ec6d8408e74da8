"""Sending a study to an external AI: every instance de-identified (annex_e.py), its pseudonyms recorded
(pseudonyms.py) before it is queued, and nothing reaching an ``external`` destination unless it is de-identified."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .. import metrics
from ..config import UseCase
from ..domain import Series, Study
from ..errors import ExportError
from ..results.audit import AuditLog
from ..results.export import Outbox, Sender
from .annex_e import DeidentificationError, deidentify
from .pseudonyms import PseudonymStore

log = logging.getLogger(__name__)


class NotDeidentifiedError(ExportError):
    """An instance without PatientIdentityRemoved YES was about to go to an external destination."""

    permanent = True
    final = True  # resending cannot fix it: parked at once


@dataclass
class ExternalOnly:
    """Wraps the sender of an ``external`` destination: what is not de-identified is refused, never sent."""

    sender: Sender
    destination: str

    def send(self, ds: Dataset) -> int:
        if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
            raise NotDeidentifiedError(
                f"destination {self.destination} is external: only de-identified instances go there (refused an "
                "instance without Patient Identity Removed YES)")
        return self.sender.send(ds)

    def __getattr__(self, name: str) -> object:  # release_if_idle, close, nodelay: the wrapped client's
        return getattr(self.sender, name)


@dataclass
class ExternalSender:
    """De-identifies a selected series and queues it for the use case's external destination."""

    store: PseudonymStore
    outbox: Outbox
    audit: AuditLog

    def send(self, study: Study, series: Series, use_case: UseCase) -> str:
        """Queue every instance of ``series`` de-identified; returns the audit outcome.

        An instance that cannot be de-identified as configured (burned-in text) is left out and counted; the
        others go. Pseudonyms are recorded (durably) before the instance is queued, so a result can always be
        re-identified.
        """
        assert use_case.external is not None
        options = use_case.external.deidentification
        destination = use_case.external.destination
        sent = refused = 0
        reasons: set[str] = set()
        for path in study.ref.paths:
            try:
                ds = pydicom.dcmread(path)
            except (InvalidDicomError, OSError) as exc:
                log.warning("study %s: an instance was not readable for the external AI (%s)", study.ref.key,
                            type(exc).__name__)
                continue
            if str(ds.get("SeriesInstanceUID", "")) != series.series_uid:
                continue
            try:
                if ds.file_meta.TransferSyntaxUID.is_compressed:
                    # The outbox's C-STORE proposes uncompressed syntaxes only: send the pixels decoded.
                    ds.decompress()
            except (RuntimeError, NotImplementedError, ValueError, AttributeError) as exc:
                refused += 1
                reasons.add(f"pixel data could not be decompressed ({type(exc).__name__})")
                metrics.DEIDENTIFIED.labels(use_case.name, "refused").inc()
                continue
            try:
                result = deidentify(ds, options, self.store.keys)
            except DeidentificationError as exc:
                refused += 1
                reasons.add(str(exc))
                metrics.DEIDENTIFIED.labels(use_case.name, "refused").inc()
                continue
            self.store.record(result, use_case.name)
            self.outbox.enqueue(destination, result.dataset, study_key=study.ref.key, use_case=use_case.name,
                                last_received=study.ref.last_received)
            metrics.DEIDENTIFIED.labels(use_case.name, "sent").inc()
            sent += 1
        if sent == 0:
            outcome = "not analysed: nothing could be sent to the external AI" + (
                f" ({'; '.join(sorted(reasons))})" if reasons else "")
        else:
            outcome = f"sent-external: {sent} instance(s) de-identified" + (
                f", {refused} refused ({'; '.join(sorted(reasons))})" if refused else "")
        self.audit.record_result(
            study_key=study.ref.key, use_case=use_case.name, mode=use_case.mode, model_name=use_case.model.name,
            model_version=use_case.model.version, probability=None, critical=False, outcome=outcome, timings={},
            destination=destination if sent else None, destination_status="queued" if sent else None)
        log.info("study %s use case %s: %d instance(s) de-identified for %s, %d refused", study.ref.key,
                 use_case.name, sent, destination, refused)
        return "sent-external" if sent else "not-analysed"
