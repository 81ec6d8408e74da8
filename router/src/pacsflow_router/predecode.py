"""Decode a study's images while it is still arriving, so that loading it at completion costs next to nothing.

Reading and decoding every instance (``analysis.volume.decode_instance``: pydicom's parse and pixel decode, about a
millisecond per 512x512 CT slice) used to start only when the study was complete, in front of the model: 27 ms for
32 slices, a quarter of a second for 300. The :class:`Predecoder` does it on its own thread as instances arrive, and
the pipeline takes the decoded instances at completion (:meth:`Predecoder.take`).

Ingest never waits on analysis (import-linter's layer contract): the DICOM receiver only sets an event after each
store (``on_stored``); this thread reads the spool's index of new instances (``StudyTracker.arrivals``) and decodes
the files, which are durable and never rewritten once indexed. Nothing depends on it having kept up: the pipeline
decodes whatever is not ready itself, with the same function, so the loaded study is the same either way. The
decoded copies are a cache of durable files; a crash loses time, never data, and after a restart the decoder starts
again from the unfinished studies' instances.

Memory: decoded pixels are held up to ``max_bytes`` (:data:`DEFAULT_MAX_BYTES`); past it new instances are left
for the pipeline to decode at completion (studies that arrived first complete first, so they keep their place). A
study's decoded instances are dropped when the pipeline takes it, and instances arriving while it is processed are
not decoded ahead (an amendment loads them itself).
"""

from __future__ import annotations

import logging
import os
import threading

from . import metrics
from .analysis.volume import DecodedInstance, decode_instance
from .domain import StudyRef
from .ingest.studies import StudyTracker

log = logging.getLogger(__name__)

#: Decoded pixels held at most (bytes): about 4,000 512x512 16-bit slices, a dozen large head CTs.
DEFAULT_MAX_BYTES = 1 << 31
# Decoding is pydicom's Python code, which holds the interpreter lock; an association thread coming back from a
# socket read or an fsync waits for it (up to sys.getswitchinterval(), 5 ms) before it can answer the next C-STORE.
# A pause after each instance (about 1 ms of decoding) gives the lock back at once; the decoder still keeps up with
# several hundred instances a second.
PAUSE_SECONDS = float(os.environ.get("PACSFLOW_PREDECODE_PAUSE", "0.002"))
# Index rows read per query.
_BATCH = 64


class Predecoder:
    """Decodes spooled instances of unfinished studies ahead of their completion, on one background thread.

    Parameters
    ----------
    tracker : StudyTracker
        Where new instances are found (:meth:`StudyTracker.arrivals`).
    max_bytes : int
        Most decoded pixel bytes held; beyond it instances are left to the pipeline.
    poll_seconds : float
        How often the index is read when no store woke the thread (:meth:`wake`).
    pause_seconds : float
        Sleep after each decoded instance (:data:`PAUSE_SECONDS`), so that the association threads get the
        interpreter back at once.
    """

    def __init__(self, tracker: StudyTracker, *, max_bytes: int = DEFAULT_MAX_BYTES, poll_seconds: float = 1.0,
                 pause_seconds: float = PAUSE_SECONDS):
        self._tracker = tracker
        self.max_bytes = max_bytes
        self.poll_seconds = poll_seconds
        self.pause_seconds = pause_seconds
        self._lock = threading.Lock()
        self._ready: dict[str, tuple[str, DecodedInstance]] = {}  # path -> (study UID, decoded instance)
        self._bytes = 0
        self._busy: set[str] = set()  # studies the pipeline has taken and is processing
        self._last_id = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the pipeline's side ------------------------------------------------------------------------------------
    def take(self, ref: StudyRef) -> dict[str, DecodedInstance]:
        """The study's instances decoded so far (by path), removed from the cache; the study counts as in processing
        (no more of its instances are decoded ahead) until :meth:`release`.

        Parameters
        ----------
        ref : StudyRef
            The complete study the pipeline is about to load.

        Returns
        -------
        dict of str to DecodedInstance
            For ``analysis.volume.load_study(ref, decoded)``; instances missing from it are decoded there.
        """
        with self._lock:
            self._busy.add(ref.study_uid)
            taken = {path: item for path, (study, item) in self._ready.items() if study == ref.study_uid}
            for path in taken:
                del self._ready[path]
            self._set_bytes(self._bytes - sum(item.nbytes for item in taken.values()))
        metrics.PREDECODED_INSTANCES.labels("hit").inc(sum(1 for p in ref.paths if p in taken))
        metrics.PREDECODED_INSTANCES.labels("miss").inc(sum(1 for p in ref.paths if p not in taken))
        return taken

    def release(self, study_uid: str) -> None:
        """The pipeline is done with the study (finished or to be retried): instances that arrive from now on (a
        late instance re-opens it) are decoded ahead again."""
        with self._lock:
            self._busy.discard(study_uid)

    def held_bytes(self) -> int:
        """Decoded pixel bytes held now."""
        with self._lock:
            return self._bytes

    # -- the decoder's side -------------------------------------------------------------------------------------
    def wake(self) -> None:
        """Look for new instances now (the DICOM receiver's ``on_stored``; cheap, never blocks the association)."""
        self._wake.set()

    def _set_bytes(self, value: int) -> None:
        self._bytes = value
        metrics.PREDECODED_BYTES.set(value)

    def _skip(self, study_uid: str, path: str) -> bool:
        with self._lock:
            return study_uid in self._busy or path in self._ready or self._bytes >= self.max_bytes

    def decode_new(self) -> int:
        """Decode every instance indexed since the last call whose study is not finished or being processed; returns
        how many were decoded (the background thread calls it; tests may call it directly)."""
        decoded = 0
        while not self._stop.is_set():
            rows = self._tracker.arrivals(self._last_id, _BATCH)
            if not rows:
                break
            for row_id, study_uid, path in rows:
                self._last_id = row_id
                if self._skip(study_uid, path):
                    continue
                item = decode_instance(path)
                with self._lock:
                    # Taken by the pipeline while it was being decoded: the pipeline decodes it itself.
                    if study_uid in self._busy:
                        continue
                    self._ready[path] = (study_uid, item)
                    self._set_bytes(self._bytes + item.nbytes)
                decoded += 1
                if self.pause_seconds:
                    self._stop.wait(self.pause_seconds)
        return decoded

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.decode_new()
            except Exception:  # noqa: BLE001 - a cache must never stop the router; the pipeline decodes on a miss
                log.exception("decoding ahead failed; the pipeline decodes at completion instead")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def start(self) -> None:
        """Start the background thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="pacsflow-predecode", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and drop what it holds."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            self._ready.clear()
            self._set_bytes(0)
