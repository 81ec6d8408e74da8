"""``/readyz`` of a real router process: its spool on a real file system that fills up, and a removed directory.

The spool is a small tmpfs mounted for the test (the test runs as root, and chmod does not stop root: a full file
system and a missing directory are what truly make writes fail). Filling it makes the probe write fail with ENOSPC,
so ``/readyz`` answers 503 with that reason while ``/healthz`` stays 200 (the kubelet takes the pod out of the
Service and does not restart it); freeing the space makes it 200 again. The same for the spool's instance directory
removed and put back.
"""

from __future__ import annotations

import errno
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.net import eventually
from tests.peers.router import RouterProcess, free_port, router_config

pytestmark = pytest.mark.slow


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "spoolfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"mounting a tmpfs needs root with CAP_SYS_ADMIN (as CI runs): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def router(tmp_path: Path, small_fs: Path) -> Iterator[RouterProcess]:
    config = router_config(workdir=tmp_path / "router", port=free_port(), metrics_port=free_port(), pacs_port=None,
                           use_cases=[])
    config["spoolDir"] = str(small_fs / "spool")
    proc = RouterProcess(tmp_path / "router", config).start()
    try:
        yield proc
    finally:
        proc.stop()


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system says ENOSPC."""
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # Whatever pages are left go to the last partial writes.
    with open(path, "ab", buffering=0) as out:
        for size in (4096, 512, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc


def test_readyz_follows_whether_the_spool_takes_a_write(router: RouterProcess, small_fs: Path):
    base = router.metrics_url.removesuffix("/metrics")
    log = router.log
    assert eventually(lambda: _get(f"{base}/readyz") == (200, "ready\n"), "ready at start", context=log)

    filler = small_fs / "filler"
    _fill(filler)
    status, reason = eventually(lambda: (r := _get(f"{base}/readyz"))[0] == 503 and r, "503 on a full spool",
                                context=log)
    assert reason.startswith("the spool is not writable (ENOSPC: No space left on device)"), reason
    assert _get(f"{base}/healthz") == (200, "ok\n")  # alive: not ready is no reason to restart it
    filler.unlink()
    eventually(lambda: _get(f"{base}/readyz") == (200, "ready\n"), "ready again once space is freed", context=log)

    instances = small_fs / "spool" / "instances"
    moved = instances.rename(small_fs / "spool" / "moved-away")
    status, reason = eventually(lambda: (r := _get(f"{base}/readyz"))[0] == 503 and r, "503 without the directory",
                                context=log)
    assert "ENOENT" in reason, reason
    moved.rename(instances)
    eventually(lambda: _get(f"{base}/readyz") == (200, "ready\n"), "ready again with the directory back", context=log)
    # The transitions are logged once each, with the reason and nothing else.
    assert log().count("readiness: the spool is not writable") == 2
    assert not list(instances.glob(".readyz-probe*"))  # the probe leaves no file behind
