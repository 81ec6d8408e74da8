"""Outbound HL7 v2 over MLLP and JSON webhooks: the outbox's senders for the ``hl7`` and ``webhook`` channels.

Each sender delivers one stored :class:`~..results.export.Message` and either returns a status or raises an
:class:`~..errors.ExportError` whose ``permanent`` flag tells the outbox what to do (one table per channel):

=============================================  ================================================================
Answer                                         Outbox
=============================================  ================================================================
HL7 ACK ``AA`` / ``CA``                        delivered
HL7 ACK ``AE`` / ``CE``                        refusal (``permanent``): backed off per item, parked after
                                               ``max_attempts`` - the receiver read the message and said no
HL7 ACK ``AR`` / ``CR``                        rejection (``final``): parked at once, never resent
no connection, timeout, no/garbled ACK         retried with the destination's backoff, forever
HTTP 2xx                                       delivered
HTTP 408, 429, 5xx, connection error, timeout  retried with backoff
other HTTP 4xx (and 3xx: no redirects)         refusal (``permanent``)
=============================================  ================================================================

Error messages name the destination, never the patient: no message text, no ACK text (MSA-3 and ERR may echo
values), only the acknowledgment code and the HL7 error code.

MLLP framing is workflow/mllp.py's (:func:`~.mllp.frame`, :func:`~.mllp.read_frame`); the client waits for the
ACK on the same connection, which it keeps open between messages (``TCP_NODELAY``: an order update must not wait
40 ms for Nagle) and releases when idle. The ACK is read by hand (MSA-1, MSA-2, the ERR code: three fields of the
segments, split with the separators its own MSH declares). The webhook sender uses the standard library's
``http.client``: no redirects, no cookies, one request per message - requests would add a runtime dependency for
none of that.

TLS (BCP 195 client contexts from pacsflow_router/tls.py): an HL7 destination with ``tls`` is reached over MLLP
on TLS, its certificate and host name verified against ``tls.caFile`` (or the system's trust store); an
``https://`` webhook is verified against its ``caFile`` the same way. There is no switch to turn verification off: a
certificate that does not verify is a connection failure like any other, retried with backoff from the durable
outbox until the peer's certificate is fixed, never sent in the clear or to an unverified peer.
"""

from __future__ import annotations

import datetime as dt
import http.client
import logging
import select
import socket
import ssl
import threading
import time
import urllib.parse
from pathlib import Path

from .. import __version__
from ..config import Hl7Destination, TlsClient, Webhook
from ..errors import ExportError, MllpFramingError
from ..results.export import Message
from ..tls import client_context
from .alerts import signature
from .mllp import FrameReader, frame, read_frame

log = logging.getLogger(__name__)

#: Acknowledgment codes (HL7 table 0008) that mean the receiver took the message (original / enhanced mode).
ACCEPTED = ("AA", "CA")
#: Codes that mean it read the message and refused it: resending the same bytes cannot help.
REFUSED = ("AE", "AR", "CE", "CR")
#: An ACK longer than this is not an ACK.
MAX_ACK_BYTES = 1 << 20
#: HTTP statuses of the 4xx range worth retrying (timeout, rate limit).
RETRYABLE_4XX = (408, 429)


