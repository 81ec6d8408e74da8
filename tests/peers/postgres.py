"""A throwaway PostgreSQL cluster (Debian ``postgresql``): initdb + pg_ctl in a temporary directory, on a free
loopback port, trust authentication for one superuser; stopped by its postmaster's PID.

initdb refuses to run as root, so under root the cluster belongs to the ``postgres`` user the Debian package creates
(its directory is made in /tmp, not under pytest's root-only tmp folder, and removed afterwards).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from tests.peers.net import free_port, wait_port


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin folder, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


def available() -> bool:
    return bin_dir() is not None


@contextmanager
def cluster() -> Iterator[str]:
    """Start a cluster; yield its SQLAlchemy URL (``postgresql+psycopg://pacsflow@127.0.0.1:<port>/pacsflow``)."""
    bindir = bin_dir()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed: run scripts/install-system-deps.sh (Debian postgresql)")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="pacsflow-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    postmaster_pid = None
    try:
        subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "pacsflow", "--auth=trust",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, timeout=120)
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60",
                        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True, timeout=90)
        postmaster_pid = int((data / "postmaster.pid").read_text().split()[0])
        wait_port(port, timeout=30)
        subprocess.run([*as_user, str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "pacsflow",
                        "pacsflow"], check=True, capture_output=True, timeout=30)
        yield f"postgresql+psycopg://pacsflow@127.0.0.1:{port}/pacsflow"
    finally:
        if postmaster_pid is not None:
            _stop(postmaster_pid)
        shutil.rmtree(root, ignore_errors=True)


def _stop(pid: int, timeout: float = 30.0) -> None:
    """Fast shutdown (SIGINT to the postmaster: roll back sessions, exit); SIGKILL if it is still there later."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One throwaway PostgreSQL cluster for the test session; yields the URL of its ``pacsflow`` database."""
    if not available():
        pytest.fail("PostgreSQL is not installed: run scripts/install-system-deps.sh (Debian postgresql)")
    with cluster() as url:
        yield url


def fresh_database(server_url: str) -> str:
    """Create an empty database on the cluster at ``server_url``; return its URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)
