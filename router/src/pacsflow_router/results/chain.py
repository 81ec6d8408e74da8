"""The tamper-evident audit chain: one ``audit_chain`` table every audit writer appends to, each record carrying the
SHA-256 of the record before it and of its own canonical content.

One chain, not per-table columns: a record that has no table of its own (a login, a bad API key, a refused
association, a promotion, a received study) needs a home anyway, one sequence makes a deleted or reordered record
visible across all kinds, and one place is forwarded to syslog (:mod:`.atna`). A record that covers a row of another
table (an AI result in ``audit_results``, feedback, a reveal) is appended **in the same transaction** as that row,
and its content holds the SHA-256 of the row's audited columns, so ``pacsflow audit verify`` finds that row changed or
deleted too.

Appending is serialised so that concurrent writers (router threads, pacsflow-api, several processes on PostgreSQL)
never fork the chain: the first statement of an append UPDATEs the one row of ``audit_chain_head`` (next id, last
hash). On PostgreSQL that takes the row lock until commit (a second writer waits, then reads the committed head);
on SQLite it takes the database's write lock (BEGIN IMMEDIATE's effect) before anything is read. Ids are dense
(1, 2, 3, ...), never from a sequence that a rollback leaves gaps in: a gap is a deleted record.

The hash of record *n* is ``SHA-256(hash(n-1) + "\\n" + content(n))`` with ``content`` the canonical JSON
(RFC 8785-style: sorted keys, no spaces, UTF-8) of ``[id, kind, at, actor, subject, outcome, detail]`` as stored.
Nothing here holds patient data: subjects are :func:`~pacsflow_router.domain.study_key` hashes, actors are key ids,
reader identities, AE titles and IP addresses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine

from .schema import AUDIT_CHAIN, AUDIT_CHAIN_HEAD, AUDIT_FORWARD, FEEDBACK, RESULTS, REVEALS

#: The previous-record hash of record 1.
GENESIS = "0" * 64

#: The record kinds (issue 10); ATNA event codes for each are in :mod:`.atna`.
KINDS = ("study-received", "ai-result", "result-shown", "feedback", "approval", "promotion", "login",
         "association-refused", "bad-key")

#: Rows a record covers: table name -> (table, the audited columns, immutable once written).
COVERED = {
    "audit_results": (RESULTS, ("study_key", "use_case", "mode", "model_name", "model_version", "probability",
                                "critical", "outcome", "revision", "sr_key", "amends_sr_key", "destination")),
    "feedback": (FEEDBACK, ("result_key", "reader", "verdict", "corrected_finding", "comment")),
    "reveals": (REVEALS, ("result_key", "reader")),
}


def canonical(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, non-ASCII kept (hashed as UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(prev_hash: str, record: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of a chain record given the previous record's hash and the record's stored columns."""
    content = canonical([record["id"], record["kind"], record["at"], record["actor"], record["subject"],
                         record["outcome"], record["detail"]])
    return hashlib.sha256(f"{prev_hash}\n{content}".encode()).hexdigest()


def row_digest(values: Mapping[str, Any], columns: tuple[str, ...]) -> str:
    """SHA-256 of the audited columns of a covered row (floats and bools as JSON numbers and booleans)."""
    def plain(value: Any) -> Any:
        return bool(value) if isinstance(value, bool) else value
    return hashlib.sha256(canonical({c: plain(values.get(c)) for c in columns}).encode()).hexdigest()


def append(conn: Connection, kind: str, *, actor: str = "", subject: str = "", outcome: str = "success",
           detail: Mapping[str, Any] | None = None, covers: tuple[str, int, Mapping[str, Any]] | None = None) -> int:
    """Append one record to the chain inside the caller's transaction (commit with the row it covers).

    Parameters
    ----------
    conn : Connection
        A connection in a transaction (``engine.begin()``).
    kind : str
        One of :data:`KINDS`.
    actor : str
        Who: an API key id, a reader's identity, a calling AE title, a client address (no patient data).
    subject : str
        What: a study or result key (a hash), a use case name; never a UID.
    outcome : str
        ``success`` or ``failure``.
    detail : Mapping, optional
        JSON-able facts (no patient data).
    covers : tuple, optional
        (table name in :data:`COVERED`, row id, the row's values): the covered row's digest joins the content.

    Returns
    -------
    int
        The new record's id.

    Raises
    ------
    ValueError
        When ``kind`` or ``outcome`` is not one this module knows.
    """
    if kind not in KINDS:
        raise ValueError(f"audit record kind {kind!r} is not one of {', '.join(KINDS)}")
    if outcome not in ("success", "failure"):
        raise ValueError(f"audit outcome {outcome!r} is not success or failure")
    facts = dict(detail or {})
    if covers is not None:
        table, row_id, values = covers
        facts.update(table=table, row=int(row_id), row_sha256=row_digest(values, COVERED[table][1]))
    head = AUDIT_CHAIN_HEAD.c
    # The lock first (see the module docstring): nothing is read before this UPDATE holds the head row.
    new_id, prev_hash = conn.execute(update(AUDIT_CHAIN_HEAD).where(head.id == 1).values(last_id=head.last_id + 1)
                                     .returning(head.last_id, head.last_hash)).one()
    record = {"id": int(new_id), "kind": kind, "at": dt.datetime.now(dt.UTC).isoformat(timespec="microseconds"),
              "actor": actor[:255], "subject": subject[:255], "outcome": outcome, "detail": canonical(facts)}
    digest = record_hash(prev_hash, record)
    conn.execute(AUDIT_CHAIN.insert().values(**record, prev_hash=prev_hash, hash=digest))
    conn.execute(update(AUDIT_CHAIN_HEAD).where(head.id == 1).values(last_hash=digest))
    return int(new_id)


