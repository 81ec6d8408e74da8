"""When the modality says a study is complete: Modality Performed Procedure Steps (MPPS) in the spool's ``state.db``.

The MPPS SCP (:mod:`pacsflow_router.workflow.mpps`) records each step here before it answers success; the study
tracker (:mod:`pacsflow_router.ingest.studies`) reads the same tables to decide completion. Both live in ingest so that
ingest never imports the workflow edge (the SQL that owns the tables is here, the DIMSE translation is there).

Completion rule (PS3.4 Annex F: an MPPS is COMPLETED or DISCONTINUED once, then final)
-------------------------------------------------------------------------------------
A study linked to MPPS (through the Study Instance UIDs of their Scheduled Step Attributes Sequence) is complete at
once, without waiting for its stable window, when

* every MPPS linked to it is final (COMPLETED or DISCONTINUED; one still IN PROGRESS keeps the stable window);
* every instance those MPPS list (Performed Series Sequence > Referenced Image Sequence and Referenced Non-Image
  Composite SOP Instance Sequence) is in the spool (in any study: a grouped procedure's MPPS names the instances of
  all its studies, and each of those studies waits for all of them); and
* no instance the MPPS do not list arrived after the last of them ended. Such an instance means something beyond
  the modality's step is still sending (a late instance, a post-processing workstation); the study then waits for
  its stable window as before (see "Late instances" in :mod:`~pacsflow_router.ingest.studies`).

DISCONTINUED follows the same rule: the modality stopped, and the study is analysed with what it acquired (the
instances listed), noted in the audit through :func:`completion_reason`. Listed instances that never arrive leave
the study to its stable window, also noted.

An MPPS may arrive before any image (usual: N-CREATE when acquisition starts): nothing here needs the study to
exist. Images that arrive after COMPLETED complete the study as soon as the last listed one is spooled.
"""

from __future__ import annotations

import enum
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from .spool import Spool

#: Performed Procedure Step Status values (PS3.3 C.4.14, (0040,0252)).
IN_PROGRESS = "IN PROGRESS"
COMPLETED = "COMPLETED"
DISCONTINUED = "DISCONTINUED"
STATUSES = (IN_PROGRESS, COMPLETED, DISCONTINUED)
FINAL = (COMPLETED, DISCONTINUED)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS mpps (
        sop_instance_uid TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        modality TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        final_at REAL
    )""",
    """CREATE TABLE IF NOT EXISTS mpps_studies (
        mpps_uid TEXT NOT NULL,
        study_uid TEXT NOT NULL,
        PRIMARY KEY (mpps_uid, study_uid)
    )""",
    "CREATE INDEX IF NOT EXISTS mpps_studies_study ON mpps_studies (study_uid)",
    """CREATE TABLE IF NOT EXISTS mpps_instances (
        mpps_uid TEXT NOT NULL,
        sop_instance_uid TEXT NOT NULL,
        series_uid TEXT NOT NULL,
        PRIMARY KEY (mpps_uid, sop_instance_uid)
    )""",
)

# The MPPS steps of study ``s`` (SQL fragments below are used inside ``FROM studies s``).
_STEPS = "SELECT ms.mpps_uid FROM mpps_studies ms WHERE ms.study_uid = s.study_uid"
_LISTED = f"SELECT mi.sop_instance_uid FROM mpps_instances mi WHERE mi.mpps_uid IN ({_STEPS})"

#: True for a study ``s`` that its MPPS complete now (the rule in the module docstring).
MPPS_COMPLETE = f"""(
    EXISTS ({_STEPS})
    AND NOT EXISTS (SELECT 1 FROM mpps m WHERE m.sop_instance_uid IN ({_STEPS}) AND m.final_at IS NULL)
    AND NOT EXISTS (SELECT 1 FROM mpps_instances mi WHERE mi.mpps_uid IN ({_STEPS})
                    AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.sop_instance_uid = mi.sop_instance_uid))
    AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = s.study_uid
                    AND i.received_at > (SELECT max(m.final_at) FROM mpps m WHERE m.sop_instance_uid IN ({_STEPS}))
                    AND i.sop_instance_uid NOT IN ({_LISTED}))
)"""


def ensure_schema(spool: Spool) -> None:
    """Create the MPPS tables in the spool's ``state.db`` if missing (idempotent; older spools gain them)."""
    for statement in _SCHEMA:
        spool.execute(statement)


@dataclass(frozen=True)
class ListedInstance:
    """One instance an MPPS lists in its Performed Series Sequence."""

    series_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class PerformedStep:
    """The parts of one MPPS that decide completion (what :class:`MppsStore` persists)."""

    sop_instance_uid: str
    status: str
    study_uids: tuple[str, ...] = ()
    listed: tuple[ListedInstance, ...] | None = None
    """Instances of the Performed Series Sequence; None when the message did not carry the sequence (an N-SET
    that leaves it unchanged), ``()`` when it carried an empty one."""
    modality: str | None = None


class Outcome(enum.Enum):
    """What :class:`MppsStore` did with a request (the DIMSE edge maps each to a status, PS3.4 F.7.2)."""

    CREATED = "created"
    UPDATED = "updated"
    DUPLICATE = "duplicate"
    """N-CREATE for an SOP Instance UID already recorded."""
    NO_SUCH_INSTANCE = "no-such-instance"
    """N-SET for an SOP Instance UID never created."""
    ALREADY_FINAL = "already-final"
    """N-SET on a step already COMPLETED or DISCONTINUED."""


