"""Write-ahead segment log: one fdatasync of an overwrite per received instance, before Success.

Why: a new file per instance costs a file fdatasync plus a directory fsync, two journal commits (6.8 ms median on
the development disk); overwriting blocks of a file that is already written out and whose directory entry is
already durable costs one data flush and no journal commit (1.9 ms). So the association thread appends each
instance as one checksummed record to such a *segment* and answers Success after ``fdatasync``; a background
*checkpointer* then materialises the records into the spool's per-instance files and index exactly as
:meth:`.spool.Spool.store_received` always did (one directory fsync per batch), and the readers (completion,
predecode, the pipeline) see an instance once it is indexed, never earlier.

Segment file (``wal/segment-NNNN.wal``, ``segment_bytes`` long, every byte written once at creation):

- a 4 KiB header: ``PFWALSEG``, format version, and the segment's *sequence number* (unique, increasing);
- records from offset 4096: ``PFWALREC``, the sequence number, the metadata length, the data length, a CRC-32 of
  (sequence, lengths, metadata, data), 4 bytes padding; the metadata (receipt time, then the file name the
  checkpointer gives the instance, Study, Series, SOP Instance UID and modality, NUL-separated UTF-8); the
  Part-10 bytes as received.

Records are written in order under one lock and each is acknowledged only after an ``fdatasync`` that returned
after its write, so when a record is acknowledged every record before it in its segment is durable too. A
scan therefore stops at the first record that is not whole: a zero or other-sequence header is the end, a record
with the segment's sequence number whose lengths or CRC do not check is a *torn* one (never acknowledged:
counted, logged, ignored).

Retiring a segment whose records are all indexed re-stamps its header with a fresh sequence number (one
``fdatasync``) before it is appended to again: its old records then carry a stale number, so a replay can never
resurrect them, and nothing is re-zeroed.

At start-up (:meth:`WriteAheadLog.replay`, before the DICOM port opens) every record of every segment is handed
to the spool, which materialises those whose SOP Instance UID it does not hold yet (idempotent), and every
segment is re-stamped empty.

An instance larger than a segment, or one that arrives while no segment is free (the checkpointer is behind, or
the first segments are still being written out), takes the direct path of :meth:`.spool.Spool.store_received`.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..durable import fsync_dir

log = logging.getLogger(__name__)

SEGMENT_MAGIC = b"PFWALSEG"
RECORD_MAGIC = b"PFWALREC"
FORMAT_VERSION = 1
HEADER_BYTES = 4096
_SEGMENT_HEADER = struct.Struct("<8sIIQ")  # magic, version, padding, sequence
_RECORD_HEADER = struct.Struct("<8sQIIII")  # magic, sequence, metadata length, data length, crc32, padding
_CRC_FIELDS = struct.Struct("<QII")  # sequence, metadata length, data length: covered by the CRC
_RECEIVED_AT = struct.Struct("<d")
_MAX_META = 4096
_ZEROS = bytes(1 << 20)

#: Default segment size and most segments: 16 MiB holds 30 CT slices of 512 KB. Segments are created one at a
#: time when none is free (a burst the checkpointer has not caught up with), up to 8 (128 MiB of the spool).
SEGMENT_BYTES = 16 << 20
MAX_SEGMENTS = 8
#: The checkpointer works when appends pause for IDLE_SECONDS (between studies, or a sender's gaps), when the oldest
#: ready record has waited MAX_DELAY_SECONDS, or when at most one segment is left spare: its writes then compete
#: as little as possible with the appends' flushes. BATCH_RECORDS per batch (one directory fsync, one index pass).
IDLE_SECONDS = 0.1
MAX_DELAY_SECONDS = 1.0
BATCH_RECORDS = 64
#: After a segment could not be created (disk full), the next try waits this long.
CREATE_RETRY_SECONDS = 30.0


@dataclass(eq=False)
class _Segment:
    path: Path
    fd: int
    size: int
    sequence: int = 0
    offset: int = HEADER_BYTES
    outstanding: int = 0  # records appended and not yet indexed (or given up)


@dataclass(eq=False)
class WalRecord:
    """One received instance in a segment, until the checkpointer has indexed it.

    ``touched_at``: a duplicate of this SOP Instance UID arrived while it was pending (the study clock moves then,
    as :meth:`.spool.Spool.store_received` does for an indexed duplicate).
    """

    name: str
    attributes: tuple[str, str, str, str]
    received_at: float
    size: int
    segment: _Segment = field(repr=False)
    data_offset: int = 0
    touched_at: float | None = None

    def read(self) -> bytes:
        """The Part-10 bytes as received (from the page cache, normally)."""
        return _pread_all(self.segment.fd, self.size, self.data_offset)


class WriteAheadLog:
    """Segments, the append path and the checkpointer thread of the write-ahead spool.

    Parameters
    ----------
    directory
        Where the segment files live (``<spoolDir>/wal``); created if missing.
    materialise
        Called on the checkpointer thread (and by :meth:`replay`) with records in receipt order: it must make each
        instance durable in the spool and indexed, skipping SOP Instance UIDs already indexed, and raise on failure
        (the records then stay pending and are retried).
    on_indexed
        Called after each batch is indexed (wake the readers).
    segment_bytes, max_segments
        Segment size and the most segments kept (created one by one as traffic needs them, never deleted).
    paused
        Test-only: the checkpointer indexes nothing (records stay in the segments until a restart replays them;
        ``PACSFLOW_ROUTER_TEST_PAUSE_CHECKPOINTER=1`` for the router, see docs/operations.md).
    """

    def __init__(self, directory: Path, materialise: Callable[[list[WalRecord]], None], *,
                 on_indexed: Callable[[], None] | None = None, segment_bytes: int = SEGMENT_BYTES,
                 max_segments: int = MAX_SEGMENTS, paused: bool = False) -> None:
        if segment_bytes < 2 * HEADER_BYTES or segment_bytes % HEADER_BYTES:
            raise ValueError(f"segment_bytes must be a multiple of {HEADER_BYTES} and at least two of them")
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.max_segments = max_segments
        self.paused = paused
        self.on_indexed = on_indexed
        self._materialise = materialise
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._segments: list[_Segment] = []
        self._free: list[_Segment] = []
        self._current: _Segment | None = None
        self._pending: dict[str, WalRecord] = {}  # by SOP Instance UID, appended and not yet indexed
        self._ready: list[WalRecord] = []  # fdatasync'ed, for the checkpointer
        self._last_append = 0.0  # monotonic
        self._ready_since = 0.0  # monotonic time the oldest ready record became ready
        self._stop = False
        self._create_after = 0.0  # monotonic time before which no new segment is tried (after a failure)
        self._thread: threading.Thread | None = None
        #: Counters (since start): records replayed at start-up, torn records ignored, appends, direct fallbacks.
        self.replayed = 0
        self.torn = 0
        self.appended = 0
        self.fallbacks = 0
        directory.mkdir(parents=True, exist_ok=True)
        fsync_dir(directory.parent)
        for path in directory.glob("*.tmp"):
            path.unlink()
        for path in sorted(directory.glob("segment-*.wal")):
            fd = os.open(path, os.O_RDWR)
            size = os.fstat(fd).st_size
            if size != segment_bytes:  # written with another size: keep it readable, never append to it
                log.info("write-ahead segment %s is %d bytes, not %d; replayed, then left alone",
                         path.name, size, segment_bytes)
            self._segments.append(_Segment(path, fd, size, _read_sequence(fd)))
        self._next_sequence = max((s.sequence for s in self._segments), default=0) + 1

    # -- start-up ---------------------------------------------------------------------------------------------------

    def replay(self) -> int:
        """Hand every whole record of every segment to ``materialise``, then stamp every segment empty.

        Returns
        -------
        int
            Records found (the spool skips those it already holds).
        """
        records: list[WalRecord] = []
        for segment in sorted(self._segments, key=lambda s: s.sequence):
            found, torn = _scan(segment)
            records.extend(found)
            if torn:
                self.torn += 1
                log.warning("write-ahead segment %s: a torn record at its tail (never acknowledged) ignored",
                            segment.path.name)
        if records:
            self._materialise(records)
            log.info("write-ahead log: %d record(s) replayed into the spool", len(records))
        self.replayed = len(records)
        for segment in self._segments:
            self._stamp(segment)
            if segment.size == self.segment_bytes:
                self._free.append(segment)
        return len(records)

    def start(self) -> None:
        """Start the checkpointer thread (after :meth:`replay`)."""
        self._thread = threading.Thread(target=self._run, name="spool-checkpointer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Index what is pending (unless paused) and stop the checkpointer; the segments stay for a replay."""
        with self._lock:
            self._stop = True
            self._wakeup.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for segment in self._segments:
            os.close(segment.fd)
        self._segments.clear()

    # -- the association thread's path --------------------------------------------------------------------------

    def pending(self, sop_instance_uid: str) -> WalRecord | None:
        """The record of this SOP Instance UID appended but not yet indexed, if any."""
        with self._lock:
            return self._pending.get(sop_instance_uid)

    def touch(self, record: WalRecord, when: float) -> None:
        """A duplicate of a pending record arrived at ``when``: its study clock moves once it is indexed."""
        with self._lock:
            record.touched_at = when if record.touched_at is None else max(record.touched_at, when)

    def pending_studies(self) -> set[str]:
        """Study Instance UIDs with instances acknowledged but not yet indexed (not complete yet, whatever the
        clock says)."""
        with self._lock:
            return {record.attributes[0] for record in self._pending.values()}

    def append(self, parts: tuple[bytes | memoryview, ...], attributes: tuple[str, str, str, str], name: str,
               received_at: float) -> tuple[WalRecord, bool] | None:
        """Durably append one instance; the caller may answer Success when this returns a new record.

        Returns
        -------
        (WalRecord, bool) or None
            ``(record, False)``: the new record, durable; ``(pending, True)``: a record of the same SOP Instance
            UID is still pending (nothing written); ``None``: it does not fit in a free segment (the caller stores
            it directly).

        Raises
        ------
        OSError
            The write or the fdatasync failed (the caller refuses the instance).
        """
        meta = _RECEIVED_AT.pack(received_at) + "\0".join((name, *attributes)).encode()
        size = sum(len(p) for p in parts)
        length = _RECORD_HEADER.size + len(meta) + size
        with self._lock:
            existing = self._pending.get(attributes[2])
            if existing is not None:
                return existing, True
            if len(meta) > _MAX_META or length > self.segment_bytes - HEADER_BYTES:
                self.fallbacks += 1
                return None
            segment = self._current
            if segment is None or segment.offset + length > segment.size:
                segment = self._current = self._free.pop(0) if self._free else None
                self._wakeup.notify_all()  # a retired segment may be waiting for re-stamping, or a new one needed
                if segment is None:
                    self.fallbacks += 1
                    return None
            crc = zlib.crc32(meta, zlib.crc32(_CRC_FIELDS.pack(segment.sequence, len(meta), size)))
            for part in parts:
                crc = zlib.crc32(part, crc)
            header = _RECORD_HEADER.pack(RECORD_MAGIC, segment.sequence, len(meta), size, crc, 0)
            offset = segment.offset
            try:
                write_all(segment.fd, (header, meta, *parts), offset)
            except OSError:
                self._current = None  # never append after a record that may be half-written
                raise
            segment.offset += length
            segment.outstanding += 1
            record = WalRecord(name, attributes, received_at, size, segment,
                               offset + _RECORD_HEADER.size + len(meta))
            self._pending[attributes[2]] = record
            self.appended += 1
            self._last_append = time.monotonic()
        try:
            os.fdatasync(segment.fd)  # outside the lock: concurrent associations share one flush (group commit)
        except OSError:
            with self._lock:
                # Not acknowledged; it may still be replayed after a crash (kept data, like an unacknowledged file).
                del self._pending[attributes[2]]
                segment.outstanding -= 1
                if self._current is segment:
                    self._current = None
            raise
        with self._lock:
            self._ready.append(record)
            if len(self._ready) == 1:
                self._ready_since = time.monotonic()
                self._wakeup.notify_all()
        return record, False

    # -- checkpointer -----------------------------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.0
        while True:
            with self._lock:
                while not self._stop and not self._work_waiting():
                    self._wakeup.wait(IDLE_SECONDS if self._ready else 1.0)
                stopping = self._stop
            try:
                self._maintain(create=not stopping)
                self._checkpoint(create=not stopping)
                backoff = 0.0
            except OSError as exc:
                backoff = min(max(backoff * 2, 0.5), 10.0)
                log.error("write-ahead checkpoint failed (%s); the instances stay in the segments, retrying in "
                          "%.1f s", exc, backoff)
                if stopping:
                    return
                time.sleep(backoff)
                continue
            if stopping:
                with self._lock:
                    if self.paused or not self._ready:
                        return

    def _checkpoint_due(self) -> bool:
        if not self._ready or self.paused:
            return False
        now = time.monotonic()
        spare = len(self._free) + self.max_segments - len(self._segments)
        return (self._stop or now - self._last_append >= IDLE_SECONDS
                or now - self._ready_since >= MAX_DELAY_SECONDS or spare <= 1)

    def _work_waiting(self) -> bool:
        if self._checkpoint_due():
            return True
        if self._needs_segment():
            return True
        return any(self._retirable(s) for s in self._segments)

    def _needs_segment(self) -> bool:
        # Keep one free segment ahead of the one being appended to, once traffic has asked for one.
        return (not self._free and len(self._segments) < self.max_segments
                and time.monotonic() >= self._create_after) and (
            self._current is not None or self.fallbacks > 0 or self.appended > 0)

    def _retirable(self, segment: _Segment) -> bool:
        return (segment is not self._current and segment not in self._free and segment.outstanding == 0
                and segment.size == self.segment_bytes)

    def _checkpoint(self, *, create: bool = True) -> None:
        if self.paused:
            return
        with self._lock:
            batch = self._ready[:BATCH_RECORDS]
        if not batch:
            return
        self._materialise(batch)
        with self._lock:
            del self._ready[:len(batch)]  # only appended to meanwhile: the batch is still its head
            for record in batch:
                if self._pending.get(record.attributes[2]) is record:
                    del self._pending[record.attributes[2]]
                record.segment.outstanding -= 1
        if self.on_indexed is not None:
            self.on_indexed()
        self._maintain(create=create)

    def _maintain(self, *, create: bool = True) -> None:
        with self._lock:
            current = self._current
            if current is not None and current.outstanding == 0 and current.offset > HEADER_BYTES:
                # Everything in it is indexed and nothing is arriving: retire it now rather than when full, so
                # its records cannot outlive their index rows (a replay after a clean-up would bring them back).
                self._current = None
            retire = [s for s in self._segments if self._retirable(s)]
            create = create and self._needs_segment()
        for segment in retire:
            self._stamp(segment)
            with self._lock:
                segment.offset = HEADER_BYTES
                self._free.append(segment)
        if create and time.monotonic() >= self._create_after:
            try:
                segment = self._create()
            except OSError as exc:
                # No room for another segment (disk full, quota): appends take the direct path meanwhile, and
                # the records already appended are still indexed.
                self._create_after = time.monotonic() + CREATE_RETRY_SECONDS
                log.warning("write-ahead segment could not be created (%s); instances are stored directly, "
                            "retrying in %.0f s", exc, CREATE_RETRY_SECONDS)
                return
            with self._lock:
                self._segments.append(segment)
                self._free.append(segment)

    def _stamp(self, segment: _Segment) -> None:
        """Give the segment a fresh sequence number, durably: its records become stale."""
        with self._lock:
            sequence = self._next_sequence
            self._next_sequence += 1
        write_all(segment.fd, (_segment_header(sequence),), 0)
        os.fdatasync(segment.fd)
        segment.sequence = sequence
        segment.offset = HEADER_BYTES

    def _create(self) -> _Segment:
        """A new segment, every byte written and flushed, its directory entry durable."""
        number = 1 + max((int(s.path.stem.split("-")[1]) for s in self._segments), default=0)
        path = self.directory / f"segment-{number:04d}.wal"
        tmp = path.with_suffix(".tmp")
        with self._lock:
            sequence = self._next_sequence
            self._next_sequence += 1
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            write_all(fd, (_segment_header(sequence),), 0)
            offset = HEADER_BYTES
            while offset < self.segment_bytes:
                chunk = min(len(_ZEROS), self.segment_bytes - offset)
                write_all(fd, (memoryview(_ZEROS)[:chunk],), offset)
                offset += chunk
            os.fsync(fd)  # data and size: the blocks are allocated and written, later overwrites need no commit
            os.replace(tmp, path)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        log.debug("write-ahead segment %s created (%d bytes)", path.name, self.segment_bytes)
        return _Segment(path, fd, self.segment_bytes, sequence)