class SendError(ExportError):
    """An HL7 or webhook delivery that did not succeed; ``permanent`` when the receiver refused the message."""

    def __init__(self, message: str, *, status: int | str | None = None, permanent: bool = False,
                 final: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = permanent or final
        self.final = final
        """The receiver rejected the message itself (HL7 AR/CR): resending it cannot help, it is parked at once."""


def _ack_code(ack: bytes, control_id: str) -> tuple[str, str]:
    """``(MSA-1, HL7 error code or '')`` of an ACK to ``control_id``; ValueError for anything else."""
    text = ack.decode("utf-8", errors="replace").replace("\r\n", "\r").replace("\n", "\r")
    segments = [seg for seg in text.split("\r") if seg]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise ValueError("not an HL7 ACK (no MSH)")
    field_sep, component_sep = segments[0][3], segments[0][4]
    found = {seg[:3]: seg.split(field_sep) for seg in reversed(segments)}  # first of each kind wins
    msa = found.get("MSA")
    if msa is None or len(msa) < 3:
        raise ValueError("not an HL7 ACK (no MSA)")
    if msa[2].strip() != control_id:
        raise ValueError("an ACK to another message (MSA-2 is not this message's MSH-10)")
    err = found.get("ERR", [])
    # v2.5+: ERR-3.1 HL7 error code; before: ERR-1.4 (the code inside the error-code-and-location field).
    if len(err) > 3:
        error = err[3].split(component_sep)[0]
    else:
        parts = err[1].split(component_sep) if len(err) > 1 else []
        error = parts[3].split(segments[0][7] if len(segments[0]) > 7 else "&")[0] if len(parts) > 3 else ""
    return msa[1].strip(), error if error.isdigit() else ""


class MllpSender:
    """HL7 v2 client over MLLP for one destination: sends a message, waits for its ACK, keeps the connection.

    Parameters
    ----------
    destination : config.Hl7Destination
        Host, port and ACK timeout (``timeoutSeconds``, also the connect timeout).
    idle_release_seconds : float
        :meth:`release_if_idle` closes a connection unused this long.

    Notes
    -----
    Thread-safe: sends are serialised, one connection per sender.
    """

    def __init__(self, destination: Hl7Destination, *, idle_release_seconds: float = 30.0) -> None:
        self.destination = destination
        self.idle_release_seconds = idle_release_seconds
        self._sock: socket.socket | None = None
        self._reader = FrameReader(MAX_ACK_BYTES)
        self._last_used = 0.0
        self._lock = threading.Lock()
        #: Connections opened so far (tests read it to prove reuse).
        self.connections_opened = 0

    @property
    def _where(self) -> str:
        d = self.destination
        return f"HL7 destination {d.name!r} ({d.host}:{d.port})"

    def _connection(self) -> socket.socket:
        sock = self._sock
        if sock is not None and _still_open(sock):
            return sock
        self._drop()
        try:
            sock = socket.create_connection((self.destination.host, self.destination.port),
                                            timeout=self.destination.timeout_seconds)
        except OSError as exc:
            raise SendError(f"{self._where}: cannot connect ({exc.strerror or type(exc).__name__}); check that the "
                            "receiver is running") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = self.destination.tls
        if tls is not None:
            try:
                # client_context rebuilds when its files change: a rotated CA bundle or client certificate applies.
                sock = client_context(tls).wrap_socket(sock, server_hostname=tls.server_name or self.destination.host)
            except (OSError, ssl.SSLError) as exc:
                sock.close()
                raise SendError(f"{self._where}: TLS handshake failed ({_tls_reason(exc)}); check the receiver's "
                                "certificate against tls.caFile; the message will be sent again") from None
        self._sock = sock
        self._reader = FrameReader(MAX_ACK_BYTES)
        self.connections_opened += 1
        return sock

    def send(self, message: Message) -> int:
        """Send one message and wait for its ACK.

        Returns
        -------
        int
            0 (the receiver answered AA or CA).

        Raises
        ------
        SendError
            No connection, no ACK in time, an ACK to another message (retryable); AE/AR/CE/CR (``permanent``).
        """
        with self._lock:
            sock = self._connection()
            try:
                sock.settimeout(self.destination.timeout_seconds)
                sock.sendall(frame(message.body))
                ack = read_frame(sock, self._reader, self.destination.timeout_seconds)
            except (OSError, MllpFramingError) as exc:  # TimeoutError and ConnectionError are OSErrors
                self._drop()
                reason = "no ACK in time" if isinstance(exc, TimeoutError) else f"connection lost ({exc})"
                raise SendError(f"{self._where}: {reason}; the message will be sent again") from None
            self._last_used = time.monotonic()
            try:
                if ack.oversized:
                    raise ValueError(f"an answer of {ack.size} bytes is not an ACK")
                code, error = _ack_code(ack.message, message.key)
            except ValueError as exc:
                self._drop()  # the stream is out of step with our messages: start clean
                raise SendError(f"{self._where}: {exc}; the message will be sent again") from None
        if code in ACCEPTED:
            return 0
        detail = f" (HL7 error code {error})" if error else ""
        if code in REFUSED:
            # AE/CE: an application error the receiver may recover from (retried with backoff, then parked);
            # AR/CR: the message was rejected as such (type, version, structure): parked at once.
            raise SendError(f"{self._where} refused the {message.kind or 'message'} with {code}{detail}; check the "
                            "receiver's log for the reason", status=code, permanent=True, final=code in ("AR", "CR"))
        raise SendError(f"{self._where}: unknown acknowledgment code {code[:8]!r}", status=code[:8])

    def _drop(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            finally:
                self._sock = None

    def release_if_idle(self) -> None:
        """Close the connection if unused for ``idle_release_seconds``."""
        with self._lock:
            if self._sock is not None and time.monotonic() - self._last_used > self.idle_release_seconds:
                self._drop()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._drop()


def _tls_reason(exc: BaseException) -> str:
    """What failed in a handshake, in OpenSSL's words (no peer data in it)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not verified: {exc.verify_message}"
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__)


def _still_open(sock: socket.socket) -> bool:
    """Whether a kept connection can carry the next message: not closed by the peer, nothing unread on it."""
    if isinstance(sock, ssl.SSLSocket):
        # No MSG_PEEK on TLS: anything readable (a record, close_notify, EOF) means closed or out of step.
        return sock.pending() == 0 and not select.select([sock], [], [], 0)[0]
    try:
        sock.setblocking(False)
        try:
            sock.recv(1, socket.MSG_PEEK)
        finally:
            sock.setblocking(True)
    except BlockingIOError:
        return True  # nothing to read: open, and in step with our messages
    except OSError:
        return False
    return False  # readable: closed by the peer (b""), or stray bytes (out of step)


class WebhookSender:
    """POSTs stored JSON alerts to one webhook, signed with HMAC-SHA256 when the webhook has a ``secretFile``.

    Headers: ``Content-Type: application/json``, ``Idempotency-Key`` (the message's key), ``X-Pacsflow-Signature:
    sha256=<hex>`` (over the exact body; the key is read from ``secretFile`` on every send, so a rotated Secret takes
    effect without a restart; one trailing newline is ignored), ``X-Pacsflow-Sent-At`` (the send time: the body is
    deterministic and carries none).
    """

    def __init__(self, webhook: Webhook) -> None:
        self.webhook = webhook
        url = urllib.parse.urlsplit(webhook.url)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")

    @property
    def _where(self) -> str:
        # The host only: a URL's path or query can hold a token.
        return f"webhook {self.webhook.name!r} ({self._host})"

    def _key(self) -> bytes | None:
        if self.webhook.secret_file is None:
            return None
        try:
            key = Path(self.webhook.secret_file).read_bytes()
        except OSError as exc:
            raise SendError(f"{self._where}: cannot read secretFile {self.webhook.secret_file} ({exc.strerror}); "
                            "mount the Secret or fix the path") from None
        key = key.removesuffix(b"\n").removesuffix(b"\r")
        if not key:
            raise SendError(f"{self._where}: secretFile {self.webhook.secret_file} is empty")
        return key

    def send(self, message: Message) -> int:
        """POST the body; return the 2xx status.

        Raises
        ------
        SendError
            Connection error, timeout, 408, 429, 5xx (retryable); other 4xx and 3xx (``permanent``).
        """
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": message.key,
            "X-Pacsflow-Sent-At": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "User-Agent": f"pacsflow/{__version__}",
        }
        key = self._key()
        if key is not None:
            headers["X-Pacsflow-Signature"] = signature(message.body, key)
        timeout = self.webhook.timeout_seconds
        conn: http.client.HTTPConnection
        if self._https:
            # Verification always on (BCP 195 client context), rebuilt when caFile changes (rotation).
            try:
                context = client_context(TlsClient(ca_file=self.webhook.ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise SendError(f"{self._where}: cannot load caFile {self.webhook.ca_file} "
                                f"({_tls_reason(exc)}); mount the CA bundle or fix the path") from None
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=context)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        try:
            conn.request("POST", self._path, body=message.body, headers=headers)
            response = conn.getresponse()
            status = response.status
            response.read(65536)
        except ssl.SSLError as exc:  # before OSError: its subclass. Retried: the peer's certificate may be fixed.
            raise SendError(f"{self._where}: TLS handshake failed ({_tls_reason(exc)}); check the receiver's "
                            "certificate against caFile; the alert will be sent again") from None
        except (OSError, http.client.HTTPException) as exc:
            raise SendError(f"{self._where}: {type(exc).__name__} ({exc}); the alert will be sent again") from None
        finally:
            conn.close()
        if 200 <= status < 300:
            return status
        permanent = 300 <= status < 500 and status not in RETRYABLE_4XX
        hint = "check the URL and the receiver's log" if permanent else "the alert will be sent again"
        raise SendError(f"{self._where} answered HTTP {status}; {hint}", status=status, permanent=permanent)
