"""Loopback helpers shared by every peer launcher: free ports and waiting for a listener."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 60.0, proc: subprocess.Popen | None = None,
              host: str = "127.0.0.1") -> None:
    """Block until something accepts TCP connections on ``host:port`` (fail early if ``proc`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def eventually(check, what: str, timeout: float = 60.0, *, context=None):
    """Poll ``check`` until it returns something truthy and return that; fail naming ``what`` otherwise.

    ``context`` (optional, a callable returning text, e.g. a process log tail) is added to the failure message.
    Used instead of sleeps and timing asserts: how long it took is for bench/, not for tests.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.2)
    extra = f"\n{context()}" if context else ""
    raise AssertionError(f"{what} did not happen within {timeout:.0f}s{extra}")


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM a peer we started (by its PID), wait, SIGKILL after ``timeout`` seconds; nothing if it has exited."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
