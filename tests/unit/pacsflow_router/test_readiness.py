"""Readiness: a real write+fsync+unlink in the spool directory, at most once per interval, and the listener."""

from __future__ import annotations

import os
from pathlib import Path

from pacsflow_router.readiness import PROBE_NAME, Readiness


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ready_when_listening_and_the_spool_takes_a_write(tmp_path: Path):
    readiness = Readiness(tmp_path, lambda: True)
    assert readiness.check() == (True, "ready")
    assert not (tmp_path / PROBE_NAME).exists()  # the probe file is removed again
    assert os.listdir(tmp_path) == []


def test_a_removed_spool_directory_is_not_ready_with_the_errno_and_recovers(tmp_path: Path):
    clock = Clock()
    spool = tmp_path / "instances"
    spool.mkdir()
    readiness = Readiness(spool, lambda: True, clock=clock)
    assert readiness.check()[0]
    spool.rmdir()
    # Within the interval the last write's outcome is reused: no write per request.
    assert readiness.check() == (True, "ready")
    clock.now += 1.0
    ok, reason = readiness.check()
    assert not ok
    assert reason.startswith("the spool is not writable (ENOENT: No such file or directory)")
    assert str(spool) not in reason
    spool.mkdir()
    clock.now += 0.5
    assert not readiness.check()[0]  # still the cached failure
    clock.now += 0.5
    assert readiness.check() == (True, "ready")


def test_a_listener_that_does_not_accept_is_not_ready(tmp_path: Path):
    listening = [False]
    readiness = Readiness(tmp_path, lambda: listening[0])
    assert readiness.check() == (False, "the DICOM listener is not accepting connections")
    listening[0] = True
    assert readiness.check() == (True, "ready")


def test_both_reasons_are_given(tmp_path: Path):
    readiness = Readiness(tmp_path / "gone", lambda: False)
    ok, reason = readiness.check()
    assert not ok and "DICOM listener" in reason and "spool is not writable" in reason


def test_a_spool_above_its_disk_usage_watermark_is_not_ready_until_space_is_back(tmp_path: Path):
    # A real spool on this file system: a watermark below what the file system already uses refuses every C-STORE
    # (0xA700), so the pod must leave the Service as with ENOSPC.
    from pacsflow_router.ingest.spool import Spool

    spool = Spool(tmp_path / "spool", max_disk_usage=1e-9)
    clock = Clock()
    readiness = Readiness(spool.instance_dir, lambda: True, space_problem=spool.space_problem, clock=clock)
    ok, reason = readiness.check()
    assert not ok
    assert "above spoolMaxDiskUsage 0.0%" in reason and str(tmp_path) not in reason
    spool.max_disk_usage = 1.0
    clock.now += 1.0
    assert readiness.check() == (True, "ready")