class MppsStore:
    """Durable MPPS records in the spool's ``state.db``: each call returns after its transaction is committed
    (WAL, ``synchronous=FULL``), so the SCP may answer success.

    Parameters
    ----------
    spool
        The spool whose database also holds the study tables (one database, so completion is one query).
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        ensure_schema(spool)

    def create(self, step: PerformedStep) -> Outcome:
        """Record a new step (N-CREATE).

        Returns
        -------
        Outcome
            ``CREATED``, or ``DUPLICATE`` when the SOP Instance UID exists (nothing is changed then).
        """
        now = time.time()
        final_at = now if step.status in FINAL else None
        with self.spool.transaction() as db:
            cur = db.execute(
                "INSERT INTO mpps (sop_instance_uid, status, modality, created_at, updated_at, final_at) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (sop_instance_uid) DO NOTHING",
                (step.sop_instance_uid, step.status, step.modality, now, now, final_at))
            if cur.rowcount != 1:
                return Outcome.DUPLICATE
            db.executemany("INSERT OR IGNORE INTO mpps_studies (mpps_uid, study_uid) VALUES (?, ?)",
                           [(step.sop_instance_uid, uid) for uid in step.study_uids])
            _replace_listed(db, step.sop_instance_uid, step.listed or ())
        return Outcome.CREATED

    def update(self, sop_instance_uid: str, status: str | None, listed: Sequence[ListedInstance] | None) -> Outcome:
        """Apply an N-SET: a new status and/or a new Performed Series Sequence (N-SET replaces the whole sequence).

        Returns
        -------
        Outcome
            ``UPDATED``; ``NO_SUCH_INSTANCE`` when never created; ``ALREADY_FINAL`` when the step is COMPLETED or
            DISCONTINUED (PS3.4 F.7.2.2: a final step may no longer be updated; nothing is changed).
        """
        now = time.time()
        with self.spool.transaction() as db:
            row = db.execute("SELECT status FROM mpps WHERE sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
            if row is None:
                return Outcome.NO_SUCH_INSTANCE
            if row[0] in FINAL:
                return Outcome.ALREADY_FINAL
            new_status = row[0] if status is None else status
            db.execute("UPDATE mpps SET status = ?, updated_at = ?, final_at = ? WHERE sop_instance_uid = ?",
                       (new_status, now, now if new_status in FINAL else None, sop_instance_uid))
            if listed is not None:
                _replace_listed(db, sop_instance_uid, listed)
        return Outcome.UPDATED

    def status(self, sop_instance_uid: str) -> str | None:
        """The recorded Performed Procedure Step Status, or None for an unknown step."""
        rows = self.spool.execute("SELECT status FROM mpps WHERE sop_instance_uid = ?", (sop_instance_uid,))
        return cast(str, rows[0][0]) if rows else None

    def listed(self, sop_instance_uid: str) -> list[ListedInstance]:
        """The instances the step lists, in no particular order."""
        rows = self.spool.execute(
            "SELECT series_uid, sop_instance_uid FROM mpps_instances WHERE mpps_uid = ? ORDER BY rowid",
            (sop_instance_uid,))
        return [ListedInstance(series, sop) for series, sop in rows]


def _replace_listed(db: sqlite3.Connection, mpps_uid: str, listed: Sequence[ListedInstance]) -> None:
    db.execute("DELETE FROM mpps_instances WHERE mpps_uid = ?", (mpps_uid,))
    db.executemany("INSERT OR IGNORE INTO mpps_instances (mpps_uid, sop_instance_uid, series_uid) VALUES (?, ?, ?)",
                   [(mpps_uid, i.sop_instance_uid, i.series_uid) for i in listed])


def completion_reason(spool: Spool, study_uid: str) -> str:
    """Why the study is (or will be) complete, for the audit record.

    Returns
    -------
    str
        ``"mpps-completed"`` or ``"mpps-discontinued"`` (complete at once by its MPPS);
        ``"mpps-incomplete: N listed instance(s) never arrived"`` (final MPPS, waits for the stable window);
        ``"stable-window"`` (no MPPS), or ``"stable-window: ..."`` saying why the MPPS did not complete it.
    """
    steps = spool.execute(
        "SELECT m.status FROM mpps m JOIN mpps_studies ms ON ms.mpps_uid = m.sop_instance_uid WHERE ms.study_uid = ?",
        (study_uid,))
    if not steps:
        return "stable-window"
    statuses = {status for (status,) in steps}
    if IN_PROGRESS in statuses:
        return "stable-window: MPPS still IN PROGRESS"
    missing = cast(int, spool.execute(
        "SELECT count(DISTINCT mi.sop_instance_uid) FROM mpps_instances mi "
        "JOIN mpps_studies ms ON ms.mpps_uid = mi.mpps_uid WHERE ms.study_uid = ? "
        "AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.sop_instance_uid = mi.sop_instance_uid)",
        (study_uid,))[0][0])
    if missing:
        ended = " (MPPS DISCONTINUED)" if DISCONTINUED in statuses else ""
        return f"mpps-incomplete: {missing} listed instance(s) never arrived{ended}"
    (complete,) = spool.execute(f"SELECT {MPPS_COMPLETE} FROM (SELECT ? AS study_uid) s", (study_uid,))[0]
    if not complete:
        return "stable-window: instances the MPPS does not list arrived after it ended"
    return "mpps-discontinued" if DISCONTINUED in statuses else "mpps-completed"
