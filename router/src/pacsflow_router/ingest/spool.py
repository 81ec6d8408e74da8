"""Durable on-disk staging of received instances: the C-STORE success status waits for :meth:`Spool.store`.

Every instance is written exactly as received (Part-10 bytes: preamble, file meta, data set; never re-encoded) to a
temporary file, fdatasync'ed, renamed to a random name, and the directory fsync'ed; only then is it indexed in SQLite
(``state.db``, WAL) in the same transaction that moves its study's "last received" clock. When ``store`` returns,
the instance survives ``kill -9`` and power loss, so the SCP may answer 0x0000.

The instance's index commit runs with ``synchronous=NORMAL`` (no WAL fsync of its own): the file and its directory
entry are already durable, and :meth:`Spool._recover` indexes every complete file the index lacks, so a commit lost
to power loss is rebuilt from the files at start-up. Every other transaction on ``state.db`` (study state, results,
MPPS, orders) stays ``synchronous=FULL``, and its WAL fsync also makes every earlier commit durable.

With ``write_ahead=True`` (the routing config's ``spoolWriteAhead``, off by default) :meth:`Spool.store_received` appends the instance to a
pre-written segment file instead, fdatasync'ed before it returns, and a checkpointer thread materialises it into
exactly the file and index row above, one directory fsync per batch (:mod:`.wal`, which says why). The readers see
an instance once it is indexed; until then its study is not due (:meth:`Spool.pending_studies`), and the study's
clock is the instance's receipt time, not its indexing.

File names are uuid4 hex, never derived from UIDs or tags (STYLE.md: no path built from received values).

The index schema is shared with :mod:`pacsflow_router.ingest.studies` (study state lives in the same database so that one
transaction covers "instance indexed" and "study clock moved"), and the MPPS tables of
:mod:`pacsflow_router.ingest.completion` live there too (completion is one query over instances, studies and MPPS).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import pydicom

from ..domain import study_key
from ..durable import fsync_dir
from ..errors import SpoolFullError, UnparseableInstanceError
from .wal import MAX_SEGMENTS, SEGMENT_BYTES, WalRecord, WriteAheadLog, write_all

log = logging.getLogger(__name__)

# Only the attributes the index needs; parsing stops before Pixel Data so a 512 KB slice costs microseconds.
INDEX_TAGS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    id INTEGER PRIMARY KEY,
    sop_instance_uid TEXT NOT NULL UNIQUE,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    received_at REAL NOT NULL,
    late INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid, id);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    instance_count INTEGER NOT NULL DEFAULT 0,
    resumed_at REAL,
    finished_at REAL,
    modality TEXT
);
CREATE INDEX IF NOT EXISTS studies_open ON studies (finished_at, last_received);
CREATE TABLE IF NOT EXISTS results (
    study_uid TEXT NOT NULL,
    use_case TEXT NOT NULL,
    outcome TEXT NOT NULL,
    done_at REAL NOT NULL,
    PRIMARY KEY (study_uid, use_case)
);
CREATE TABLE IF NOT EXISTS reports (
    study_uid TEXT NOT NULL,
    use_case TEXT NOT NULL,
    revision INTEGER NOT NULL,
    analysed TEXT NOT NULL,
    sr_series_uid TEXT,
    sr_sop_class_uid TEXT,
    sr_sop_uid TEXT,
    recorded_at REAL NOT NULL,
    PRIMARY KEY (study_uid, use_case, revision)
);
"""

_TMP_SUFFIX = ".part"
#: Write-ahead checkpoints write this many instance files at once (:meth:`Spool._materialise`).
MATERIALISE_THREADS = 4
_DATA_SUFFIX = ".dcm"


@dataclass(frozen=True)
class StoredInstance:
    """One instance as indexed in the spool.

    ``duplicate``: the SOP Instance UID was already spooled, the earlier copy is kept and nothing new was written.
    ``late``: it arrived after its study was finished; it re-opens the study (see studies.py "Late instances").
    """

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    modality: str
    path: Path
    size: int
    received_at: float
    duplicate: bool = False
    late: bool = False

    @property
    def study_key(self) -> str:
        """Non-identifying study key for logs."""
        return study_key(self.study_uid)


