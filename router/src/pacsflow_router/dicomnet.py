"""What both DICOM network edges (``ingest.scp`` receiving, ``results.scu`` sending) set up the same way.

A top-level module because ingest and results must not import each other; like those two edges it may import
pynetdicom (import-linter's pynetdicom contract lists the three).
"""

from __future__ import annotations

import socket
import ssl

from pynetdicom import _config, evt

from .config import TlsClient
from .tls import client_context


def keep_identifiers_out_of_logs() -> None:
    """Stop pynetdicom logging request and response identifiers (patient name, IDs) at INFO.

    STYLE.md forbids patient data in logs; the settings are process-wide, so calling this again changes nothing.
    """
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


def set_nodelay(sock: socket.socket) -> None:
    """``TCP_NODELAY`` on a DICOM socket: pynetdicom never sets it, and Nagle costs 40-90 ms per message here."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def set_nodelay_on_connect(event: evt.Event) -> None:
    """An ``EVT_CONN_OPEN`` handler for a requestor: ``TCP_NODELAY`` on the association's socket (:func:`set_nodelay`)."""
    transport = event.assoc.dul.socket
    sock = transport.socket if transport is not None else None
    if sock is not None:
        set_nodelay(sock)


def tls_args(tls: TlsClient | None, host: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for an association to ``host`` (``None``: plaintext when ``tls`` is unset).

    The context is :func:`~pacsflow_router.tls.client_context`'s, rebuilt when its files change, so a rotated client
    certificate or CA bundle is used by the next association; the server's certificate is always verified, against ``tls.serverName`` or else ``host``.

    Raises
    ------
    OSError, ssl.SSLError
        A CA, certificate or key file cannot be loaded (the caller names the setting).
    """
    if tls is None:
        return None
    return client_context(tls), tls.server_name or host
