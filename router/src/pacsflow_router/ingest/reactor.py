"""Event-driven wake-ups for pynetdicom's acceptor reactors (no polling sleeps on the C-STORE critical path).

pynetdicom 3.0 runs two polling loops per association:

* the DUL reactor (``DULServiceProvider.run_reactor``) sleeps ``_run_loop_delay`` (1 ms) whenever a pass found
  nothing to do, so a C-STORE response queued by the association thread waits up to 1 ms before it is sent, and a
  PDU that arrives while it sleeps waits too;
* the association reactor (``Association._run_reactor``) polls the DIMSE message queue with ``get_msg(block=False)``
  after a 1 ms sleep, so a completely received C-STORE request waits up to 1 ms before the handler runs.

storescu (like most modalities) waits for each response before it sends the next instance, so both delays are paid
once per instance: py-spy put 36 % of the receiver's samples in these sleeps. pynetdicom has no setting for either
loop (``_config`` has none; ``_run_loop_delay`` is a private attribute and 0 makes the DUL spin), so
:func:`make_event_driven` adjusts one acceptor association, without copying any pynetdicom code:

* the DUL thread blocks in ``select`` on its socket *and* a wake-up pipe (:class:`EventDrivenSocket.ready`, with
  ``_run_loop_delay`` 0) instead of sleeping; putting a primitive on ``to_provider_queue`` writes to the pipe;
* the association thread's non-blocking ``get_msg`` waits on an event set by the DIMSE message queue and by the DUL's
  ``to_user_queue`` (release and abort requests), so a request or a release wakes it at once;
* the association loop's own ``time.sleep(0.001)`` at the top of every pass (py-spy: 17-23 % of the association
  thread's time, more than 1 ms per instance on a loaded machine) is skipped on these associations' threads only:
  ``pynetdicom.association`` looks ``time`` up in its module globals on every call, so :data:`_LOOP_TIME` stands in
  for it there, sleeps as ``time`` does for every other thread and duration, and returns at once for exactly
  :data:`_ASSOCIATION_LOOP_SLEEP` on a thread marked by :func:`make_event_driven` (the association object is the
  thread that runs its loop). The pass then waits in ``get_msg`` instead, so the loop never spins.

Both waits are bounded by :data:`WAIT_SECONDS`, so the timers the loops check on every pass (ARTIM, the network idle
timeout, a local kill) keep working with at most that much extra delay. Candidate for upstream: an event-driven
reactor in pynetdicom itself (this module shows the hooks it would need).
"""

from __future__ import annotations

import os
import queue
import select
import ssl
import threading
import time
from typing import Any

import pynetdicom.association
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket

#: Longest a reactor waits without an event before it re-checks its timers (ARTIM, network timeout, kill).
WAIT_SECONDS = 0.05
#: Pause of the DUL loop once its transport is closed (pynetdicom's own 1 ms), so it does not spin until killed.
_CLOSED_PAUSE = 0.001
#: The sleep at the top of every pass of pynetdicom's ``Association._run_reactor`` (pynetdicom 3.0).
_ASSOCIATION_LOOP_SLEEP = 0.001
#: Attribute that marks an association (a thread) as event-driven.
_MARK = "_pacsflow_event_driven"


class _Waker:
    """A self-pipe: :meth:`set` from any thread makes the read end readable for ``select``."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)

    def set(self) -> None:
        try:
            os.write(self.write_fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of unread wake-ups: the reader is woken anyway

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def __del__(self) -> None:
        # Closed only when unreachable: closing earlier could let a late ``set`` write into a reused descriptor.
        for fd in (self.read_fd, self.write_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class _NotifyingQueue(queue.Queue[Any]):
    """A queue that calls ``notify`` after every put (the DUL's and the DIMSE provider's hand-over queues)."""

    def __init__(self, notify: Any) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


class _WaitingMessageQueue(_NotifyingQueue):
    """DIMSE message queue whose non-blocking ``get`` (the association reactor's poll) waits for activity.

    Activity is a put here (a complete DIMSE message) or on the DUL's ``to_user_queue`` (release, abort), both
    setting ``activity``; at most :data:`WAIT_SECONDS` are waited, then ``queue.Empty`` as before.
    """

    def __init__(self, activity: threading.Event) -> None:
        super().__init__(activity.set)
        self._activity = activity

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block:
            return super().get(True, timeout)
        self._activity.clear()  # before looking, so a put after the look still wakes the wait below
        if self.empty():
            self._activity.wait(WAIT_SECONDS)
        return super().get(False)


class EventDrivenSocket(AssociationSocket):
    """AssociationSocket whose ``ready`` blocks until data arrives, a primitive is queued, or :data:`WAIT_SECONDS`.

    Installed by :func:`make_event_driven` (the DUL reactor calls ``ready`` once per pass when it has nothing to send).
    """

    _pacsflow_waker: _Waker | None = None

    @property
    def ready(self) -> bool:
        waker = self._pacsflow_waker
        if waker is None:
            return bool(super().ready)
        sock = self.socket
        if sock is None or self._is_connected is False:
            time.sleep(_CLOSED_PAUSE)
            return False
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True  # decrypted bytes already buffered: select cannot see them (pynetdicom #528)
        # Events the DUL queued itself (e.g. Evt5 at start) must be handled now, not after a wait.
        timeout = 0.0 if not self.assoc.dul.event_queue.empty() else WAIT_SECONDS
        try:
            readable, _, _ = select.select([sock.fileno(), waker.read_fd], [], [], timeout)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # transport connection closed, as pynetdicom's ready does
            return False
        if waker.read_fd in readable:
            waker.drain()
        return sock.fileno() in readable


class _AssociationLoopTime:
    """``time`` as ``pynetdicom.association`` sees it: the association loop's 1 ms sleep skipped on marked threads."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if seconds == _ASSOCIATION_LOOP_SLEEP and getattr(threading.current_thread(), _MARK, False):
            return  # the pass waits in _WaitingMessageQueue.get instead (at most WAIT_SECONDS)
        time.sleep(seconds)


#: Installed once, at import; every thread not marked by make_event_driven sleeps exactly as before.
_LOOP_TIME = _AssociationLoopTime()
setattr(pynetdicom.association, "time", _LOOP_TIME)  # noqa: B010  # the module global its loop looks up


def make_event_driven(assoc: Association) -> None:
    """Replace both polling sleeps of a not yet started acceptor association with event-driven waits.

    Call it before ``assoc.start()``, with ``assoc.dul.socket`` an :class:`EventDrivenSocket` (or subclass).
    """
    socket = assoc.dul.socket
    if not isinstance(socket, EventDrivenSocket):
        raise TypeError("make_event_driven needs the association's socket to be an EventDrivenSocket")
    waker = _Waker()
    activity = threading.Event()
    dul = assoc.dul
    dul.to_provider_queue = _NotifyingQueue(waker.set)
    dul.to_user_queue = _NotifyingQueue(activity.set)
    assoc.dimse.msg_queue = _WaitingMessageQueue(activity)
    dul._run_loop_delay = 0  # its sleep now only yields the GIL; the wait is in EventDrivenSocket.ready
    socket._pacsflow_waker = waker
    setattr(assoc, _MARK, True)  # its loop's 1 ms sleep is skipped (_AssociationLoopTime)
