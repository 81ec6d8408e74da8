"""The results store's tables as this release reads and writes them (SQLAlchemy Core, SQLite and PostgreSQL alike).

The database schema itself is owned by the Alembic revisions in ``migrations/versions`` (:mod:`.store` upgrades every
database to head when it opens); these ``Table`` objects describe that head for queries, and a test checks the two
agree. Every key that points at a study or a result is a hash (:func:`~pacsflow_router.domain.study_key` of the Study
Instance UID or of the result's Tracking UID), never a UID: the store may be read by people who must not see patient
data.

``audit_results``, ``audit_events``
    The audit trail (see :mod:`.audit`).
``feedback``
    One reader's verdict on one result (accept, modify, reject), with an optional corrected finding and location and a
    comment. Unique over (result, reader, verdict): posting the same verdict again is a no-op.
``reveals``
    Who asked to see which AI result, when (the automation-bias audit: results are shown only on request).
``review_results``
    What the reviewer panel (pacsflow-api) shows: one row per analysed result (every mode), keyed by the result's
    Tracking UID and revision, with the study's patient, accession, procedure and order priority, the finding, its
    location and the key slice as a small windowed grayscale PNG. It holds patient data by design (the panel shows
    it to readers); only the API serves it, and logs name :func:`~pacsflow_router.domain.study_key` hashes only.
``api_access``
    Every pacsflow-api request's identity: who (key id or SSO subject), role, method, the route template (never the
    raw path, which holds UIDs) and the HTTP status.
``ground_truth``
    The reference standard for evidence, besides reader verdicts: one label (finding present or absent) per accession
    and use case and/or finding code ("" = any), from an imported CSV (``pacsflow ground-truth import``) or a final
    report (HL7 ORU^R01, result status F, with a coded finding). A label wins over reader verdicts
    (:mod:`.evidence`). It holds accession numbers, like ``review_results``.
``approvals``
    Critical results of a use case with ``triage.requireApproval`` whose worklist flag, HL7 messages and webhooks the
    router holds (:mod:`.approvals`): one row per result revision, ``pending`` until a reader or clinical lead
    approves or rejects it in pacsflow-api (who, role, when, comment), then ``released`` or ``dropped`` by the
    router. ``held`` is what the router needs to send the outputs later (the study's header facts, the finding): it
    holds patient data, like ``review_results``.
``draft_reports``
    The draft report text of a result a reader accepted, as pacsflow-api rendered it (who, when); the router sends it
    as an ORU^R01 (result status P) where the use case lists ``draft-report`` in ``outputs.hl7.messages`` and marks it
    ``queued``, else ``not-sent``. One per result revision: a second accept sends nothing more.
``api_keys``
    API keys: a public id, the scrypt hash of the secret (never the secret), a role, and when it was created, rotated
    and revoked.
``orders``, ``hl7_messages``
    Imaging orders (HL7 ORM/OMI and the polled RIS worklist), keyed by accession number and patient ID, with the AI
    priority raised on them; and each HL7 order message's control ID (MSH-10) with the ACK it was answered, written in
    the order's transaction (:mod:`pacsflow_router.workflow.orders`). They hold patient data, like ``review_results``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

METADATA = MetaData()

VERDICTS = ("accept", "modify", "reject")
ROLES = ("reader", "clinical-lead", "integration", "admin")
GROUND_TRUTH_SOURCES = ("csv", "hl7")


def _append_only_table(name: str, *columns: Column[Any] | UniqueConstraint) -> Table:
    """An audit table: a row id, when the row was recorded and which study (hashed key), then ``columns``."""
    return Table(
        name, METADATA,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        Column("study_key", String(64), nullable=False),
        *columns,
    )


RESULTS = _append_only_table(
    "audit_results",
    Column("use_case", String(63), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("probability", Float, nullable=True),
    Column("critical", Boolean, nullable=False),
    Column("outcome", String(255), nullable=False),
    Column("timings", JSON, nullable=False),
    Column("destination", String(63), nullable=True),
    Column("destination_status", String(32), nullable=True),
    Column("revision", Integer, nullable=False, default=0, server_default="0"),
    Column("sr_key", String(64), nullable=True),
    Column("amends_sr_key", String(64), nullable=True),
    # Which series the use case analysed and why, or why none ("chose series 2 of 3: 1 failed image-type"); no UIDs.
    Column("selection", String(1024), nullable=True),
    # The analysed series' inputs: {"analysed", "expected", "missing", "skipped": [{"instance": <hash>, "reason",
    # "images"}]} (domain.Series.inputs); no UIDs.
    Column("inputs", JSON, nullable=True),
    UniqueConstraint("study_key", "use_case", "model_name", "model_version", "revision", name="audit_results_once"),
)

EVENTS = _append_only_table(
    "audit_events",
    Column("use_case", String(63), nullable=True),
    Column("destination", String(63), nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("detail", String(1024), nullable=True),
    Column("sr_key", String(64), nullable=True),
)

FEEDBACK = Table(
    "feedback", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("result_key", String(64), nullable=False),
    Column("reader", String(255), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("corrected_finding", String(255), nullable=True),
    Column("corrected_location", JSON, nullable=True),
    Column("comment", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("result_key", "reader", "verdict", name="feedback_once"),
    CheckConstraint("verdict IN ('accept', 'modify', 'reject')", name="feedback_verdict"),
)

REVEALS = Table(
    "reveals", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("result_key", String(64), nullable=False),
    Column("reader", String(255), nullable=False),
    Column("revealed_at", DateTime(timezone=True), nullable=False),
)

API_KEYS = Table(
    "api_keys", METADATA,
    Column("id", String(32), primary_key=True),
    Column("secret_hash", String(255), nullable=False),
    Column("role", String(32), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("rotated_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("role IN ('reader', 'clinical-lead', 'integration', 'admin')", name="api_keys_role"),
)

REVIEW_RESULTS = Table(
    "review_results", METADATA,
    Column("tracking_uid", String(64), primary_key=True),
    Column("revision", Integer, primary_key=True),
    # study_key(tracking_uid): what feedback.result_key and reveals.result_key name.
    Column("result_key", String(64), nullable=False),
    Column("study_uid", String(64), nullable=False),
    Column("accession", String(64), nullable=False),
    Column("patient_id", String(64), nullable=False),
    Column("patient_name", String(324), nullable=False),
    Column("procedure", String(255), nullable=False),
    # HL7 priority code of the study's order (S, A, T, C, P, R) or "" without an order.
    Column("order_priority", String(1), nullable=False),
    Column("use_case", String(63), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("model_name", String(128), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("finding_code", String(64), nullable=False),
    Column("finding_scheme", String(16), nullable=False),
    Column("finding_meaning", String(255), nullable=False),
    Column("present", Boolean, nullable=False),
    Column("probability", Float, nullable=False),
    Column("critical", Boolean, nullable=False),
    Column("slice_index", Integer, nullable=False),
    Column("row_fraction", Float, nullable=False),
    Column("col_fraction", Float, nullable=False),
    Column("sr_sop_uid", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("key_image_png", LargeBinary, nullable=False),
    Index("review_results_study", "study_uid"),
    Index("review_results_accession", "accession"),
    Index("review_results_result_key", "result_key"),
    Index("review_results_worklist", "critical", "order_priority", "created_at"),
)

API_ACCESS = Table(
    "api_access", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("identity", String(255), nullable=False),
    Column("role", String(32), nullable=False),
    Column("method", String(8), nullable=False),
    Column("route", String(255), nullable=False),
    Column("status", Integer, nullable=False),
)

GROUND_TRUTH = Table(
    "ground_truth", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("accession", String(64), nullable=False),
    # "" = any: a label names a use case, a finding code (what a final report codes), or both.
    Column("use_case", String(63), nullable=False, server_default=""),
    Column("finding_code", String(64), nullable=False, server_default=""),
    Column("present", Boolean, nullable=False),
    Column("source", String(16), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("accession", "use_case", "finding_code", name="ground_truth_once"),
    CheckConstraint("source IN ('csv', 'hl7')", name="ground_truth_source"),
    CheckConstraint("use_case <> '' OR finding_code <> ''", name="ground_truth_names_what"),
)

APPROVAL_STATES = ("pending", "approved", "rejected", "released", "dropped")
DRAFT_STATES = ("accepted", "queued", "not-sent")

APPROVALS = Table(
    "approvals", METADATA,
    Column("result_key", String(64), primary_key=True),
    Column("revision", Integer, primary_key=True),
    Column("study_key", String(64), nullable=False),
    Column("use_case", String(63), nullable=False),
    Column("state", String(16), nullable=False),
    Column("requested_at", DateTime(timezone=True), nullable=False),
    Column("held", JSON, nullable=False),
    Column("decided_by", String(255), nullable=True),
    Column("decided_role", String(32), nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    Column("comment", Text, nullable=True),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("state IN ('pending', 'approved', 'rejected', 'released', 'dropped')", name="approvals_state"),
    Index("approvals_state_requested", "state", "requested_at"),
)

DRAFT_REPORTS = Table(
    "draft_reports", METADATA,
    Column("result_key", String(64), primary_key=True),
    Column("revision", Integer, primary_key=True),
    Column("use_case", String(63), nullable=False),
    Column("text", Text, nullable=False),
    Column("accepted_by", String(255), nullable=False),
    Column("accepted_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    CheckConstraint("state IN ('accepted', 'queued', 'not-sent')", name="draft_reports_state"),
    Index("draft_reports_state", "state"),
)

ORDERS = Table(
    "orders", METADATA,
    Column("accession", Text, primary_key=True),
    Column("patient_id", Text, primary_key=True),
    Column("body", Text, nullable=False),
    Column("study_uid", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("modality", Text, nullable=False),
    Column("station_ae_title", Text, nullable=False),
    Column("scheduled_date", String(8), nullable=False),
    Column("priority_rank", Integer, nullable=False),
    Column("scheduled_start", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("ai_critical", Boolean, nullable=False, default=False),
    Column("ai_use_cases", Text, nullable=False, default="[]"),
    Column("ai_raised_at", Float, nullable=True),
    # When an arriving study was matched to the order (0008): a cancel is refused from then on.
    Column("matched_at", Float, nullable=True),
    Index("orders_study", "study_uid"),
    Index("orders_status", "status", "created_at"),
)

HL7_MESSAGES = Table(
    "hl7_messages", METADATA,
    Column("control_id", Text, primary_key=True),
    Column("ack", LargeBinary, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("accession", Text, nullable=True),
    Column("patient_id", Text, nullable=True),
    Column("received_at", Float, nullable=False),
)

# The tamper-evident audit chain (:mod:`.chain`): ids are dense and assigned under the head row's lock; ``at`` and
# ``detail`` are stored as the exact strings that were hashed (ISO 8601 UTC; canonical JSON).
AUDIT_CHAIN = Table(
    "audit_chain", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("at", String(40), nullable=False),
    Column("actor", String(255), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("detail", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

AUDIT_CHAIN_HEAD = Table(
    "audit_chain_head", METADATA,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_id", Integer, nullable=False),
    Column("last_hash", String(64), nullable=False),
    CheckConstraint("id = 1", name="audit_chain_head_one_row"),
)

# How far each forwarder (the syslog one: "syslog") has sent the chain: the durable cursor.
AUDIT_FORWARD = Table(
    "audit_forward", METADATA,
    Column("name", String(63), primary_key=True),
    Column("last_id", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