def parse_index_attributes(encoded: bytes) -> tuple[str, str, str, str]:
    """Study, series, SOP Instance UID and modality of a Part-10 byte string.

    Raises
    ------
    UnparseableInstanceError
        The bytes are not a DICOM file or lack one of the UIDs the spool indexes by.
    """
    try:
        ds = pydicom.dcmread(BytesIO(encoded), stop_before_pixels=True, specific_tags=list(INDEX_TAGS))
        values = [ds.get(k) for k in INDEX_TAGS]
    # On hostile bytes pydicom raises almost anything (struct.error, ValueError, KeyError, EOFError, ...); every one
    # of them means "unparseable" and must become a 0xC000-range status, never a crashed association.
    except Exception as exc:  # noqa: BLE001
        raise UnparseableInstanceError(
            f"received data is not a parseable DICOM instance ({type(exc).__name__}); nothing was stored"
        ) from None
    return index_values(values)


def index_values(values: list[object]) -> tuple[str, str, str, str]:
    """The spool's index key from the values of :data:`INDEX_TAGS`, in order.

    Raises
    ------
    UnparseableInstanceError
        One of the three UIDs is missing or empty.
    """
    missing = [k for k, v in zip(INDEX_TAGS[:3], values[:3], strict=True) if not v]
    if missing:
        raise UnparseableInstanceError(f"received instance lacks {', '.join(missing)}; the spool cannot index it")
    return str(values[0]), str(values[1]), str(values[2]), str(values[3] or "")


