"""One complete study through every use case: match -> preprocess -> infer -> findings -> mode gate -> SR/audit.

This is the router's one data path (ARCHITECTURE.md "Data path"). It runs on the pipeline thread, never on a DICOM
association thread. Exactly-once per study and use case comes from three durable facts: the study tracker's
``mark_done`` row, the outbox's uniqueness on the SR's deterministic SOP Instance UID, and the audit log's
uniqueness on (study, use case, model version). A crash between any two of them repeats the work on restart and the
repeated write is a no-op.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from . import __version__, metrics
from .analysis.findings import summarize
from .analysis.inference import InferenceBackend
from .analysis.matching import select_series
from .analysis.preprocess import Backend, load_spec, preprocess_series
from .analysis.volume import load_study
from .config import RoutingConfig, UseCase
from .domain import Finding, Series, Study, StudyRef, StudyResult
from .errors import InferenceError, InferenceUnavailableError
from .ingest.studies import StudyTracker
from .results.audit import AuditLog
from .results.export import Outbox
from .results.reports import build_sr

log = logging.getLogger(__name__)

# Triton priority levels: 1 is served first. Triage studies jump the queue; silent ones never delay clinical work.
PRIORITY = {"triage": 1, "assistive": 2, "silent": 3}


def analyse(series: Series, use_case: UseCase, backend: InferenceBackend, model_repository: str | Path, *,
            preprocess_backend: Backend = "dali", timings: dict[str, float] | None = None) -> Finding:
    """The AI step of one use case on one series: preprocess (the model's spec) -> infer -> study-level finding.

    ``timings``, when given, receives ``preprocess`` and ``inference`` seconds. Triage requests get a higher
    Triton priority than assistive and silent ones (:data:`PRIORITY`).
    """
    model = use_case.model
    t0 = time.monotonic()
    batch = preprocess_series(series, load_spec(model_repository, model), backend=preprocess_backend)
    t1 = time.monotonic()
    output = backend.infer(model, batch, priority=PRIORITY[use_case.mode])
    if timings is not None:
        timings.update(preprocess=t1 - t0, inference=time.monotonic() - t1)
    return summarize(series, output, critical_threshold=use_case.triage.critical_threshold)


@dataclass
class Pipeline:
    """Processes complete studies; holds no state of its own beyond the components it is given."""

    config: RoutingConfig
    tracker: StudyTracker
    backend: InferenceBackend
    outbox: Outbox
    audit: AuditLog
    preprocess_backend: Backend = "dali"

    def process(self, ref: StudyRef) -> bool:
        """Run every use case on one complete study.

        Returns True when the study is finished (every use case has its one result), False when it must be retried
        later (the inference backend is unavailable); the study then stays durable and due.
        """
        started = time.monotonic()
        study = load_study(ref)
        timings_base = {"load": time.monotonic() - started}
        for use_case in self.config.use_cases:
            if self.tracker.is_done(ref.study_uid, use_case.name):
                continue
            series = select_series(use_case.match, study)
            if series is None:
                self.tracker.mark_done(ref.study_uid, use_case.name, "not-applicable")
                continue
            try:
                outcome = self._run_use_case(study, series, use_case, dict(timings_base))
            except InferenceUnavailableError as exc:
                log.warning("study %s use case %s waits: %s", ref.key, use_case.name, exc)
                metrics.INFERENCE_UNAVAILABLE.labels(use_case.name).inc()
                return False
            except InferenceError as exc:
                # Permanent for this study (e.g. a pinned version the repository does not have): audit, move on.
                log.error("study %s use case %s failed: %s", ref.key, use_case.name, exc)
                self._record_error(ref, use_case, str(exc))
                outcome = "error"
            self.tracker.mark_done(ref.study_uid, use_case.name, outcome)
        self.tracker.finish(ref.study_uid)
        return True

    def give_up(self, ref: StudyRef, reason: str) -> None:
        """Finish a study that keeps failing (e.g. undecodable pixel data): one audited error per use case.

        Without this a poison study would be retried forever and hold its spool space; the audit trail and the
        ``error`` outcome metric tell the SRE which study key to look at.
        """
        for use_case in self.config.use_cases:
            if self.tracker.is_done(ref.study_uid, use_case.name):
                continue
            self._record_error(ref, use_case, reason)
            self.tracker.mark_done(ref.study_uid, use_case.name, "error")
        self.tracker.finish(ref.study_uid)

    def _record_error(self, ref: StudyRef, use_case: UseCase, reason: str) -> None:
        self.audit.record_result(
            study_key=ref.key, use_case=use_case.name, mode=use_case.mode,
            model_name=use_case.model.name, model_version=use_case.model.version,
            probability=None, critical=False, outcome=f"error: {reason}", timings={},
            destination=None, destination_status=None,
        )
        metrics.STUDIES_PROCESSED.labels(use_case.name, "error").inc()

    def _run_use_case(self, study: Study, series: Series, use_case: UseCase, timings: dict[str, float]) -> str:
        model = use_case.model
        threshold = use_case.triage.critical_threshold
        finding = analyse(series, use_case, self.backend, self.config.inference.model_repository,
                          preprocess_backend=self.preprocess_backend, timings=timings)
        metrics.PREPROCESS_SECONDS.labels(use_case.name).observe(timings["preprocess"])
        metrics.INFERENCE_SECONDS.labels(use_case.name, model.name, str(model.version)).observe(timings["inference"])
        critical = use_case.mode == "triage" and finding.probability >= threshold
        result = StudyResult(
            use_case=use_case.name, model_name=model.name, model_version=model.version,
            finding=finding, critical=critical, timings=timings,
        )
        destination = None
        # The mode gate (ARCHITECTURE.md "What each mode does"): silent never sends anything anywhere.
        if use_case.mode in ("assistive", "triage") and use_case.outputs.structured_report is not None:
            t3 = time.monotonic()
            sr = build_sr(study, result, use_case, software_version=__version__)
            timings["report"] = time.monotonic() - t3
            destination = use_case.outputs.structured_report.destination
            self.outbox.enqueue(destination, sr, study_key=study.ref.key, use_case=use_case.name,
                                last_received=study.ref.last_received)
        outcome = {"silent": "logged-silent", "assistive": "reported", "triage": "reported"}[use_case.mode]
        if critical:
            outcome = "reported-critical"
            metrics.CRITICAL_FINDINGS.labels(use_case.name).inc()
            log.warning("study %s flagged CRITICAL by %s (p=%.3f)", study.ref.key, use_case.name, finding.probability)
        self.audit.record_result(
            study_key=study.ref.key, use_case=use_case.name, mode=use_case.mode,
            model_name=model.name, model_version=model.version, probability=finding.probability,
            critical=critical, outcome=outcome, timings=timings,
            destination=destination, destination_status="queued" if destination else None,
        )
        metrics.STUDIES_PROCESSED.labels(use_case.name, outcome).inc()
        log.info("study %s use case %s (%s): p=%.3f -> %s", study.ref.key, use_case.name, use_case.mode,
                 finding.probability, outcome)
        return outcome
