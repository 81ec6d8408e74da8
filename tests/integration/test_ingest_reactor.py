"""ingest.reactor with real storescu peers: every association of the receiver is event-driven, stores and releases
normally, and leaves nothing behind (wake-up pipes closed, association threads ended); a stop aborts a live one."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time

import pydicom
import pynetdicom.association
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from pacsflow_router.config import parse_config
from pacsflow_router.ingest import reactor, scp
from pacsflow_router.ingest.reactor import EventDrivenSocket
from pacsflow_router.ingest.scp import DicomReceiver
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.models import phantom
from tests.peers.dcmtk import storescu
from tests.peers.net import eventually

# dcmtk is required, not optional: make system-deps installs it and a missing storescu fails the tests.


def _same_open_file(fd: int, inode: int) -> bool:
    try:
        return os.fstat(fd).st_ino == inode
    except OSError:
        return False  # closed


def _association_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("AcceptorThread") or "run_reactor" in t.name}


@pytest.fixture
def receiver(tmp_path):
    spool = Spool(tmp_path / "spool", 0.999)
    config = parse_config({"aeTitle": "PACSFLOW", "allowedCallingAETitles": ["STORESCU"],
                           "spoolDir": str(tmp_path / "spool")})
    rx = DicomReceiver(config, spool, port=0, acse_timeout=2, network_timeout=3)
    rx.start()
    yield rx, spool
    rx.stop()
    spool.close()


def test_many_associations_store_release_and_leave_nothing_behind(receiver, tmp_path, monkeypatch):
    rx, spool = receiver
    paths, _ = phantom.write_study(tmp_path / "src", 5, lesion=False, slices=12, rows=16, cols=16)
    # Each association's wake-up pipe, as (descriptor, inode): kept as numbers so the pipes can be collected.
    pipes: list[tuple[int, int]] = []
    make_waker = reactor._Waker.__init__

    def recording_init(self: reactor._Waker) -> None:
        make_waker(self)
        pipes.extend((fd, os.fstat(fd).st_ino) for fd in (self.read_fd, self.write_fd))

    monkeypatch.setattr(reactor._Waker, "__init__", recording_init)
    threads_before = _association_threads()
    for i in range(6):
        result = storescu(rx.port, paths[2 * i:2 * i + 2])
        assert result.returncode == 0 and len(result.acknowledged) == 2, result.output
    assert spool.count() == 12
    assert len(pipes) == 12  # one pipe (two descriptors) per association: all six were event-driven

    def settled() -> bool:
        gc.collect()
        return not (_association_threads() - threads_before) and not any(_same_open_file(*p) for p in pipes)

    eventually(settled, "association threads ended and their wake-up pipes closed", timeout=15,
               context=lambda: f"threads {_association_threads() - threads_before}, open pipes "
                               f"{[p for p in pipes if _same_open_file(*p)]}")


@pytest.fixture
def pynetdicom_logger():
    logger = logging.getLogger("pynetdicom")
    level = logger.level
    yield logger
    logger.setLevel(level)  # setLevel, not the attribute: it also clears the logger's isEnabledFor cache


def test_a_live_association_is_event_driven_and_stop_aborts_it(receiver, tmp_path, pynetdicom_logger):
    rx, spool = receiver
    pynetdicom_logger.setLevel(logging.WARNING)  # as the router's __main__ sets it
    (path,), _ = phantom.write_study(tmp_path / "src", 6, lesion=False, slices=1, rows=16, cols=16)
    requestor = AE("STORESCU")
    requestor.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = requestor.associate("127.0.0.1", rx.port, ae_title="PACSFLOW")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
        (live,) = rx._ae.active_associations
        assert isinstance(live.dul.socket, EventDrivenSocket) and live.dul._run_loop_delay == 0
        assert getattr(live, reactor._MARK) is True  # its association loop skips pynetdicom's 1 ms sleep
        assert pynetdicom.association.time is reactor._LOOP_TIME
        # pynetdicom's logging handlers would format every PDU and message for records nobody sees: unbound.
        assert not any(live.get_handlers(event) for event, _ in scp._STANDARD_LOG_HANDLERS)
        # Idle now: the receiver's reactors wait on events; stop() must still get through to them.
        rx.stop()
        eventually(lambda: assoc.is_aborted, "the receiver's stop aborted the idle association", timeout=15)
        eventually(lambda: live.dul not in threading.enumerate(), "the receiver's DUL thread ended", timeout=15)
    finally:
        if assoc.is_established:
            assoc.abort()
    assert spool.count() == 1


def test_only_the_association_loop_sleep_of_a_marked_thread_is_skipped(monkeypatch):
    assert reactor._LOOP_TIME.monotonic is time.monotonic  # everything but sleep is the time module's own
    slept: list[float] = []

    class _RecordingTime:
        @staticmethod
        def sleep(seconds: float) -> None:
            slept.append(seconds)

    monkeypatch.setattr(reactor, "time", _RecordingTime)

    def sleeps_on(marked: bool) -> None:
        if marked:
            setattr(threading.current_thread(), reactor._MARK, True)
        for seconds in (reactor._ASSOCIATION_LOOP_SLEEP, 0.01, 0.0001):
            reactor._LOOP_TIME.sleep(seconds)

    for marked in (True, False):
        thread = threading.Thread(target=sleeps_on, args=(marked,))
        thread.start()
        thread.join()
    # The marked thread skipped only the 1 ms loop sleep; the unmarked one slept every time, as pynetdicom asked.
    assert slept == [0.01, 0.0001, reactor._ASSOCIATION_LOOP_SLEEP, 0.01, 0.0001]


def test_pynetdicoms_log_handlers_stay_when_its_logger_is_enabled(receiver, pynetdicom_logger):
    rx, _ = receiver
    pynetdicom_logger.setLevel(logging.INFO)
    requestor = AE("STORESCU")
    requestor.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = requestor.associate("127.0.0.1", rx.port, ae_title="PACSFLOW")
    assert assoc.is_established
    try:
        (live,) = rx._ae.active_associations
        assert all(live.get_handlers(event) for event, _ in scp._STANDARD_LOG_HANDLERS)
    finally:
        assoc.release()
