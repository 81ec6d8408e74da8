"""Wires the router's parts together and runs its threads.

Threads: pynetdicom's association threads (spool, MPPS, worklist queries), the HL7 listener's connection threads
(orders), the MWL poller, one pipeline thread (complete studies through the use cases), the outbox's sender thread,
and a config watcher that hot-reloads the routing config the operator renders
into a ConfigMap (use cases, modes, destinations) without dropping associations or queued studies.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pydicom.dataset import Dataset

from . import metrics
from .analysis.inference import InferenceBackend, make_backend
from .analysis.manifestmirror import ManifestMirror
from .config import MODES, ModelRef, RoutingConfig, load_config
from .configwatch import ConfigMapWatcher, text_digest
from .deid.annex_e import DeidentificationError
from .deid.forward import ExternalOnly, ExternalSender
from .deid.pseudonyms import PseudonymStore, StudyIdentity, read_key_file
from .deid.results_scp import ResultsReceiver
from .domain import study_key
from .errors import ConfigError
from .ingest.scp import DicomReceiver
from .ingest.spool import Spool
from .ingest.studies import StudyTracker
from .metricsendpoint import MetricsEndpoint
from .pipeline import Pipeline, repository_manifests
from .predecode import Predecoder
from .readiness import Readiness
from .results.approvals import Approvals
from .results.audit import AuditLog
from .results.auditforward import start_forwarder
from .results.export import MessageSender, Outbox, OutboxItem
from .results.scu import StoreClient
from .results.store import ResultsStore
from .workflow.approval import ApprovalReleaser
from .workflow.drafts import DraftSender
from .workflow.listener import Hl7Listener
from .workflow.mpps import mpps_service
from .workflow.mwl import MwlPoller
from .workflow.orders import OrderStore
from .workflow.senders import MllpSender, WebhookSender
from .workflow.worklist import worklist_service

log = logging.getLogger(__name__)

# Settings that need a new process (listening socket, spool, stores); a hot reload keeps the running values.
# A study whose processing raises unexpectedly this many times in a row is finished with an audited error.
MAX_STUDY_ATTEMPTS = 3

RESTART_ONLY = ("ae_title", "port", "bind_address", "spool_dir", "audit", "metrics", "hl7_listener", "mwl_source",
                "mpps", "worklist", "config_map", "external_ai")
# Orders that never got a study are expired at most this often (the query scans open orders only).
ORDER_EXPIRY_INTERVAL_SECONDS = 60.0
# How often reader decisions (approvals of held critical outputs, accepted drafts) are read from the results store.
REVIEW_POLL_SECONDS = 1.0


def _export_modes(old: RoutingConfig | None, new: RoutingConfig) -> None:
    """``pacsflow_use_case_mode``: 1 for each use case's current mode; a removed use case's series go."""
    for uc in old.use_cases if old is not None else ():
        if uc.name not in {u.name for u in new.use_cases}:
            for mode in MODES:
                metrics.USE_CASE_MODE.remove(uc.name, mode)
    for uc in new.use_cases:
        for mode in MODES:
            metrics.USE_CASE_MODE.labels(uc.name, mode).set(1 if uc.mode == mode else 0)


def _manifests(config: RoutingConfig, backend: InferenceBackend) -> Callable[[ModelRef], Path]:
    """Where the pipeline reads manifests: what Triton serves when ``inference.manifestMirror`` is set, else
    ``inference.modelRepository``."""
    mirror = config.inference.manifest_mirror
    if mirror is None or config.inference.backend != "triton":
        return repository_manifests(config.inference.model_repository)
    from .analysis.tritonbackend import (
        TritonBackend,  # deferred as in make_backend: only this path needs tritonclient
    )

    assert isinstance(backend, TritonBackend)
    return ManifestMirror(mirror, config.inference.model_repository, backend.served_manifest).repository


def _digest(path: Path) -> str | None:
    try:
        return text_digest(path.read_bytes())
    except OSError:
        return None


class RouterService:
    """The running router: receiver, pipeline, outbox, metrics, config watcher."""

    def __init__(self, config: RoutingConfig, *, config_path: str | None = None, config_poll_seconds: float = 2.0):
        self.config = config
        self._config_path = Path(config_path) if config_path else None
        self._config_digest = _digest(self._config_path) if self._config_path else None
        self._poll = config_poll_seconds
        spool_dir = Path(config.spool_dir)
        spool_dir.mkdir(parents=True, exist_ok=True)
        # Write-ahead (spoolWriteAhead): Success after one fdatasync of a pre-written segment (ingest/wal.py). The
        # checkpointer pause is test-only (docs/operations.md): acknowledged instances then wait for a restart's replay.
        self.spool = Spool(spool_dir, config.spool_max_disk_usage, write_ahead=config.spool_write_ahead,
                           checkpoint_paused=os.environ.get("PACSFLOW_ROUTER_TEST_PAUSE_CHECKPOINTER") == "1")
        self.tracker = StudyTracker(self.spool, config.completion.stable_seconds,
                                    by_modality=config.completion.stable_seconds_by_modality)
        self.audit = AuditLog(config.audit.url)
        self.outbox = Outbox(spool_dir / "outbox", self._sender_for, message_senders=self._message_sender_for,
                             on_result=self._on_delivery, hold=self._hold_reason)
        self.orders = OrderStore(self.spool, self.audit.engine)
        # Decodes images as they arrive, so a complete study is loaded at once (predecode.py).
        self.predecoder = Predecoder(self.tracker)
        backend = make_backend(config.inference)
        self.pipeline = Pipeline(config, self.tracker, backend, self.outbox, self.audit,
                                 orders=self.orders, predecoder=self.predecoder, manifests=_manifests(config, backend))
        approvals = Approvals(self.audit.engine)
        self.approval_releaser = ApprovalReleaser(approvals, self.outbox, self.audit, self.orders)
        self.draft_sender = DraftSender(approvals, self.outbox, self.orders)
        # The de-identification edge (deid/): studies out to external AIs, their SRs back on the results port.
        self.pseudonyms: PseudonymStore | None = None
        self.results_receiver: ResultsReceiver | None = None
        if config.external_ai is not None:
            self.pseudonyms = PseudonymStore(spool_dir / "deid" / "pseudonyms.db",
                                             read_key_file(config.external_ai.key_file))
            self.pipeline.external = ExternalSender(self.pseudonyms, self.outbox, self.audit)
            self.results_receiver = ResultsReceiver(config, self.spool, self.pseudonyms, self._deliver_reidentified)
            self.results_receiver.on_refused = self.audit.record_refusal  # same TLS door and audit as the DICOM port
        # Final-report ORU^R01 findings go to the results store as ground truth for the evidence.
        self.hl7_listener = Hl7Listener(config.hl7_listener, self.orders, ground_truth=partial(
            ResultsStore.on_engine(self.audit.engine).record_ground_truth, source="hl7"),
            on_refused=self.audit.record_refusal) if config.hl7_listener else None
        self.mwl_poller = MwlPoller(config.mwl_source, self.orders, config.ae_title) if config.mwl_source else None
        self._orders_expired_at = 0.0
        # Set when a study may have become due before its window (an MPPS step ended): the pipeline looks at once.
        self._wake = threading.Event()
        services = []
        if config.mpps.enabled:
            services.append(mpps_service(self.tracker, on_change=self._wake.set))
        if config.worklist.enabled:
            services.append(worklist_service(self.orders))
        self.receiver = DicomReceiver(config, self.spool, services=services, on_refused=self.audit.record_refusal)
        self.receiver.on_stored = self.predecoder.wake  # each store wakes the decoder (it never blocks)
        self.spool.on_indexed += [self.predecoder.wake, self._wake.set]  # write-ahead instances indexed: look again
        self._threads: list[threading.Thread] = []
        self.metrics_endpoint: MetricsEndpoint | None = None
        # GET /readyz on the metrics port: the DICOM listener accepts and the spool takes a durable write, below its
        # spoolMaxDiskUsage watermark.
        self.readiness = Readiness(self.spool.instance_dir, lambda: self.receiver.listening,
                                   space_problem=self.spool.space_problem)
        self._stop = threading.Event()
        self._failures: dict[str, int] = {}
        # Config versions the API watch delivered (digests): while the watch is open, the lagging mounted file
        # showing one of them is stale. The running config's digest (None after apply_config from code).
        self._api_digests: set[str] = set()
        self._running_digest = self._config_digest
        self._config_lock = threading.Lock()
        self.config_watcher = ConfigMapWatcher(config.config_map, self._on_api_config) if config.config_map else None

    # -- wiring -------------------------------------------------------------------------------------------------
    def _sender_for(self, destination: str) -> StoreClient | ExternalOnly:
        peer = self.config.destination(destination)
        client = StoreClient(peer, self.config.ae_title)
        # Nothing that is not de-identified reaches an external destination, whatever queued it.
        return ExternalOnly(client, destination) if peer.external else client

    def _deliver_reidentified(self, sr: Dataset, study: StudyIdentity) -> None:
        # A re-identified result goes where the use case's SRs go; the outbox's hold keeps a silent one back.
        uc = next((u for u in self.config.use_cases if u.name == study.use_case), None)
        if uc is None or uc.outputs.structured_report is None:
            raise DeidentificationError(f"use case {study.use_case} is gone or has no structuredReport output")
        self.outbox.enqueue(uc.outputs.structured_report.destination, sr, study_key=study_key(study.study_uid),
                            use_case=uc.name)

    def _message_sender_for(self, channel: str, destination: str) -> MessageSender:
        # Looked up on the running config: a destination removed by a reload raises, and the outbox keeps its items.
        if channel == "hl7":
            return MllpSender(self.config.hl7_destination(destination))
        if channel == "webhook":
            return WebhookSender(self.config.webhook(destination))
        raise LookupError(f"no sender for outbox channel {channel!r}")

    def _hold_reason(self, item: OutboxItem) -> str | None:
        # The kill switch: outputs queued for a use case now silent (or removed) are held, never sent.
        if item.use_case is None:
            return None
        uc = next((u for u in self.config.use_cases if u.name == item.use_case), None)
        if uc is None:
            return f"use case {item.use_case} is no longer in the routing config"
        if uc.mode == "silent":
            return f"use case {item.use_case} was demoted to silent"
        return None

    def _on_delivery(self, item: OutboxItem, outcome: str) -> None:
        # The pipeline enqueues every item with its study key (the audit column is NOT NULL).
        assert item.study_key is not None
        if item.channel != "dicom":
            # Its own destination name ("hl7:ris", "webhook:sectra"): the SR's delivery status stays the SR's.
            self.audit.record_delivery(study_key=item.study_key, use_case=item.use_case,
                                       destination=f"{item.channel}:{item.destination}", outcome=outcome,
                                       detail=item.kind)
            return
        self.audit.record_delivery(study_key=item.study_key, use_case=item.use_case,
                                   destination=item.destination, outcome=outcome, sr_key=study_key(item.sop_uid))
        if outcome == "delivered" and item.last_received:
            metrics.TIME_TO_RESULT.labels(item.use_case).observe(time.time() - item.last_received)

    @property
    def dicom_port(self) -> int:
        return self.receiver.port

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        # allow-list, HTTPS, bearer token; refusals to the audit like the DICOM port's
        self.metrics_endpoint = MetricsEndpoint(self.config.metrics, on_refused=self.audit.record_refusal,
                                                ready=self.readiness.check).start()
        metrics.BUILD_INFO.info({"version": __import__("pacsflow_router").__version__})
        _export_modes(None, self.config)
        self.predecoder.start()
        self.receiver.start()
        if self.results_receiver is not None:
            self.results_receiver.start()
        if self.hl7_listener is not None:
            self.hl7_listener.start()
        if self.mwl_poller is not None:
            self.mwl_poller.start()
        self.outbox.start()
        start_forwarder(self.audit.engine, self.config.audit.syslog, self._stop)  # audit chain -> syslog (ATNA)
        if self.config_watcher is not None:
            self.config_watcher.start()
        for target, name in ((self._pipeline_loop, "pipeline"), (self._watch_config, "config-watch"),
                             (self._review_loop, "review")):
            thread = threading.Thread(target=target, name=f"pacsflow-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def run_until(self, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            pass

    def stop(self) -> None:
        self._stop.set()
        if self.metrics_endpoint is not None:
            self.metrics_endpoint.stop()
        self.receiver.stop()
        if self.results_receiver is not None:
            self.results_receiver.stop()
        if self.hl7_listener is not None:
            self.hl7_listener.stop()
        if self.mwl_poller is not None:
            self.mwl_poller.stop()
        self._wake.set()
        if self.config_watcher is not None:
            self.config_watcher.stop()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.spool.wal is not None:
            self.spool.wal.stop()  # index what the segments hold (nothing is received any more)
        self.predecoder.stop()
        self.outbox.stop()
        if not any(thread.is_alive() for thread in self._threads):  # never under a study still running
            self.pipeline.close()  # Triton clients and shared-memory regions freed

    # -- threads ------------------------------------------------------------------------------------------------
    def _expire_orders(self) -> None:
        now = time.time()
        if now - self._orders_expired_at >= ORDER_EXPIRY_INTERVAL_SECONDS:
            self._orders_expired_at = now
            self.orders.expire(now, self.config.orders.expire_after_hours * 3600)

    def _pipeline_loop(self) -> None:
        while not self._stop.is_set():
            self._expire_orders()
            metrics.QUEUE_DEPTH.set(self.tracker.queue_depth())
            metrics.LATE_INSTANCES.set(self.tracker.late_instances())
            metrics.STUDIES_IN_PROGRESS.set(self.tracker.in_progress())
            due = self.tracker.due(time.time())  # each study's own window (per modality), or its MPPS
            waiting = False
            for ref in due:
                if self._stop.is_set():
                    return
                try:
                    waiting |= not self.pipeline.process(ref)
                    self._failures.pop(ref.key, None)
                except Exception as exc:  # noqa: BLE001 - one broken study must not stop the router
                    attempts = self._failures[ref.key] = self._failures.get(ref.key, 0) + 1
                    log.exception("study %s failed unexpectedly (attempt %d of %d)", ref.key, attempts,
                                  MAX_STUDY_ATTEMPTS)
                    if attempts >= MAX_STUDY_ATTEMPTS:
                        self.pipeline.give_up(ref, f"{type(exc).__name__} after {attempts} attempts")
                        self._failures.pop(ref.key, None)
                    waiting = True
            # Idle: look again when the next study's window ends (at most half a second), or at once when an MPPS
            # step ends (the wake event).
            self._wake.wait(5.0 if waiting else self._idle_wait())
            self._wake.clear()
            self.pipeline.close_retired()

    def _idle_wait(self) -> float:
        next_due = self.tracker.next_due_at()
        return 0.5 if next_due is None else min(0.5, max(0.0, next_due - time.time()))

    def _review_loop(self) -> None:
        # Decisions readers take in pacsflow-api (another process) reach the router through the results store.
        while not self._stop.wait(REVIEW_POLL_SECONDS):
            try:
                self.approval_releaser.poll(self.config)
                self.draft_sender.poll(self.config)
            except Exception:  # noqa: BLE001 - a store outage must not end the thread; the rows stay and are retried
                log.exception("reading reader decisions from the results store failed; retrying")

    def _watch_config(self) -> None:
        while not self._stop.wait(self._poll):
            if self._config_path is None:
                return
            digest = _digest(self._config_path)
            if digest is None or digest == self._config_digest:
                continue
            self._config_digest = digest
            watching = self.config_watcher is not None and self.config_watcher.connected.is_set()
            if watching and digest in self._api_digests:
                continue  # the API watch delivered this version already (the file lags it): never go back
            try:
                new = load_config(self._config_path)
            except ConfigError as exc:
                log.error("routing config changed but is invalid, keeping the running one: %s", exc)
                metrics.CONFIG_RELOADS.labels("invalid").inc()
                continue
            self.apply_config(new, digest=digest)

    def _on_api_config(self, new: RoutingConfig, digest: str) -> None:
        self._api_digests.add(digest)
        self.apply_config(new, digest=digest)

    def apply_config(self, new: RoutingConfig, *, digest: str | None = None) -> None:
        """Swap in a new routing config: use cases, modes, destinations, allowed AE titles, inference backend.

        ``digest`` (of the config's text) makes a repeat of the running version a no-op.
        """
        with self._config_lock:
            if digest is not None and digest == self._running_digest:
                return
            self._apply_config(new)
            self._running_digest = digest

    def _apply_config(self, new: RoutingConfig) -> None:
        for key in RESTART_ONLY:
            if getattr(new, key) != getattr(self.config, key):
                log.warning("routing config: %s changed; it takes effect after a restart", key)
        merged = new.model_copy(update={k: getattr(self.config, k) for k in RESTART_ONLY})
        if (merged.destinations, merged.hl7_destinations, merged.webhooks) != (
                self.config.destinations, self.config.hl7_destinations, self.config.webhooks):
            self.outbox.reset_senders()
        if merged.inference != self.config.inference:
            # A new backend and the manifests that go with it (a Triton URL or mirror that changed); the old
            # backend's clients and shared-memory regions are freed on the pipeline thread before its next pass.
            backend = make_backend(merged.inference)
            self.pipeline.replace_backend(backend, _manifests(merged, backend))
        _export_modes(self.config, merged)
        self.audit.record_mode_changes(self.config, merged)
        self.config = merged
        self.pipeline.config = merged
        self.tracker.stable_seconds = merged.completion.stable_seconds
        self.tracker.by_modality = dict(merged.completion.stable_seconds_by_modality)
        self.receiver.update_config(merged)
        metrics.CONFIG_RELOADS.labels("applied").inc()
        log.info("routing config reloaded: %d use case(s): %s", len(merged.use_cases),
                 ", ".join(f"{u.name}={u.mode}" for u in merged.use_cases))
