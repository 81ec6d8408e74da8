"""One complete study through every use case: match -> preprocess -> infer -> findings -> mode gate -> SR/audit.

This is the router's one data path (ARCHITECTURE.md "Data path"). It runs on the pipeline thread, never on a DICOM
association thread. Exactly-once per study and use case comes from three durable facts: the study tracker's
``mark_done`` row, the outbox's uniqueness on the SR's deterministic SOP Instance UID, and the audit log's
uniqueness on (study, use case, model version, revision). A crash between any two of them repeats the work on
restart and the repeated write is a no-op.

Late instances (ingest/studies.py "Late instances"): a study re-opened by a new instance is processed again; a use
case whose analysed instances are unchanged is skipped, one whose series changed runs again and its result is an
amendment (revision + 1, a new SR naming the previous one as its predecessor, the same Tracking UID).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.sr.coding import Code
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, metrics
from .analysis.acceptance import Selection, check_chosen, screen
from .analysis.findings import summarize
from .analysis.inference import InferenceBackend
from .analysis.manifest import CodedConcept, ModelManifest, algorithm_version, load_manifest
from .analysis.matching import order_mismatch
from .analysis.preprocess import Backend, load_spec, preprocess_series
from .analysis.volume import DecodedInstance, load_study
from .config import ModelRef, RoutingConfig, UseCase
from .deid.forward import ExternalSender
from .domain import Finding, Order, Series, Study, StudyRef, StudyResult, study_key
from .errors import InferenceError, InferenceUnavailableError
from .ingest.studies import ReportRecord, StudyTracker
from .predecode import Predecoder
from .results.approvals import Approvals
from .results.audit import AuditLog
from .results.export import Outbox
from .results.reports import (
    Predecessor,
    ReportSpec,
    analysed_digest,
    complete_sr,
    draft_sr,
    report_uids,
    tracking_uid,
)
from .results.review import review_row
from .results.store import ResultsStore
from .workflow.alerts import Coded
from .workflow.approval import hold_critical
from .workflow.critical import CriticalFinding, send_critical
from .workflow.orders import OrderStore

log = logging.getLogger(__name__)

# Triton priority levels: 1 is served first. Triage studies jump the queue; silent ones never delay clinical work.
PRIORITY = {"triage": 1, "assistive": 2, "silent": 3}
# A critical result's alerts go out before its SR is built; the SR waits at most this long for them (a receiver that
# is down does not hold the SR longer).
ALERT_HEAD_START_SECONDS = 0.25
# After queueing its SR, the pipeline waits at most this long for the delivery before its bookkeeping writes.
SR_HEAD_START_SECONDS = 0.25


def analyse(series: Series, use_case: UseCase, backend: InferenceBackend, model_repository: str | Path, *,
            preprocess_backend: Backend = "dali", timings: dict[str, float] | None = None,
            before_inference: Callable[[], None] | None = None) -> Finding:
    """The AI step of one use case on one series: preprocess (the model's spec) -> infer -> study-level finding.

    ``timings``, when given, receives ``preprocess`` and ``inference`` seconds. Triage requests get a higher
    Triton priority than assistive and silent ones (:data:`PRIORITY`). ``before_inference``, when given, runs
    between the two (the pipeline waits there for the domain check that ran beside preprocessing); whatever it
    raises propagates and the model is never asked.
    """
    model = use_case.model
    t0 = time.monotonic()
    batch = preprocess_series(series, load_spec(model_repository, model), backend=preprocess_backend)
    t1 = time.monotonic()
    if before_inference is not None:
        before_inference()
    t2 = time.monotonic()
    output = backend.infer(model, batch, priority=PRIORITY[use_case.mode])
    if timings is not None:
        timings.update(preprocess=t1 - t0, inference=time.monotonic() - t2)
    return summarize(series, output, critical_threshold=use_case.triage.critical_threshold,
                     slice_weights=load_manifest(model_repository, model).output.slice_weights)


def _code(concept: CodedConcept) -> Code:
    return Code(concept.value, concept.scheme, concept.meaning)


def decision_threshold(use_case: UseCase, manifest: ModelManifest) -> float:
    """The use case's ``decisionThreshold``, else the model's validated operating point."""
    if use_case.decision_threshold is not None:
        return use_case.decision_threshold
    return manifest.operating_point.decision_threshold


def is_critical(use_case: UseCase, probability: float, decision: float) -> bool:
    """Triage flags a study critical at or above its critical threshold, and never below the decision threshold.

    A manifest's operating point can be above a use case's ``criticalThreshold`` (config validation sees only the
    use case's own ``decisionThreshold``); the stricter threshold wins so the SR never says "Absent" for a study the
    worklist flags critical.
    """
    return use_case.mode == "triage" and probability >= max(use_case.triage.critical_threshold, decision)


def report_spec(use_case: UseCase, manifest: ModelManifest, model_repository: str | Path) -> ReportSpec:
    """What the SR says for a use case (codes, statements, thresholds, the model's version string), from its
    model's manifest: the router names no model."""
    finding = manifest.finding
    return ReportSpec(
        finding_type=_code(finding.type),
        procedure=_code(finding.procedure),
        present_statement=finding.present_statement,
        absent_statement=finding.absent_statement,
        finding_site=_code(finding.site) if finding.site is not None else None,
        algorithm_version=algorithm_version(model_repository, use_case.model),
        decision_threshold=decision_threshold(use_case, manifest),
        critical_threshold=use_case.triage.critical_threshold if use_case.mode == "triage" else None,
        image_only=manifest.output.geometry == "image",
    )


class OutOfDomain(Exception):
    """The domain check, run beside preprocessing, found the chosen series outside the model's domain: the model is
    not asked and the study is "not analysed" (``selection`` says why)."""

    def __init__(self, selection: Selection) -> None:
        super().__init__(selection.explanation)
        self.selection = selection


def analysed_instances(series: Series) -> list[str]:
    """What a result on a series covers: the analysed instances' SOP Instance UIDs, and markers for the instances
    skipped and the images missing (the SR states those too, so a late instance that changes them changes the SR)."""
    covered = [str(s.header.SOPInstanceUID) for s in series.slices]
    covered += [f"skipped:{s.sop_instance_uid}" for s in series.skipped]
    if series.missing:
        covered.append(f"missing:{series.missing}")
    return covered


def repository_manifests(model_repository: str | Path) -> Callable[[ModelRef], Path]:
    """Manifests read from one repository (``inference.modelRepository``): its root, whatever the model."""
    repository = Path(model_repository)
    return lambda model: repository


@dataclass
class Pipeline:
    """Processes complete studies; holds no state of its own beyond the components it is given."""

    config: RoutingConfig
    tracker: StudyTracker
    backend: InferenceBackend
    outbox: Outbox
    audit: AuditLog
    preprocess_backend: Backend = "dali"
    orders: OrderStore | None = None
    """The order store: a critical triage result flags its study's order and is stated with it."""
    results: ResultsStore | None = None
    """Where the reviewer panel's rows go (default: the audit's engine, ``config.audit.url``: one results store)."""
    external: ExternalSender | None = None
    """Sends a use case with ``external`` to its external AI, de-identified (deid/); set when ``externalAi`` is."""
    predecoder: Predecoder | None = None
    """Instances decoded while the study arrived (predecode.py); without it, or for what it has not decoded, the
    study is decoded at completion."""
    manifests: Callable[[ModelRef], Path] | None = None
    """The repository root holding a pinned model's manifest (``ManifestMirror.repository`` on Triton); default:
    ``inference.modelRepository``."""
    _retired: list[InferenceBackend] = field(default_factory=list, init=False, repr=False)
    """Backends a config reload replaced; :meth:`close_retired` closes them on the pipeline's thread."""
    _drafts: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        1, thread_name_prefix="pacsflow-sr-draft"), init=False, repr=False)
    """Drafts SRs while the model runs (one at a time: the pipeline runs one use case at a time)."""
    _checks: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        1, thread_name_prefix="pacsflow-domain-check"), init=False, repr=False)
    """Runs the input-domain check beside preprocessing (DALI and ONNX Runtime leave the interpreter free), and a
    result's audit record beside its SR's durable write."""

    def __post_init__(self) -> None:
        if self.results is None:
            self.results = ResultsStore.on_engine(self.audit.engine)
        if self.manifests is None:
            self.manifests = repository_manifests(self.config.inference.model_repository)

    def replace_backend(self, backend: InferenceBackend, manifests: Callable[[ModelRef], Path]) -> None:
        """Infer with ``backend`` and read manifests through ``manifests`` from now on (a reload changed
        ``inference``). The replaced backend is closed by :meth:`close_retired` on the pipeline's own thread, so
        never under an inference it is running."""
        self._retired.append(self.backend)
        self.backend = backend
        self.manifests = manifests

    def close_retired(self) -> None:
        """Close the backends :meth:`replace_backend` replaced (call on the thread that runs :meth:`process`)."""
        while self._retired:
            try:
                self._retired.pop().close()
            except Exception:  # noqa: BLE001 - freeing an old backend must never stop the pipeline
                log.exception("a replaced inference backend could not be closed; its resources may linger")

    def close(self) -> None:
        """Close the backend and any replaced one: the router is stopping, nothing is processed any more."""
        self.close_retired()
        self.backend.close()

    def process(self, ref: StudyRef) -> bool:
        """Run every use case on one complete study.

        Returns True when the study is finished (every use case has its one result), False when it must be retried
        later (the inference backend is unavailable); the study then stays durable and due.
        """
        if self.predecoder is None:
            return self._process(ref)
        decoded = self.predecoder.take(ref)
        try:
            return self._process(ref, decoded)
        finally:
            self.predecoder.release(ref.study_uid)

    def _process(self, ref: StudyRef, decoded: dict[str, DecodedInstance] | None = None) -> bool:
        started = time.monotonic()
        study = load_study(ref, decoded)
        timings_base = {"load": time.monotonic() - started}
        order = self._order_for(study)
        # How the study came to be complete (MPPS or the stable window) and which order it belongs to, per record.
        context: dict[str, object] = {"completion": self.tracker.completion_reason(ref.study_uid),
                                      "order": order.key if order else None}
        self.audit.record_study_received(ref.key, instances=len(ref.paths), completion=context["completion"])
        procedure_codes = (order.procedure_code,) if order is not None and order.procedure_code else ()
        for use_case in self.config.use_cases:
            previous = self.tracker.latest_report(ref.study_uid, use_case.name)
            done = self.tracker.is_done(ref.study_uid, use_case.name)
            # A done use case is looked at again only when the study was re-opened (or resumed after a crash): it
            # runs again only if what it would analyse changed. Errors stay final until something is analysed.
            if done and previous is None and (self.tracker.outcome(ref.study_uid, use_case.name) or "").startswith(
                    "error"):
                continue
            timings = dict(timings_base)
            # The order criteria (patient class, priority, procedure, location), then the acceptance criteria
            # (analysis/acceptance.py): which series, or why none. The domain check on the chosen series runs beside
            # its preprocessing, and the model is asked only once it passed (_run_use_case); a study sent out
            # (externalAi) is checked first.
            mismatch = order_mismatch(use_case.match, order)
            assert self.manifests is not None  # __post_init__
            try:
                repository = self.manifests(use_case.model)
            except InferenceError as exc:  # Triton could not say which manifest it serves
                if (failed := self._inference_failed(ref, use_case, exc)) is None:
                    return False
                self.tracker.mark_done(ref.study_uid, use_case.name, failed, replace=done)
                continue
            manifest = load_manifest(repository, use_case.model)
            selection = None if mismatch else screen(manifest, use_case.match, study, procedure_codes=procedure_codes,
                                                     timings=timings, domain=False)
            if mismatch or selection is None or not selection.applicable:
                # Audited too, so that a reader of the audit can tell "did not apply" from "never ran".
                explanation = mismatch or (selection.explanation if selection is not None else "")
                self._record_not_applicable(ref, use_case, explanation, timings, context)
                self.tracker.mark_done(ref.study_uid, use_case.name, "not-applicable")
                continue
            if selection.series is None:
                self._not_analysed(ref, use_case, selection, timings, context, previous=previous, done=done)
                continue
            series = selection.series
            if previous is not None and previous.analysed == analysed_digest(analysed_instances(series)):
                continue  # unchanged (a late instance in another series, or a repeat): no amendment
            if use_case.external is not None and (selection := check_chosen(manifest, selection,
                                                                            timings=timings)).series is None:
                self._not_analysed(ref, use_case, selection, timings, context, previous=previous, done=done)
                continue
            if use_case.external is not None:
                # The model runs at the external AI: the series goes out de-identified, its SR comes back to the
                # results port (deid/results_scp.py). Recorded like a report so an unchanged series is not resent.
                if self.external is None:  # externalAi added by a hot reload: never run it here instead
                    self._record_error(ref, use_case, "externalAi is not running; it starts with a router restart")
                    self.tracker.mark_done(ref.study_uid, use_case.name, "error", replace=done)
                    continue
                outcome = self.external.send(study, series, use_case)
                self.tracker.record_report(ref.study_uid, use_case.name, ReportRecord(
                    revision=previous.revision + 1 if previous is not None else int(done),
                    analysed=analysed_digest(analysed_instances(series)), sr_series_uid=None, sr_sop_class_uid=None,
                    sr_sop_uid=None))
                self.tracker.mark_done(ref.study_uid, use_case.name, outcome, replace=done)
                continue
            domain = self._checks.submit(check_chosen, manifest, selection, timings=timings)
            try:
                outcome = self._run_use_case(study, series, use_case, manifest, repository, timings,
                                             previous=previous, recorded=done, selection=selection.explanation,
                                             order=order, context=context, domain=domain)
            except OutOfDomain as exc:
                self._not_analysed(ref, use_case, exc.selection, timings, context, previous=previous, done=done)
                continue
            except InferenceError as exc:
                # Preprocessing can fail before the domain check's verdict is asked for: an out-of-domain series is
                # "not analysed" all the same.
                if (checked := domain.result()).series is None:
                    self._not_analysed(ref, use_case, checked, timings, context, previous=previous, done=done)
                    continue
                failed = self._inference_failed(ref, use_case, exc)
                if failed is None:
                    return False
                outcome = failed
            self.tracker.mark_done(ref.study_uid, use_case.name, outcome, replace=done)
        # Finished only if nothing arrived since processing started; otherwise due again, and amended.
        self.tracker.finish(ref.study_uid, ref.last_received)
        return True

    def _inference_failed(self, ref: StudyRef, use_case: UseCase, exc: InferenceError) -> str | None:
        """None when the study waits for the inference backend; else ``error``, audited (permanent for this study)."""
        if isinstance(exc, InferenceUnavailableError):
            log.warning("study %s use case %s waits: %s", ref.key, use_case.name, exc)
            metrics.INFERENCE_UNAVAILABLE.labels(use_case.name).inc()
            return None
        # Permanent for this study (e.g. a pinned version the repository does not have): audit, move on.
        log.error("study %s use case %s failed: %s", ref.key, use_case.name, exc)
        self._record_error(ref, use_case, str(exc))
        return "error"

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

    def _record_review(self, study: Study, series: Series, use_case: UseCase, finding: Finding, spec: ReportSpec,
                       critical: bool, revision: int, sr_sop_uid: str | None, order: Order | None) -> None:
        """The reviewer panel's copy of the result (results/review.py). A failure is logged and counted, never
        raised: the SR, alerts and audit are out already, and failing the study would re-run inference to rebuild
        a display copy. A crash before this line repeats it as a no-op (same tracking UID and revision)."""
        assert self.results is not None  # __post_init__
        try:
            self.results.record_result(review_row(
                study, series, finding, use_case=use_case.name, mode=use_case.mode, model_name=use_case.model.name,
                model_version=use_case.model.version, decision_threshold=spec.decision_threshold,
                finding_type=(spec.finding_type.value, spec.finding_type.scheme_designator,
                              spec.finding_type.meaning),
                critical=critical, revision=revision, sr_sop_uid=sr_sop_uid, order=order))
        except (SQLAlchemyError, OSError, ValueError) as exc:
            log.error("study %s use case %s: review row not written (%s)", study.ref.key, use_case.name,
                      type(exc).__name__)
            metrics.REVIEW_RESULTS_FAILED.labels(use_case.name).inc()

    def _order_for(self, study: Study) -> Order | None:
        """The study's order: by Study Instance UID, else by accession number plus patient ID (None: no order store,
        or an unordered study, which is processed all the same)."""
        if self.orders is None:
            return None
        header = study.first_header
        # One transaction: the match is recorded on the order (a later cancel is refused; a cancel committed first
        # leaves the study unordered), and an order matched by accession + patient ID gets the study's UID.
        return self.orders.match_study(study.ref.study_uid, str(header.get("AccessionNumber", "") or ""),
                                       str(header.get("PatientID", "") or ""))

    def _record_not_applicable(self, ref: StudyRef, use_case: UseCase, explanation: str,
                               timings: dict[str, float], context: dict[str, object]) -> None:
        # One record per study and use case (the audit ignores a repeat after a crash or a re-opened study).
        self.audit.record_result(
            study_key=ref.key, use_case=use_case.name, mode=use_case.mode,
            model_name=use_case.model.name, model_version=use_case.model.version,
            probability=None, critical=False, outcome=f"not applicable: {explanation}", timings=timings,
            destination=None, destination_status=None, selection=explanation, inputs=context,
        )

    def _not_analysed(self, ref: StudyRef, use_case: UseCase, selection: Selection, timings: dict[str, float],
                      context: dict[str, object], *, previous: ReportRecord | None, done: bool) -> None:
        if previous is None:  # a study already reported keeps its result; no SR ever says "not analysed"
            self._record_not_analysed(ref, use_case, selection, timings, context)
            self.tracker.mark_done(ref.study_uid, use_case.name, "not-analysed", replace=done)

    def _record_not_analysed(self, ref: StudyRef, use_case: UseCase, selection: Selection,
                             timings: dict[str, float], context: dict[str, object]) -> None:
        assert selection.failure is not None
        reason = selection.failure
        written = self.audit.record_result(
            study_key=ref.key, use_case=use_case.name, mode=use_case.mode,
            model_name=use_case.model.name, model_version=use_case.model.version,
            probability=None, critical=False, outcome=f"not analysed: {reason.message}", timings=timings,
            destination=None, destination_status=None, selection=selection.explanation, inputs=context,
        )
        if written:  # a reprocess after a crash neither records nor counts twice
            metrics.STUDIES_NOT_ANALYSED.labels(use_case.name, reason.code).inc()
        log.info("study %s use case %s: not analysed (%s): %s", ref.key, use_case.name, reason.code,
                 selection.explanation)

    def _run_use_case(self, study: Study, series: Series, use_case: UseCase, manifest: ModelManifest,
                      repository: Path, timings: dict[str, float], *,
                      previous: ReportRecord | None = None, recorded: bool = False,
                      selection: str | None = None, order: Order | None = None,
                      context: dict[str, object] | None = None, domain: Future[Selection] | None = None) -> str:
        model = use_case.model
        spec = report_spec(use_case, manifest, repository)
        analysed = analysed_instances(series)
        predecessor = None
        if previous is not None and previous.sr_sop_uid and previous.sr_series_uid and previous.sr_sop_class_uid:
            predecessor = Predecessor(study.ref.study_uid, previous.sr_series_uid, previous.sr_sop_class_uid,
                                      previous.sr_sop_uid)
        sends_sr = use_case.mode in ("assistive", "triage") and use_case.outputs.structured_report is not None
        # Most of the SR does not depend on the result: drafted on another thread while the model runs (ONNX Runtime
        # and DALI leave the interpreter free), completed with the result below.
        draft = self._drafts.submit(draft_sr, study, series, use_case, software_version=__version__, spec=spec,
                                    analysed=analysed, predecessor=predecessor) if sends_sr else None

        def before_inference() -> None:
            # The domain check ran beside preprocessing: an out-of-domain series never reaches the model.
            if domain is not None and (checked := domain.result()).series is None:
                raise OutOfDomain(checked)
            if sends_sr:
                assert use_case.outputs.structured_report is not None
                self.outbox.prepare(use_case.outputs.structured_report.destination)  # it opens during inference

        finding = analyse(series, use_case, self.backend, repository, preprocess_backend=self.preprocess_backend,
                          timings=timings, before_inference=before_inference)
        analysed_at = dt.datetime.now(dt.UTC)
        metrics.PREPROCESS_SECONDS.labels(use_case.name).observe(timings["preprocess"])
        metrics.INFERENCE_SECONDS.labels(use_case.name, model.name, str(model.version)).observe(timings["inference"])
        critical = is_critical(use_case, finding.probability, spec.decision_threshold)
        # The audit's revision counts the use case's records on the study: after an analysed result, the next; after
        # an earlier "not applicable"/"not analysed" record (``recorded``, a late series made the study eligible), 1.
        revision = previous.revision + 1 if previous is not None else int(recorded)
        sr_uids: tuple[str | None, str | None, str | None] = (None, None, None)
        result = StudyResult(
            use_case=use_case.name, model_name=model.name, model_version=model.version,
            finding=finding, critical=critical, timings=timings,
        )
        destination = None
        outcome = {"silent": "logged-silent", "assistive": "reported", "triage": "reported"}[use_case.mode]
        if critical:
            outcome = "reported-critical"
            metrics.CRITICAL_FINDINGS.labels(use_case.name).inc()
            log.warning("study %s flagged CRITICAL by %s (p=%.3f)", study.ref.key, use_case.name, finding.probability)
            # Triage only (is_critical): HL7 order update / alert, webhooks, worklist flag (durable, once). They go
            # first, naming the SR queued right after them: the worklist must not wait for the SR to be built. A
            # crash in between repeats both as no-ops (same idempotency keys, same SR UIDs).
            planned = report_uids(study.ref.study_uid, use_case, spec, analysed)[1] if sends_sr else None
            found = CriticalFinding(finding.probability, Coded.of(manifest.finding.type),
                                    Coded.of(manifest.finding.procedure), spec.algorithm_version, planned)
            if use_case.triage.require_approval:
                # Held until a reader approves (workflow/approval.py); the SR below still goes at once.
                assert self.results is not None  # __post_init__
                hold_critical(Approvals(self.results.engine), use_case, revision=revision, study_key=study.ref.key,
                              result_key=study_key(tracking_uid(study.ref.study_uid, use_case.name, model.name)),
                              header=study.first_header, result=found, last_received=study.ref.last_received)
            else:
                send_critical(self.outbox, self.config, use_case, study_key=study.ref.key, header=study.first_header,
                              result=found, order=order, orders=self.orders, last_received=study.ref.last_received)
                # Let the alerts reach the RIS and the webhook before the SR build holds the interpreter (bounded).
                self.outbox.wait_sent(("hl7", "webhook"), ALERT_HEAD_START_SECONDS)
        if previous is not None:
            outcome = f"{outcome}-amended"

        def record() -> bool:
            return self.audit.record_result(
                study_key=study.ref.key, use_case=use_case.name, mode=use_case.mode,
                model_name=model.name, model_version=model.version, probability=finding.probability,
                critical=critical, outcome=outcome, timings=timings,
                destination=destination, destination_status="queued" if destination else None,
                revision=revision, sr_key=study_key(sr_uids[2]) if sr_uids[2] else None,
                selection=selection,
                amends_sr_key=study_key(predecessor.sop_instance_uid) if predecessor else None,
                # analysed of expected images, skipped instances (hashed) and why; how the study completed; its order
                # key
                inputs={**series.inputs(), **(context or {})},
            )

        # The mode gate (ARCHITECTURE.md "What each mode does"): silent never sends anything anywhere.
        if sends_sr:
            assert use_case.outputs.structured_report is not None
            assert draft is not None  # drafted when sends_sr
            t3 = time.monotonic()
            sr = complete_sr(draft.result(), study, result, use_case, spec=spec, contribution_datetime=analysed_at)
            sr_uids = (str(sr.SeriesInstanceUID), str(sr.SOPClassUID), str(sr.SOPInstanceUID))
            timings["report"] = time.monotonic() - t3
            destination = use_case.outputs.structured_report.destination
            # The audit record is written beside the SR's durable write and committed before the SR's outbox row: no
            # SR leaves without its record. A crash in between re-runs the study; its repeated record is a no-op.
            audited = self._checks.submit(record)
            self.outbox.enqueue(destination, sr, study_key=study.ref.key, use_case=use_case.name,
                                last_received=study.ref.last_received, before_commit=audited.result)
            audited.result()  # also when the SR was queued already (a repeat): the record's failure is this study's
            # The SR is the result: let the sender thread deliver it before the review and tracker writes below take
            # the interpreter (bounded, like the alerts' head start; the SR is durable in the outbox already).
            self.outbox.wait_sent(("dicom",), SR_HEAD_START_SECONDS)
        else:
            record()
        self._record_review(study, series, use_case, finding, spec, critical, revision, sr_uids[2], order)
        # After the SR is queued and audited: a crash before this line repeats both as no-ops (same UIDs, revision).
        self.tracker.record_report(study.ref.study_uid, use_case.name, ReportRecord(
            revision=revision, analysed=analysed_digest(analysed), sr_series_uid=sr_uids[0],
            sr_sop_class_uid=sr_uids[1], sr_sop_uid=sr_uids[2]))
        metrics.STUDIES_PROCESSED.labels(use_case.name, outcome).inc()
        log.info("study %s use case %s (%s): p=%.3f -> %s", study.ref.key, use_case.name, use_case.mode,
                 finding.probability, outcome)
        return outcome
