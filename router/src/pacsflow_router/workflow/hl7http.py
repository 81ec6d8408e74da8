"""``POST /hl7/orm``: the HL7 order listener over HTTP (same parser, same store, same ACK as MLLP).

The body is one ER7 message (``Content-Type: text/plain`` or ``x-application/hl7-v2+er7``; the character set comes
from MSH-18, not from the header). The answer is JSON:

- 200 ``{"status": "triggered", "accession": ..., "ack": "AA", "outcome": ...}`` once the order is durable;
- 422 ``{"status": "error", "ack": "AE", "errorLocation": "OBR^1^18", "error": ...}`` for a malformed message;
- 400 the same with ``"ack": "AR"`` for an unsupported message type or version;
- 413 for a body over ``maxMessageBytes`` (refused on its Content-Length, before reading it), 411 without a
  Content-Length, 415 for another content type, 503 when the store could not write (resend later).

The ER7 ACK itself is in ``"ackMessage"``. Built on the standard library's ``ThreadingHTTPServer``: one endpoint
needs no framework, and the router's API server (issue 9) is a separate piece. With ``hl7Listener.tls`` it is
HTTPS, and ``hl7Listener.allowedNetworks`` closes other peers before a byte is read (admission.GuardedHTTPServer).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

from ..admission import GuardedHTTPServer, RefusalHook, ServerTls

if TYPE_CHECKING:
    from .listener import Hl7Handler, Hl7Result

log = logging.getLogger(__name__)

PATH = "/hl7/orm"
CONTENT_TYPES = ("text/plain", "x-application/hl7-v2+er7", "application/hl7-v2+er7", "application/hl7-v2")


def _json_for(result: Hl7Result) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"ack": result.ack_code, "outcome": result.outcome,
                            "ackMessage": result.ack.decode("latin-1")}
    if result.ack_code == "AA":
        return 200, {"status": "triggered", "accession": result.accession, **body}
    body.update(status="error", errorLocation=result.error_location, error=result.error_text)
    if result.outcome == "not-stored":
        return 503, body
    return (400 if result.ack_code == "AR" else 422), body


class _Server(GuardedHTTPServer):
    def __init__(self, address: tuple[str, int], handler: Hl7Handler, max_message_bytes: int,
                 timeout: float, tls: ServerTls | None, networks: Sequence[str]) -> None:
        self.hl7_handler = handler
        self.max_message_bytes = max_message_bytes
        self.body_timeout = timeout
        super().__init__(address, _RequestHandler, listener="hl7-http", networks=networks, tls=tls,
                         handshake_timeout=timeout)


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.body_timeout)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's parameter name)
        log.debug("hl7 http: " + format, *args)

    def _send(self, status: int, payload: dict[str, Any], *, close: bool = False) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._send(405 if self.path == PATH else 404, {"status": "error", "error": f"POST an ER7 message to {PATH}"})

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        if self.path != PATH:
            self._send(404, {"status": "error", "error": f"unknown path; POST to {PATH}"}, close=True)
            return
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self._send(411, {"status": "error", "error": "Content-Length is required"}, close=True)
            return
        length = int(length_header)
        if length > self.server.max_message_bytes:
            # Refused on the header alone: the body is never read, and the connection is closed rather than drained.
            result = self.server.hl7_handler.too_large(b"", length)
            self._send(413, {"status": "error", "ack": "AE", "error": result.error_text}, close=True)
            return
        if content_type not in CONTENT_TYPES:
            self._send(415, {"status": "error", "error": f"Content-Type must be one of {', '.join(CONTENT_TYPES)}"},
                       close=True)
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self._send(400, {"status": "error", "error": "the body ended before Content-Length bytes"}, close=True)
            return
        status, payload = _json_for(self.server.hl7_handler.process(body))
        self._send(status, payload)


class Hl7HttpServer:
    """``POST /hl7/orm`` on a daemon thread.

    Parameters
    ----------
    handler
        The listener's :class:`~pacsflow_router.workflow.listener.Hl7Handler` (shared with MLLP).
    host, port
        Address to bind (port 0: any free port, see :attr:`port`).
    max_message_bytes
        Bodies longer than this are answered 413 unread.
    timeout
        Socket timeout of a request and of the TLS handshake (``messageTimeoutSeconds``): a slow client is dropped.
    tls
        HTTPS (``hl7Listener.tls``); plain HTTP when ``None``.
    allowed_networks
        ``hl7Listener.allowedNetworks`` (empty: everyone).
    on_refused
        Given each refused connection (address, TLS handshake): the audit.
    """

    def __init__(self, handler: Hl7Handler, host: str, port: int, *, max_message_bytes: int,
                 timeout: float, tls: ServerTls | None = None, allowed_networks: Sequence[str] = (),
                 on_refused: RefusalHook | None = None) -> None:
        self._server = _Server((host, port), handler, max_message_bytes, timeout, tls, allowed_networks)
        self._server.on_refused = on_refused
        self._thread = threading.Thread(target=self._server.serve_forever, name="hl7-http", daemon=True)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve on a daemon thread."""
        self._thread.start()
        log.info("HL7 HTTP%s endpoint %s on port %d", "S" if self._server.tls else "", PATH, self.port)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
