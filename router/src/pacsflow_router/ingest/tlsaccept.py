"""DICOM TLS on the receiving side (PS3.15 Annex B secure transport, BCP 195): what ``ingest.scp`` adds to pynetdicom.

pynetdicom's server wraps an accepted socket and runs the TLS handshake in its accept loop, so one peer that
connects and stays silent would stop every other connection from being accepted. The receiver instead wraps the
socket without handshaking (:func:`wrap`) and completes the handshake on the connection's own thread
(:func:`handshake`), bounded by the socket timeout.

A client certificate can be bound to the calling AE titles it may use (``tls.aeTitlesByCertificate``, keyed by the
certificate subject's CN): :class:`CertificateBoundAcse` rejects an A-ASSOCIATE-RQ whose calling AE title is not
listed for the certificate the peer presented (A-ASSOCIATE-RJ, permanent, service user, "calling AE title not
recognised", PS3.8 7.1.1.9), before pynetdicom looks at anything else.

Every refusal is described by a :class:`Refusal` (no patient data: addresses, AE titles, certificate names and a
reason), which the receiver logs, counts and hands to its ``on_refused`` callback (the audit).
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import TYPE_CHECKING, cast

from pynetdicom import evt
from pynetdicom.acse import ACSE
from pynetdicom.pdu_primitives import A_ASSOCIATE

# The refusal record is shared with the HL7 and metrics listeners (admission.py); re-exported here for the receiver.
from ..admission import Refusal as Refusal

if TYPE_CHECKING:  # pragma: no cover
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ result, source, diagnostic: rejected-permanent, DICOM UL service-user, calling AE title not
#: recognised (PS3.8 Table 9-21).
REJECT_CALLING_AE = (0x01, 0x01, 0x03)


def wrap(ctx: ssl.SSLContext, client: socket.socket) -> ssl.SSLSocket:
    """``client`` wrapped as the server side of a TLS connection, handshake not yet done (see :func:`handshake`)."""
    return ctx.wrap_socket(client, server_side=True, do_handshake_on_connect=False)


def closed_without_data(sock: socket.socket) -> bool:
    """Whether the peer closed ``sock`` without sending a byte (a TCP probe); waits for its first byte (peeked,
    not consumed) up to the socket's timeout."""
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return False  # reset or timed out: the handshake reports it


def handshake(sock: ssl.SSLSocket) -> str | None:
    """Complete the server-side handshake on ``sock``; ``None`` when it succeeded, else what went wrong.

    The socket's timeout bounds it. The returned text is OpenSSL's reason (``UNSUPPORTED_PROTOCOL``,
    ``PEER_DID_NOT_RETURN_A_CERTIFICATE``, ``CERTIFICATE_VERIFY_FAILED``, ``HTTP_REQUEST`` ...), never data.
    """
    try:
        sock.do_handshake()
    except ssl.SSLError as exc:
        return str(exc.reason or exc.__class__.__name__)
    except TimeoutError:
        return "timed out"
    except OSError as exc:
        return exc.strerror or exc.__class__.__name__
    return None


def certificate_name(sock: socket.socket) -> str | None:
    """The subject CN of the verified client certificate on ``sock`` (``None``: plaintext or no certificate)."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    cert = sock.getpeercert()
    if not cert:
        return None
    subject = cast("tuple[tuple[tuple[str, str], ...], ...]", cert.get("subject", ()))
    for rdn in subject:
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def protocol(sock: socket.socket) -> str:
    """``TLSv1.3``, ``TLSv1.2`` or ``plain``: how an accepted connection is carried (for logs)."""
    if isinstance(sock, ssl.SSLSocket):
        return sock.version() or "TLS"
    return "plain"


class CertificateBoundAcse(ACSE):
    """The acceptor's ACSE, rejecting a calling AE title that the peer's certificate is not bound to.

    Parameters
    ----------
    assoc
        The acceptor association (its ``acse`` is replaced by this).
    certificate
        The client certificate's CN, ``None`` when the peer presented none.
    permitted
        The calling AE titles ``certificate`` may use (``tls.aeTitlesByCertificate``); empty: none.
    """

    def __init__(self, assoc: Association, certificate: str | None, permitted: frozenset[str]) -> None:
        super().__init__(assoc)
        self.certificate = certificate
        self.permitted = permitted

    def _negotiate_as_acceptor(self) -> None:
        rq = cast(A_ASSOCIATE, self.requestor.primitive)
        calling = str(rq.calling_ae_title).strip()
        if calling in self.permitted:
            super()._negotiate_as_acceptor()
            return
        self.requestor.ae_title = rq.calling_ae_title
        if self.certificate is None:
            detail = f"no client certificate, and calling AE title {calling!r} requires one"
        else:
            detail = (f"certificate {self.certificate!r} may call as {sorted(self.permitted)}, "
                      f"not {calling!r}")
        # Read by the receiver's EVT_REJECTED handler, which audits the refusal with its reason.
        self.assoc.pacsflow_refusal = ("certificate-ae-title", detail)  # type: ignore[attr-defined]
        self.send_reject(*REJECT_CALLING_AE)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()