def record(engine: Engine, kind: str, **kwargs: Any) -> int:
    """Append one record that covers no other row, in a transaction of its own (see :func:`append`)."""
    with engine.begin() as conn:
        return append(conn, kind, **kwargs)


def records(engine: Engine, *, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
    """Chain records with id > ``after``, oldest first (at most ``limit``)."""
    query = select(AUDIT_CHAIN).where(AUDIT_CHAIN.c.id > after).order_by(AUDIT_CHAIN.c.id)
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


@dataclass(frozen=True)
class Finding:
    """One break in the chain: the record (id and kind, never patient data) and what is wrong with it."""

    record_id: int
    kind: str
    problem: str

    def __str__(self) -> str:
        return f"record {self.record_id} ({self.kind}): {self.problem}"


def _walk(conn: Connection, batch: int = 5000) -> Iterator[dict[str, Any]]:
    last = 0
    while True:
        rows = [dict(r._mapping) for r in conn.execute(
            select(AUDIT_CHAIN).where(AUDIT_CHAIN.c.id > last).order_by(AUDIT_CHAIN.c.id).limit(batch))]
        yield from rows
        if len(rows) < batch:
            return
        last = rows[-1]["id"]


def verify(engine: Engine) -> tuple[int, list[Finding]]:
    """Check the whole chain: every record's hash, its link to the record before, dense ids, the head, the forward
    cursors, and the rows records cover.

    Returns
    -------
    tuple
        (records checked, findings; empty when the chain is intact).
    """
    findings: list[Finding] = []
    expected_id, prev_hash, prev_kind, count = 1, GENESIS, "", 0
    with engine.connect() as conn:
        for row in _walk(conn):
            count += 1
            rid, kind = int(row["id"]), str(row["kind"])
            if rid != expected_id:
                missing = f"{expected_id}" if rid == expected_id + 1 else f"{expected_id} to {rid - 1}"
                findings.append(Finding(rid, kind, f"record(s) {missing} before it are missing (deleted)"))
            elif row["prev_hash"] != prev_hash:
                findings.append(Finding(rid, kind, f"does not follow record {rid - 1} ({prev_kind}): that record was "
                                                   "changed, replaced or moved, or this one was"))
            if record_hash(str(row["prev_hash"]), row) != row["hash"]:
                findings.append(Finding(rid, kind, "content changed or record moved: its SHA-256 does not match"))
            findings.extend(_check_covered(conn, rid, kind, str(row["detail"])))
            expected_id, prev_hash, prev_kind = rid + 1, str(row["hash"]), kind
        head = conn.execute(select(AUDIT_CHAIN_HEAD).where(AUDIT_CHAIN_HEAD.c.id == 1)).first()
        last_id = expected_id - 1
        if head is not None and (head.last_id != last_id or head.last_hash != prev_hash):
            if head.last_id > last_id:
                findings.append(Finding(last_id, prev_kind or "-", f"records {last_id + 1} to {head.last_id} after it "
                                                                   "are missing (deleted at the end)"))
            else:
                findings.append(Finding(last_id, prev_kind or "-", "the chain head does not match the last record"))
        for name, forwarded in conn.execute(select(AUDIT_FORWARD.c.name, AUDIT_FORWARD.c.last_id)):
            if forwarded > last_id and (head is None or head.last_id <= last_id):
                findings.append(Finding(last_id, prev_kind or "-", f"{name} already forwarded records up to "
                                                                   f"{forwarded}: those after {last_id} are missing"))
    return count, findings


def _check_covered(conn: Connection, rid: int, kind: str, detail_text: str) -> list[Finding]:
    try:
        detail = json.loads(detail_text)
    except ValueError:
        return []  # the record's own hash already reports a changed detail
    if not isinstance(detail, dict) or detail.get("table") not in COVERED:
        return []
    table, columns = COVERED[detail["table"]]
    row = conn.execute(select(table).where(table.c.id == detail.get("row"))).first()
    if row is None:
        return [Finding(rid, kind, f"the {detail['table']} row {detail.get('row')} it covers is missing (deleted)")]
    if row_digest(dict(row._mapping), columns) != detail.get("row_sha256"):
        return [Finding(rid, kind, f"the {detail['table']} row {detail.get('row')} it covers was changed")]
    return []
