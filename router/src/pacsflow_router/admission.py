"""Who may talk to the router's stream listeners (MLLP, ``POST /hl7/orm``, /metrics): allow-list first, then TLS.

Each accepted connection goes through two doors, in this order:

1. :func:`admit`: the peer's address is checked against the listener's ``allowedNetworks`` right after ``accept``.
   A peer outside is closed before a single byte is read from it (no TLS handshake either).
2. :meth:`ServerTls.wrap`: on a TLS listener, the handshake runs on the connection's own thread with a deadline, so
   a slow or plaintext client holds only its own thread. TLS 1.1 and older, weak ciphers, a missing or untrusted
   client certificate where one is required: the handshake fails and the socket is closed. A TCP probe that closes
   without sending a byte is not a refusal (as on the DICOM port, ingest/tlsaccept.py).

Both refusals are counted in ``pacsflow_connections_refused_total{listener,reason}``, logged with the peer's
address (an address, never patient data) and, when the listener was given an ``on_refused`` hook (the router's
``AuditLog.record_refusal``), handed to it as a :class:`Refusal`, as the DICOM port's refusals are. :class:`ServerTls` re-reads the certificate, key and client-CA files when
they change (a rotated Kubernetes Secret): new connections get the new certificate, open ones keep theirs.
:class:`GuardedHTTPServer` puts both doors in front of a standard-library ``ThreadingHTTPServer``.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import metrics
from .config import TlsServer
from .errors import ConfigError
from .tls import address_allowed, file_stamp, server_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Refusal:
    """One refused connection or association on a listener, as audited and logged.

    Attributes
    ----------
    listener
        ``dicom``, ``mllp``, ``hl7-http`` or ``metrics`` (``metrics.LISTENERS``).
    reason
        ``not-allowed`` (address outside ``allowedNetworks``), ``tls-handshake`` (old TLS version, weak cipher, no
        or untrusted client certificate, plaintext on a TLS port), ``unauthorized`` (a metrics scrape without the
        bearer token); on the DICOM port also ``certificate-ae-title`` (the certificate is not bound to the calling
        AE title), ``calling-ae-title``, ``called-ae-title`` or ``association-limit``.
    peer
        The peer's IP address.
    detail
        What TLS or DICOM said, e.g. ``TLSV1_ALERT_PROTOCOL_VERSION`` or ``certificate 'modality-a' may call as
        ['CT1'], not 'CT2'`` (never patient data: AE titles and certificate names identify devices).
    calling_ae_title, certificate
        The calling AE title the peer claimed and its certificate's CN, when known.
    """

    listener: str
    reason: str
    peer: str
    detail: str = ""
    calling_ae_title: str | None = None
    certificate: str | None = None

    def __str__(self) -> str:
        parts = [f"{self.listener} connection from {self.peer} refused: {self.reason}"]
        if self.detail:
            parts.append(self.detail)
        return "; ".join(parts)


RefusalHook = Callable[[Refusal], None]
"""Where a listener hands its refusals (the router's ``AuditLog.record_refusal``)."""


def report(hook: RefusalHook | None, refusal: Refusal) -> None:
    """Hand ``refusal`` to ``hook``; a failing hook is logged and never takes the listener down."""
    if hook is None:
        return
    try:
        hook(refusal)
    except Exception:  # noqa: BLE001 - the audit failing must not stop the listener; it is logged
        log.exception("refused %s connection from %s could not be audited", refusal.listener, refusal.peer)


def admit(conn: socket.socket, address: str, listener: str, networks: Sequence[str],
          on_refused: RefusalHook | None = None) -> bool:
    """Whether ``address`` may connect to ``listener``; when not, ``conn`` is closed unread and the refusal counted.

    Parameters
    ----------
    conn
        The socket just accepted (closed here when refused).
    address
        The peer's IP address (``accept()``'s first element).
    listener
        The listener's fixed name (``metrics.LISTENERS``), the metric's label.
    networks
        The listener's ``allowedNetworks`` (empty: everyone).
    on_refused
        Given the :class:`Refusal` when the peer is refused (the audit).
    """
    if address_allowed(address, networks):
        return True
    metrics.CONNECTIONS_REFUSED.labels(listener, "not-allowed").inc()
    log.warning("%s connection from %s refused: not in allowedNetworks", listener, address)
    _close(conn)
    report(on_refused, Refusal(listener, "not-allowed", address, "address not in allowedNetworks"))
    return False


def _close(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # not connected any more: close() is all that is left
    conn.close()


class ServerTls:
    """The server-side TLS context of one listener, rebuilt when its files change (certificate rotation).

    Parameters
    ----------
    config
        The listener's ``tls`` (``pacsflow_router.tls.server_context`` builds the context: BCP 195).
    setting
        Where ``config`` sits in the routing config (``hl7Listener.tls``), for error messages.

    Raises
    ------
    ConfigError
        A file cannot be read, or the key does not match the certificate (at construction; a bad file met on a
        later rotation is logged and the previous context kept).
    """

    def __init__(self, config: TlsServer, setting: str) -> None:
        self.config = config
        self.setting = setting
        self._files = [p for p in (config.cert_file, config.key_file, config.client_ca_file) if p]
        self._lock = threading.Lock()
        try:
            self._stamped = file_stamp(self._files)
            self._context = server_context(config)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{setting}: cannot load the certificate, key or client CA "
                              f"({getattr(exc, 'strerror', None) or type(exc).__name__}); check that the Secret is "
                              "mounted and the key matches the certificate") from None
        #: Times the context was rebuilt after its files changed.
        self.reloads = 0

    def context(self) -> ssl.SSLContext:
        """The current context: rebuilt first if a file changed since it was built."""
        with self._lock:
            try:
                stamped = file_stamp(self._files)
                if stamped != self._stamped:
                    self._context = server_context(self.config)
                    self._stamped = stamped
                    self.reloads += 1
                    log.info("%s: certificate files changed, new connections use them", self.setting)
            except (OSError, ssl.SSLError) as exc:
                # Mid-rotation (key written before the certificate) or a broken Secret: keep serving with the
                # previous certificate; the next connection looks again.
                log.warning("%s: certificate files changed but cannot be loaded (%s); still using the previous ones",
                            self.setting, type(exc).__name__)
            return self._context

    def wrap(self, conn: socket.socket, address: str, listener: str, timeout: float,
             on_refused: RefusalHook | None = None) -> ssl.SSLSocket | None:
        """Run the server side of the handshake on ``conn``; ``None`` (socket closed, refusal counted) if it fails.

        Parameters
        ----------
        conn
            The accepted, admitted socket.
        address
            The peer's IP address (logged when refused).
        listener
            The listener's fixed name (metric label).
        timeout
            Seconds the whole handshake may take.
        on_refused
            Given the :class:`Refusal` when the handshake fails (the audit).
        """
        conn.settimeout(timeout)
        try:
            if conn.recv(1, socket.MSG_PEEK) == b"":
                # A TCP probe (the kubelet's readiness check, a load balancer) closed without a byte: not a refusal.
                _close(conn)
                return None
        except OSError:
            pass  # reset or silent until the timeout: the handshake below fails and reports it
        try:
            return self.context().wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            metrics.CONNECTIONS_REFUSED.labels(listener, "tls-handshake").inc()
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or type(exc).__name__
            log.warning("%s connection from %s refused: TLS handshake failed (%s)", listener, address, reason)
            _close(conn)
            report(on_refused, Refusal(listener, "tls-handshake", address, str(reason)))
            return None


class GuardedHTTPServer(ThreadingHTTPServer):
    """A ``ThreadingHTTPServer`` with an allow-list checked before any byte is read and optional TLS (per thread).

    Parameters
    ----------
    address
        ``(host, port)`` to bind (port 0: any free port).
    handler
        The request handler class.
    listener
        The listener's fixed name (``metrics.LISTENERS``).
    networks
        ``allowedNetworks`` (empty: everyone).
    tls
        The server TLS context, or ``None`` for plain HTTP.
    handshake_timeout
        Seconds a client has to finish the TLS handshake.

    Attributes
    ----------
    on_refused
        Given each :class:`Refusal` (address, TLS handshake, and what the handler refuses); set by the owner.
    """

    daemon_threads = True
    on_refused: RefusalHook | None = None

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, listener: str,
                 networks: Sequence[str] = (), tls: ServerTls | None = None, handshake_timeout: float = 10.0) -> None:
        self.listener = listener
        self.networks = list(networks)
        self.tls = tls
        self.handshake_timeout = handshake_timeout
        super().__init__(address, handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """The allow-list, on the accepting thread: a refused peer is closed unread."""
        return admit(request, str(client_address[0]), self.listener, self.networks, self.on_refused)

    def finish_request(self, request: Any, client_address: Any) -> None:
        """The TLS handshake, on the request's own thread, then the handler."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        wrapped = self.tls.wrap(request, str(client_address[0]), self.listener, self.handshake_timeout,
                                self.on_refused)
        if wrapped is None:
            return
        try:
            super().finish_request(wrapped, client_address)
        finally:
            _close(wrapped)