def _segment_header(sequence: int) -> bytes:
    return _SEGMENT_HEADER.pack(SEGMENT_MAGIC, FORMAT_VERSION, 0, sequence)


def _read_sequence(fd: int) -> int:
    """The segment's sequence number, or 0 for a header that is not one (the segment then holds nothing)."""
    raw = os.pread(fd, _SEGMENT_HEADER.size, 0)
    if len(raw) < _SEGMENT_HEADER.size:
        return 0
    magic, version, _, sequence = _SEGMENT_HEADER.unpack(raw)
    return int(sequence) if magic == SEGMENT_MAGIC and version == FORMAT_VERSION else 0


def _scan(segment: _Segment) -> tuple[list[WalRecord], bool]:
    """The whole records of a segment in order, and whether a torn record ended the scan."""
    records: list[WalRecord] = []
    if not segment.sequence:
        return records, False
    offset = HEADER_BYTES
    while offset + _RECORD_HEADER.size <= segment.size:
        magic, sequence, meta_len, size, crc, _ = _RECORD_HEADER.unpack(
            os.pread(segment.fd, _RECORD_HEADER.size, offset))
        if magic != RECORD_MAGIC or sequence != segment.sequence:
            return records, False  # the end: zeros, or a stale record from before the last re-stamp
        end = offset + _RECORD_HEADER.size + meta_len + size
        if meta_len > _MAX_META or end > segment.size:
            return records, True
        meta = _pread_all(segment.fd, meta_len, offset + _RECORD_HEADER.size)
        check = zlib.crc32(meta, zlib.crc32(_CRC_FIELDS.pack(sequence, meta_len, size)))
        data_offset = offset + _RECORD_HEADER.size + meta_len
        check = zlib.crc32(_pread_all(segment.fd, size, data_offset), check)
        if check != crc:
            return records, True
        try:
            (received_at,) = _RECEIVED_AT.unpack_from(meta)
            name, study, series, sop, modality = meta[_RECEIVED_AT.size:].decode().split("\0")
        except ValueError:  # a CRC-valid record this version cannot read: stop, as for a torn one
            return records, True
        records.append(WalRecord(name, (study, series, sop, modality), received_at, size, segment, data_offset))
        offset = end
    return records, False


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    chunks = []
    while size:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            raise OSError(f"write-ahead segment ends {size} bytes early")
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def write_all(fd: int, parts: tuple[bytes | memoryview, ...], offset: int | None = None) -> None:
    """``writev`` (``pwritev`` at ``offset``) until every byte of ``parts`` is written (a regular file may take
    fewer bytes per call)."""
    pending = [memoryview(p) for p in parts if len(p)]
    while pending:
        if offset is None:
            written = os.writev(fd, pending)
        else:
            written = os.pwritev(fd, pending, offset)
            offset += written
        while pending and written >= len(pending[0]):
            written -= len(pending[0])
            pending.pop(0)
        if pending and written:
            pending[0] = pending[0][written:]