class Spool:
    """Durable instance store with a SQLite index, safe to share between the SCP and pipeline threads.

    Parameters
    ----------
    spool_dir
        Directory for instance files and ``state.db``; created if missing.
    max_disk_usage
        Fraction (0, 1] of the spool's file system in use above which :meth:`store` raises
        :class:`~pacsflow_router.errors.SpoolFullError` (the SCP answers 0xA700).
    write_ahead
        Acknowledge received instances once appended to the write-ahead segments (:mod:`.wal`); replays them at
        construction, before anything can be received.
    checkpoint_paused
        Test-only (with ``write_ahead``): never materialise appended instances while running.
    wal_segment_bytes, wal_max_segments
        Size and most number of write-ahead segments (:data:`.wal.SEGMENT_BYTES`, :data:`.wal.MAX_SEGMENTS`).
    """

    def __init__(self, spool_dir: str | Path, max_disk_usage: float = 0.95, *, write_ahead: bool = False,
                 checkpoint_paused: bool = False, wal_segment_bytes: int = SEGMENT_BYTES,
                 wal_max_segments: int = MAX_SEGMENTS) -> None:
        self.spool_dir = Path(spool_dir)
        self.max_disk_usage = max_disk_usage
        self.instance_dir = self.spool_dir / "instances"
        self.instance_dir.mkdir(parents=True, exist_ok=True)
        self.db_path = self.spool_dir / "state.db"
        # One connection behind one lock: SQLite serialises writers anyway, and a lock is cheaper than busy retries.
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._migrate()
        #: Called on the checkpointer thread after write-ahead instances were indexed (wake the readers).
        self.on_indexed: list[Callable[[], None]] = []
        self._writers: ThreadPoolExecutor | None = None
        self.wal = WriteAheadLog(self.spool_dir / "wal", self._materialise, on_indexed=self._indexed,
                                 paused=checkpoint_paused, segment_bytes=wal_segment_bytes,
                                 max_segments=wal_max_segments) if write_ahead else None
        self._recover()
        if self.wal is not None:
            self.wal.start()

    # -- internals shared with studies.StudyTracker -------------------------------------------------------------

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement under the spool's lock and return all rows (for :mod:`pacsflow_router.ingest.studies`)."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def transaction(self, *, durable: bool = True) -> _Transaction:
        """A locked ``BEGIN IMMEDIATE ... COMMIT`` block yielding the connection.

        ``durable=False`` commits with ``synchronous=NORMAL`` (only for what :meth:`_recover` rebuilds from files).
        """
        return _Transaction(self._lock, self._db, durable)

    def _migrate(self) -> None:
        """Bring a spool written by an older pacsflow up to the current schema (each step guarded, idempotent)."""
        columns = {row[1] for row in self.execute("PRAGMA table_info(studies)")}
        if "modality" not in columns:
            # The study's modality picks its completion window (completion.stableSecondsByModality): the modality
            # of its first instance, as new studies record it at ingest.
            with self.transaction() as db:
                db.execute("ALTER TABLE studies ADD COLUMN modality TEXT")
                db.execute("UPDATE studies SET modality = (SELECT nullif(i.modality, '') FROM instances i "
                           "WHERE i.study_uid = studies.study_uid ORDER BY i.id LIMIT 1)")
            log.info("spool migration: studies gained their modality (per-modality completion windows)")

    def _recover(self) -> None:
        """Tidy up after a crash: drop half-written files, index complete but unindexed ones.

        A file renamed into place but not yet indexed was fsync'ed and never acknowledged; indexing it keeps data
        the sender may not re-send, and re-indexing is idempotent (UNIQUE on SOP Instance UID).
        """
        for part in self.instance_dir.glob("*" + _TMP_SUFFIX):
            part.unlink(missing_ok=True)
        known = {row[0] for row in self.execute("SELECT path FROM instances")}
        orphans = [p for p in self.instance_dir.glob("*" + _DATA_SUFFIX) if p.name not in known]
        for path in orphans:
            data = path.read_bytes()
            try:
                attrs = parse_index_attributes(data)
            except UnparseableInstanceError:
                path.unlink(missing_ok=True)
                continue
            stored = self._index(attrs, path, len(data), path.stat().st_mtime)
            if stored.duplicate:
                path.unlink(missing_ok=True)
        if orphans:
            log.info("spool recovery: %d unindexed instance file(s) handled", len(orphans))
        if self.wal is not None:
            self.wal.replay()  # before the unfinished studies' windows restart below, so replayed ones restart too
        # A restart may have cut a sender off mid-study; it will usually resend. Restart the completion window of
        # every unfinished study so the resent instances join it instead of arriving late after a partial result.
        with self.transaction() as db:
            resumed = db.execute("UPDATE studies SET resumed_at = ? WHERE finished_at IS NULL",
                                 (time.time(),)).rowcount
        if resumed:
            log.info("spool recovery: %d unfinished stud(ies) resume after their completion window", resumed)

    def space_problem(self) -> str | None:
        """Why the spool refuses new instances for lack of space (above ``max_disk_usage``), or ``None``."""
        usage = shutil.disk_usage(self.spool_dir)
        fraction = usage.used / usage.total if usage.total else 1.0
        if fraction > self.max_disk_usage:
            return (f"spool file system is {fraction:.1%} full, above spoolMaxDiskUsage {self.max_disk_usage:.1%}; "
                    "free space or raise the watermark")
        return None

    def _check_watermark(self) -> None:
        problem = self.space_problem()
        if problem is not None:
            raise SpoolFullError(problem)

    def _existing(self, sop_instance_uid: str) -> StoredInstance | None:
        rows = self.execute(
            "SELECT study_uid, series_uid, modality, path, size, received_at, late FROM instances "
            "WHERE sop_instance_uid = ?", (sop_instance_uid,))
        if not rows:
            return None
        study, series, modality, name, size, received_at, late = rows[0]
        return StoredInstance(sop_instance_uid, study, series, modality, self.instance_dir / name, size,
                              received_at, duplicate=True, late=bool(late))

    def _index(self, attrs: tuple[str, str, str, str], path: Path, size: int, received_at: float) -> StoredInstance:
        study, series, sop, modality = attrs
        # Not durable on its own: the file is, and _recover re-indexes a file whose commit was lost (module doc).
        with self.transaction(durable=False) as db:
            row = db.execute("SELECT 1 FROM instances WHERE sop_instance_uid = ?", (sop,)).fetchone()
            if row is not None:
                duplicate = True
            else:
                duplicate = False
                finished = db.execute("SELECT finished_at FROM studies WHERE study_uid = ?", (study,)).fetchone()
                late = finished is not None and finished[0] is not None
                db.execute(
                    "INSERT INTO instances (sop_instance_uid, study_uid, series_uid, modality, path, size, "
                    "received_at, late) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (sop, study, series, modality, path.name, size, received_at, int(late)))
                if late:
                    # A finished study already has its results; a new instance may change an analysed series, so
                    # the study re-opens and is due again after its completion window (studies.py "Late instances").
                    # A duplicate never gets here: a re-sent instance changes nothing and re-opens nothing.
                    db.execute("UPDATE studies SET instance_count = instance_count + 1, finished_at = NULL, "
                               "last_received = max(last_received, ?) WHERE study_uid = ?", (received_at, study))
                else:
                    # The first instance's modality is the study's (it picks the completion window).
                    db.execute(
                        "INSERT INTO studies (study_uid, first_received, last_received, instance_count, modality) "
                        "VALUES (?, ?, ?, 1, nullif(?, '')) ON CONFLICT (study_uid) DO UPDATE SET "
                        "last_received = max(last_received, excluded.last_received), "
                        "instance_count = instance_count + 1, modality = coalesce(modality, excluded.modality)",
                        (study, received_at, received_at, modality))
        if duplicate:
            existing = self._existing(sop)
            assert existing is not None  # rows are never deleted while the spool is open
            return existing
        return StoredInstance(sop, study, series, modality, path, size, received_at, late=late)

    # -- public API ---------------------------------------------------------------------------------------------

    def store(self, encoded: bytes) -> StoredInstance:
        """Durably store one received instance and index it.

        Parameters
        ----------
        encoded
            The complete Part-10 file as received (preamble, file meta, data set), written byte for byte.

        Returns
        -------
        StoredInstance
            The indexed instance. A re-sent SOP Instance UID returns the earlier copy with ``duplicate=True``.

        Raises
        ------
        SpoolFullError
            The spool's file system is above ``max_disk_usage`` (checked before anything is written).
        UnparseableInstanceError
            ``encoded`` does not parse as DICOM or lacks Study/Series/SOP Instance UID; nothing is stored.
        """
        self._check_watermark()
        return self.store_received((encoded,), parse_index_attributes(encoded))

    def store_received(self, parts: tuple[bytes | memoryview, ...], attributes: tuple[str, str, str, str]
                       ) -> StoredInstance:
        """Durably store one received instance given as consecutive byte strings and its index attributes.

        The DICOM receiver's path (:mod:`.scp`): the Part-10 header it built and the data set as received, written
        with one ``writev`` (no joined copy), and the attributes it read (:func:`.part10.index_attributes`).

        Parameters
        ----------
        parts
            The Part-10 file in pieces, written in order.
        attributes
            Study, series, SOP Instance UID and modality (as :func:`parse_index_attributes` returns them).

        Returns
        -------
        StoredInstance
            As :meth:`store`.

        Raises
        ------
        SpoolFullError
            As :meth:`store`.
        """
        self._check_watermark()
        attrs = attributes
        existing = self._existing(attrs[2])
        if existing is not None:
            # Keep the first copy: it is already durable, and whatever used it (a running study) stays consistent.
            self._touch_study(existing)
            return existing
        name = uuid.uuid4().hex
        if self.wal is not None:
            appended = self._append(parts, attrs, name)
            if appended is not None:
                return appended
        size = sum(len(p) for p in parts)
        try:
            final = self._write_file(name, parts)
            fsync_dir(self.instance_dir)  # the name
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # The watermark was passed between the check and the write: same answer, 0xA700.
                raise SpoolFullError("spool file system is full; free space in the spool directory") from None
            raise
        stored = self._index(attrs, final, size, time.time())
        if stored.duplicate:
            # Another association raced us with the same SOP Instance UID; its copy won.
            final.unlink(missing_ok=True)
        return stored

    def _touch_study(self, existing: StoredInstance, when: float | None = None) -> None:
        # A re-send means the sender is still busy with the study: restart its stable window (unless finished).
        with self.transaction() as db:
            db.execute("UPDATE studies SET last_received = max(last_received, ?) "
                       "WHERE study_uid = ? AND finished_at IS NULL",
                       (time.time() if when is None else when, existing.study_uid))

    # -- write-ahead path (wal.py) ----------------------------------------------------------------------------------

    def _append(self, parts: tuple[bytes | memoryview, ...], attrs: tuple[str, str, str, str], name: str
                ) -> StoredInstance | None:
        # The instance as a record in a segment, durable when this returns; None: store it directly.
        assert self.wal is not None
        received_at = time.time()
        try:
            appended = self.wal.append(parts, attrs, name, received_at)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError("spool file system is full; free space in the spool directory") from None
            raise
        if appended is None:
            return None
        record, duplicate = appended
        if duplicate:
            # Re-sent while its first copy waits for the checkpointer: keep that copy, move the clock when indexed.
            self.wal.touch(record, received_at)
        study, series, sop, modality = attrs
        return StoredInstance(sop, study, series, modality, self.instance_dir / (record.name + _DATA_SUFFIX),
                              record.size, record.received_at, duplicate=duplicate)

    def _materialise(self, records: list[WalRecord]) -> None:
        """Write-ahead records -> instance files and index rows, as :meth:`store_received` writes them directly.

        Each file is written and fdatasync'ed, renamed into place, then the directory is fsync'ed once for the
        batch, then each is indexed (with its receipt time). SOP Instance UIDs already indexed are skipped (a
        replay). Raises OSError when a write fails; nothing of the batch is lost (the records stay in the segments).
        """
        todo = [r for r in records if self._existing(r.attributes[2]) is None]
        if not todo:
            return
        # Several files at once: their fdatasyncs then share journal commits (one each, one after the other, else).
        if self._writers is None:
            self._writers = ThreadPoolExecutor(MATERIALISE_THREADS, thread_name_prefix="spool-materialise")
        futures = [self._writers.submit(self._write_file, r.name, (r.read(),), r.received_at) for r in todo]
        written = [(record, future.result()) for record, future in zip(todo, futures, strict=True)]
        fsync_dir(self.instance_dir)
        for record, final in written:
            stored = self._index(record.attributes, final, record.size, record.received_at)
            if stored.duplicate:
                final.unlink(missing_ok=True)  # another association's copy was indexed first
            elif stored.late:
                log.warning("study %s: instance arrived after the study was finished; kept, not reprocessed",
                            stored.study_key)
            if record.touched_at is not None:
                self._touch_study(stored, record.touched_at)

    def _write_file(self, name: str, parts: tuple[bytes | memoryview, ...], received_at: float | None = None
                    ) -> Path:
        """``<name>.dcm`` written and fdatasync'ed (data and size) via ``<name>.part``; the caller fsyncs the
        directory for the name. ``received_at``: also the file's mtime (for :meth:`_recover`, should the index
        commit be lost). On OSError nothing of it is left."""
        part = self.instance_dir / (name + _TMP_SUFFIX)
        final = self.instance_dir / (name + _DATA_SUFFIX)
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                write_all(fd, parts)
                if received_at is not None:
                    os.utime(fd, (received_at, received_at))
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(part, final)
        except OSError:
            part.unlink(missing_ok=True)
            raise
        return final

    def _indexed(self) -> None:
        for callback in self.on_indexed:
            callback()

    def pending_studies(self) -> set[str]:
        """Study Instance UIDs with instances acknowledged (write-ahead) but not indexed yet: not complete."""
        return self.wal.pending_studies() if self.wal is not None else set()

    def instances(self, study_uid: str) -> list[StoredInstance]:
        """Every spooled instance of a study, in arrival order (late ones included)."""
        rows = self.execute(
            "SELECT sop_instance_uid, series_uid, modality, path, size, received_at, late FROM instances "
            "WHERE study_uid = ? ORDER BY id", (study_uid,))
        return [StoredInstance(sop, study_uid, series, modality, self.instance_dir / name, size, received_at,
                               late=bool(late))
                for sop, series, modality, name, size, received_at, late in rows]

    def count(self) -> int:
        """Number of indexed instances."""
        return cast(int, self.execute("SELECT count(*) FROM instances")[0][0])

    def close(self) -> None:
        """Index what the write-ahead log holds, stop its checkpointer, close the index (all stays durable)."""
        if self.wal is not None:
            self.wal.stop()
        if self._writers is not None:
            self._writers.shutdown()
        with self._lock:
            self._db.close()


class _Transaction:
    def __init__(self, lock: threading.RLock, db: sqlite3.Connection, durable: bool = True) -> None:
        self._lock = lock
        self._db = db
        self._durable = durable

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        try:
            if not self._durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            try:
                self._restore()
            finally:
                self._lock.release()
            raise
        return self._db

    def _restore(self) -> None:
        if not self._durable:
            self._db.execute("PRAGMA synchronous=FULL")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            try:
                self._restore()
            finally:
                self._lock.release()
