"""A real syslog collector: Debian ``rsyslogd`` (with ``rsyslog-gnutls``) on its own config, receiving syslog over
TLS (imtcp, StreamDriver gtls, RFC 5425 octet-counted framing) on a free loopback port and writing each message's MSG
part on its own line to a file. Started in the foreground as an unprivileged process (``nobody`` when the tests run
as root), stopped by its PID.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.peers.certs import Issued
from tests.peers.net import free_port, stop_process, wait_port

RSYSLOGD = "/usr/sbin/rsyslogd"
GTLS_MODULE = "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so"


def require() -> None:
    """Fail (never skip) with what to install when rsyslog or its TLS driver is missing."""
    if not Path(RSYSLOGD).exists() or not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
        pytest.fail("rsyslog with TLS is not installed: run scripts/install-system-deps.sh "
                    "(Debian rsyslog rsyslog-gnutls)")


class Collector:
    """``rsyslogd -n`` with TLS on ``port``; :meth:`messages` reads what it received."""

    def __init__(self, server: Issued, *, port: int | None = None, client_ca: Path | None = None) -> None:
        require()
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pacsflow-rsyslog-"))
        self.received = self.root / "received.log"
        for name, source in (("ca.pem", client_ca or server.ca), ("cert.pem", server.cert), ("key.pem", server.key)):
            shutil.copy(source, self.root / name)
        # anon: any client (TLS still required); x509/certvalid: a client certificate from client_ca (mutual TLS).
        auth = "x509/certvalid" if client_ca is not None else "anon"
        (self.root / "rsyslog.conf").write_text(f"""
global(maxMessageSize="64k" workDirectory="{self.root}"
       defaultNetstreamDriverCAFile="{self.root}/ca.pem" defaultNetstreamDriverCertFile="{self.root}/cert.pem"
       defaultNetstreamDriverKeyFile="{self.root}/key.pem")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="{auth}")
input(type="imtcp" address="127.0.0.1" port="{self.port}")
template(name="msgonly" type="string" string="%msg%\\n")
action(type="omfile" file="{self.received}" template="msgonly" flushOnTXEnd="on" asyncWriting="off")
""")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            for path in [self.root, *self.root.iterdir()]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            self.as_user = ["runuser", "-u", "nobody", "--"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Collector:
        """Start rsyslogd and wait for its port."""
        self.proc = subprocess.Popen(
            [*self.as_user, RSYSLOGD, "-n", "-f", str(self.root / "rsyslog.conf"), "-i", str(self.root / "pid")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            wait_port(self.port, timeout=30)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> str:
        """Stop rsyslogd (by PID); returns what it printed."""
        if self.proc is None:
            return ""
        stop_process(self.proc)
        out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
        self.proc = None
        return out

    def messages(self) -> list[str]:
        """The MSG part of every message received so far (BOM and surrounding space stripped)."""
        if not self.received.exists():
            return []
        return [line.strip().lstrip("\ufeff").strip() for line in self.received.read_text(encoding="utf-8")
                .splitlines() if line.strip()]

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
