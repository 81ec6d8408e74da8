"""Is the router ready to take studies? The answer of ``GET /readyz`` on the metrics port (the pod's readiness probe).

Ready means what a modality needs from the router: its DICOM listener accepts connections, and the spool, where every
acknowledged instance is written before the C-STORE success, takes a durable write. The spool check is a real one:
a probe file in the spool's instance directory is created, written, fsync'ed and removed, as :meth:`Spool.store` does
with an instance, so a full disk (``ENOSPC``), a file system remounted read-only (``EROFS``), an immutable or removed
directory all answer "not ready" instead of a TCP probe's "listening"; so does a spool above its
``spoolMaxDiskUsage`` watermark, where every C-STORE would be answered 0xA700. The write is done at most once per
``min_interval`` seconds whatever the probe rate (kubelet, a load balancer and a person with curl together); between
writes the last answer is reused. The listener check (the socket is listening, its accept thread alive) is cheap and
made on every request.

Reasons carry no patient data: an errno name and its text, never a file name from a received instance.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: Name of the probe file in the spool's instance directory. Neither an instance (``.dcm``) nor a partial one
#: (``.part``), so the spool's crash recovery never takes it for one.
PROBE_NAME = ".readyz-probe"


class Readiness:
    """The router's readiness: DICOM listener accepting and spool writable.

    Parameters
    ----------
    spool_dir
        Directory where received instances are written (the spool's instance directory); the probe file goes there.
    listening
        Returns whether the DICOM listener accepts connections (``DicomReceiver.listening``).
    space_problem
        Returns why the spool refuses instances for lack of space (``Spool.space_problem``), or ``None``; asked with
        each probe write.
    min_interval
        Seconds between two probe writes; a check in between reuses the last write's outcome.
    clock
        Monotonic clock (tests).
    """

    def __init__(self, spool_dir: Path, listening: Callable[[], bool], *,
                 space_problem: Callable[[], str | None] = lambda: None, min_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spool_dir = spool_dir
        self._listening = listening
        self._space_problem = space_problem
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._written_at: float | None = None
        self._spool_problem: str | None = None
        self._last: tuple[bool, str] | None = None

    def check(self) -> tuple[bool, str]:
        """Whether the router is ready, and why not.

        Returns
        -------
        tuple
            ``(True, "ready")`` or ``(False, reason)``; the reason says what to look at and holds no patient data.
        """
        reasons = []
        if not self._listening():
            reasons.append("the DICOM listener is not accepting connections")
        problem = self._spool_writable()
        if problem is not None:
            reasons.append(problem)
        answer = (not reasons, "; ".join(reasons) or "ready")
        with self._lock:
            if answer != self._last:  # log transitions only: the kubelet asks every few seconds
                (log.info if answer[0] else log.warning)("readiness: %s", answer[1])
                self._last = answer
        return answer

    def _spool_writable(self) -> str | None:
        with self._lock:
            now = self._clock()
            if self._written_at is not None and now - self._written_at < self._min_interval:
                return self._spool_problem
            self._written_at = now
            problem = _probe_write(self.spool_dir / PROBE_NAME)
            self._spool_problem = (f"the spool is not writable ({problem}); free space or fix the spool volume"
                                   if problem is not None else self._full())
            return self._spool_problem

    def _full(self) -> str | None:
        try:
            return self._space_problem()
        except OSError as exc:  # the volume went away between the probe write and statvfs
            return f"the spool's space cannot be read ({errno.errorcode.get(exc.errno or 0, 'error')})"


def _probe_write(path: Path) -> str | None:
    """Create, write, fsync and remove ``path``; ``None`` when that worked, else the errno's name and text."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"pacsflow readiness probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(path)
    except OSError as exc:
        try:
            path.unlink(missing_ok=True)  # a write that failed half-way (ENOSPC) leaves the file created
        except OSError:
            pass  # the directory itself refuses (EROFS, immutable, removed): nothing was left
        name = errno.errorcode.get(exc.errno, "error") if exc.errno is not None else "error"
        return f"{name}: {exc.strerror or type(exc).__name__}"
    return None
