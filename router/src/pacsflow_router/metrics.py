"""The router's Prometheus metrics: one registry, names per STYLE.md, labels only from configured values.

Naming: prefix ``pacsflow_``, base units (seconds, bytes), counters end in ``_total`` (prometheus-client adds the
suffix to a Counter's name), ``pacsflow_build_info``. Label values come only from bounded, configured sets: use
case names, model names/versions, destination names, and the fixed outcome/reason vocabularies below; never
UIDs, AE titles received from peers, or anything else a sender controls.

Every module updates its own metrics through the objects here; :func:`start_metrics_server` exposes
:data:`REGISTRY` on ``metrics.port``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

#: The router's own registry (not the global default one), so tests and embedding processes stay separate.
REGISTRY = CollectorRegistry(auto_describe=True)

#: Reasons an instance is refused (``pacsflow_instances_rejected_total{reason}``).
REJECT_REASONS = ("spool-full", "unparseable", "unsupported-sop-class", "write-error")
#: Outcomes of an association request (``pacsflow_associations_total{outcome}``).
ASSOCIATION_OUTCOMES = ("accepted", "rejected", "aborted")
#: Outcomes of one SR delivery attempt (``pacsflow_sr_exports_total{destination,outcome}``).
EXPORT_OUTCOMES = ("delivered", "retrying", "failed")
#: Why a study was not analysed by a use case (``pacsflow_studies_not_analysed_total{use_case,reason}``): the failed
#: acceptance criterion or the input-domain check (``analysis.acceptance.REASONS``; a unit test keeps them equal).
NOT_ANALYSED_REASONS = (
    "modality", "image-type", "body-part", "view", "contrast", "slice-count", "matrix", "pixel-spacing", "slice-thickness",
    "kernel", "orientation", "spacing-gap", "out-of-domain",
)

# Study latency spans seconds (completion wait excluded) to minutes (queue behind a busy GPU).
_STUDY_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

BUILD_INFO = Info("pacsflow_build", "pacsflow router build (label version).", registry=REGISTRY)

# -- ingest (scp, spool) ----------------------------------------------------------------------------------------
INSTANCES_RECEIVED = Counter(
    "pacsflow_instances_received", "Instances acknowledged with success (durably spooled).", registry=REGISTRY)
BYTES_RECEIVED = Counter(
    "pacsflow_received_bytes", "Bytes of instances durably spooled.", registry=REGISTRY)
INSTANCES_REJECTED = Counter(
    "pacsflow_instances_rejected", "Instances answered with a failure status, by reason.", ["reason"],
    registry=REGISTRY)
ASSOCIATIONS = Counter(
    "pacsflow_associations", "Inbound association requests, by outcome.", ["outcome"], registry=REGISTRY)

# -- connections refused at the door (every listener: allow-lists, TLS handshakes) --------------------------------
#: Listeners of ``pacsflow_connections_refused_total{listener}`` (fixed names, never a peer's address).
LISTENERS = ("dicom", "mllp", "hl7-http", "metrics")
#: Reasons of ``pacsflow_connections_refused_total{reason}``: outside ``allowedNetworks``; a failed TLS handshake
#: (old version, weak cipher, no or untrusted client certificate, plaintext on a TLS port); a bad bearer token.
CONNECTION_REFUSED_REASONS = ("not-allowed", "tls-handshake", "unauthorized")
CONNECTIONS_REFUSED = Counter(
    "pacsflow_connections_refused", "Connections refused before any request was read: the peer's address is outside "
    "the listener's allowedNetworks, its TLS handshake failed, or (metrics) its bearer token was wrong; by listener "
    "and reason.", ["listener", "reason"], registry=REGISTRY)

# -- studies (studies, pipeline) --------------------------------------------------------------------------------
QUEUE_DEPTH = Gauge(
    "pacsflow_queue_depth_studies", "Studies received and waiting (incomplete or complete, not yet processed).",
    registry=REGISTRY)
STUDIES_IN_PROGRESS = Gauge(
    "pacsflow_studies_in_progress", "Studies being processed by the pipeline now.", registry=REGISTRY)
STUDIES_PROCESSED = Counter(
    "pacsflow_studies_processed", "Study results per use case, by outcome (reported, logged-silent, ...).",
    ["use_case", "outcome"], registry=REGISTRY)
STUDIES_NOT_ANALYSED = Counter(
    "pacsflow_studies_not_analysed", "Studies a use case applied to but did not analyse: no series met the model's "
    "input requirements, or the chosen one was out of the model's domain; by reason.", ["use_case", "reason"],
    registry=REGISTRY)
TIME_TO_RESULT = Histogram(
    "pacsflow_study_time_to_result_seconds", "Last instance received -> SR delivered to its destination.",
    ["use_case"], buckets=_STUDY_BUCKETS, registry=REGISTRY)
PREPROCESS_SECONDS = Histogram(
    "pacsflow_preprocess_seconds", "Preprocessing time per study and use case.", ["use_case"],
    buckets=_STAGE_BUCKETS, registry=REGISTRY)
INFERENCE_SECONDS = Histogram(
    "pacsflow_inference_seconds", "Model inference time per study.", ["use_case", "model", "version"],
    buckets=_STAGE_BUCKETS, registry=REGISTRY)
CRITICAL_FINDINGS = Counter(
    "pacsflow_critical_findings", "Studies flagged critical (triage mode, above the threshold).", ["use_case"],
    registry=REGISTRY)
INFERENCE_UNAVAILABLE = Counter(
    "pacsflow_inference_unavailable_waits", "Times a study waited because the inference backend was unavailable.",
    ["use_case"], registry=REGISTRY)
#: Where a pinned version's manifest was read from when the manifest mirror asked Triton (analysis/manifestmirror.py).
MANIFEST_OUTCOMES = ("mirrored", "image", "last-copy", "none")
MANIFEST_REFRESHES = Counter(
    "pacsflow_manifest_refreshes", "Times the router asked Triton for a pinned model version's manifest, by where "
    "it then read it: mirrored (Triton's copy), image (Triton's render carries none: the image's repository), "
    "last-copy (Triton could not be asked: the last copy on disk or the image's), none (no copy: the study waits "
    "or the version does not exist).", ["model", "outcome"], registry=REGISTRY)
LATE_INSTANCES = Gauge(
    "pacsflow_late_instances", "Instances that arrived after their study's result; each re-opened the study.",
    registry=REGISTRY)
PREDECODED_BYTES = Gauge(
    "pacsflow_predecoded_bytes", "Decoded pixel data held for studies still arriving (decoded ahead of completion).",
    registry=REGISTRY)
PREDECODED_INSTANCES = Counter(
    "pacsflow_predecoded_instances", "Instances of complete studies by whether they were decoded ahead (hit) or "
    "at completion (miss).", ["outcome"], registry=REGISTRY)
CONFIG_RELOADS = Counter(
    "pacsflow_config_reloads", "Routing config reloads, by outcome (applied, invalid).", ["outcome"],
    registry=REGISTRY)
USE_CASE_MODE = Gauge(
    "pacsflow_use_case_mode", "1 for each use case's mode in the running routing config, 0 for its other modes "
    "(the kill switch: a demotion shows here as soon as the router applies it).", ["use_case", "mode"],
    registry=REGISTRY)

# -- results out (export) ---------------------------------------------------------------------------------------
SR_EXPORTS = Counter(
    "pacsflow_sr_exports", "SR delivery attempts, by destination and outcome (delivered, retrying, failed, held).",
    ["destination", "outcome"], registry=REGISTRY)
OUTBOX_PENDING = Gauge(
    "pacsflow_outbox_pending", "SRs waiting in the durable outbox for delivery.", registry=REGISTRY)
#: Channels of the durable outbox (``pacsflow_outbound_*{channel}``).
OUTBOUND_CHANNELS = ("dicom", "hl7", "webhook")
#: Outcomes of one outbound delivery attempt (``pacsflow_outbound_messages_total{channel,destination,outcome}``).
OUTBOUND_OUTCOMES = ("sent", "failed", "retrying", "held")
OUTBOUND_MESSAGES = Counter(
    "pacsflow_outbound_messages", "Outbound deliveries (SR, HL7, webhook), by channel, destination and outcome (sent, "
    "retrying: an attempt failed and the item stays queued, failed: parked, held: its use case was demoted to silent "
    "or removed, never sent).", ["channel", "destination", "outcome"],
    registry=REGISTRY)
OUTBOUND_PENDING = Gauge(
    "pacsflow_outbound_pending", "Messages waiting in the durable outbox, by channel.", ["channel"], registry=REGISTRY)
OUTBOUND_OLDEST_PENDING_AGE = Gauge(
    "pacsflow_outbound_oldest_pending_age_seconds", "Age of the oldest message still waiting in the outbox, by "
    "channel (0 when none).", ["channel"], registry=REGISTRY)
EXPORT_ASSOCIATIONS = Counter(
    "pacsflow_export_associations", "Outbound associations opened, by destination (low = reuse works).",
    ["destination"], registry=REGISTRY)


# -- orders in (workflow: hl7, mllp, orders) ---------------------------------------------------------------------
#: Message kinds of ``pacsflow_hl7_messages_total{kind}``: the accepted types (orders; final reports as ground truth),
#: anything else counts as ``other``.
HL7_MESSAGE_KINDS = ("ORM^O01", "OMI^O23", "ORU^R01", "other")
#: ACK codes of ``pacsflow_hl7_messages_total{ack}``.
HL7_ACK_CODES = ("AA", "AE", "AR")
HL7_MESSAGES = Counter(
    "pacsflow_hl7_messages", "HL7 v2 order messages received (MLLP and HTTP), by message kind and ACK code.",
    ["kind", "ack"], registry=REGISTRY)
ORDERS_OPEN = Gauge(
    "pacsflow_orders_open", "Orders scheduled or in progress in the durable order store.", registry=REGISTRY)
ORDERS_EXPIRED = Counter(
    "pacsflow_orders_expired", "Orders that never got a study within orders.expireAfterHours.", registry=REGISTRY)

# -- Modality Worklist (workflow: mwl polls the RIS, worklist serves pacsflow's own) -----------------------------
#: Outcomes of ``pacsflow_mwl_polls_total{outcome}``.
MWL_POLL_OUTCOMES = ("success", "unreachable", "failed")
MWL_POLLS = Counter(
    "pacsflow_mwl_polls", "Polls of the RIS Modality Worklist, by outcome (success, unreachable, failed).",
    ["outcome"], registry=REGISTRY)
MWL_ITEMS = Counter(
    "pacsflow_mwl_items", "Worklist items read from the RIS, by outcome (created, updated, unchanged, skipped).",
    ["outcome"], registry=REGISTRY)
#: Outcomes of ``pacsflow_worklist_queries_total{outcome}``.
WORKLIST_QUERY_OUTCOMES = ("success", "refused", "failed", "cancelled")
WORKLIST_QUERIES = Counter(
    "pacsflow_worklist_queries", "C-FIND queries of pacsflow's Modality Worklist SCP, by outcome.", ["outcome"],
    registry=REGISTRY)

# -- MPPS (workflow.mpps: the modality says when a study is complete) ------------------------------------------
#: Labels of ``pacsflow_mpps_total{event,status}``: the DIMSE message and the step's status after it (refused: the
#: message was answered with a failure status and changed nothing).
MPPS_EVENTS = ("n-create", "n-set")
MPPS_STATUSES = ("in-progress", "completed", "discontinued", "refused")
MPPS = Counter(
    "pacsflow_mpps", "MPPS messages received, by DIMSE message and the step's resulting status (or refused).",
    ["event", "status"], registry=REGISTRY)


# -- Reviewer panel (results/review.py: the row pacsflow-api shows) ---------------------------------------------
REVIEW_RESULTS_FAILED = Counter(
    "pacsflow_review_results_failed", "Analysed results whose reviewer-panel row could not be written to the results "
    "store (the study is still reported and audited; the panel lacks it).", ["use_case"], registry=REGISTRY)

# -- Human approval before priority (workflow/approval.py) --------------------------------------------------------
APPROVALS_PENDING = Gauge(
    "pacsflow_approvals_pending", "Critical results whose worklist flag, HL7 messages and webhooks wait for a reader's "
    "approval (triage.requireApproval), by use case.", ["use_case"], registry=REGISTRY)
APPROVAL_OLDEST_AGE = Gauge(
    "pacsflow_approval_oldest_age_seconds", "Age of the oldest critical result waiting for approval, by use case (0 "
    "when none).", ["use_case"], registry=REGISTRY)

# -- De-identification for external AI (deid/) ---------------------------------------------------------------------
DEIDENTIFIED = Counter(
    "pacsflow_deidentified_instances", "Instances de-identified and queued for an external AI (sent), or refused "
    "(burned-in annotation), by use case.", ["use_case", "outcome"], registry=REGISTRY)
REIDENTIFIED = Counter(
    "pacsflow_reidentified_results", "Results returned by external AIs on the results port: re-identified and queued "
    "for the PACS, or refused and kept (unknown pseudonym), by outcome.", ["outcome"], registry=REGISTRY)


def start_metrics_server(host: str, port: int) -> tuple[object, object]:
    """Serve :data:`REGISTRY` at ``http://host:port/metrics`` from a daemon thread.

    Returns
    -------
    tuple
        prometheus-client's ``(server, thread)``; ``server.shutdown()`` stops it.
    """
    return start_http_server(port, addr=host, registry=REGISTRY)
