"""A webhook receiver for tests, the demo and the benchmark: records every POST, answers scripted statuses.

The stand-in for a vendor worklist API behind an adapter (e.g. Sectra Workflow Orchestrator): it checks nothing
itself, so tests verify the signature and count deliveries here, at the receiver. With ``tls`` (a server
certificate and key, e.g. from tests/peers/certs.py) it is an HTTPS receiver.
"""

from __future__ import annotations

import hashlib
import hmac
import http.server
import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any


class HttpReceiver:
    """An HTTP server on 127.0.0.1 that records every POST and answers the scripted statuses in turn (then 200)."""

    def __init__(self, statuses: list[int] | None = None, port: int = 0,
                 tls: tuple[Path, Path] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.requests.append((dict(self.headers.items()), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        scheme = "http"
        if tls is not None:  # (cert_file, key_file); a failed handshake only fails that connection
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}/hooks/alert?token=abc"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> list[tuple[dict[str, str], bytes, int]]:
        """The requests answered 2xx."""
        return [r for r in self.requests if 200 <= r[2] < 300]

    def alerts(self, key: bytes | None = None) -> list[dict[str, Any]]:
        """The JSON bodies answered 2xx; with ``key``, each signature is checked (AssertionError when wrong)."""
        bodies = []
        for headers, body, _ in self.delivered():
            if key is not None:
                expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
                assert hmac.compare_digest(headers.get("X-Pacsflow-Signature", ""), expected), "bad signature"
            bodies.append(json.loads(body))
        return bodies

    def wait_delivered(self, count: int, timeout: float = 60.0) -> list[tuple[dict[str, str], bytes, int]]:
        """Block until ``count`` requests were answered 2xx."""
        deadline = time.monotonic() + timeout
        while len(self.delivered()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"webhook receiver: {len(self.delivered())} deliveries, expected {count}")
            time.sleep(0.05)
        return self.delivered()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
