"""DICOM send edge: the router's only outbound pynetdicom module (C-STORE SCU, PS3.4 Annex B).

One :class:`StoreClient` per destination keeps one association open across sends (an association costs several
round trips; a burst of SRs goes over one), re-associates when the peer dropped it, and releases it after a
quiet period so idle associations do not pile up in the PACS. ``TCP_NODELAY`` is set on the outbound socket from
pynetdicom's ``EVT_CONN_OPEN`` hook, which runs right after ``connect()`` and before the A-ASSOCIATE-RQ is
written, so every PDU of the association goes out without Nagle's delay.

Error table (DICOM outcome -> domain error), in one place: every failure becomes :class:`StoreError` (an
:class:`~.errors.ExportError`) whose message names the destination (never the patient), with ``permanent`` set for statuses that retrying the
same data set cannot fix (PS3.4 Table B.2-1: 0xA9xx "data set does not match SOP class", 0xC000-0xCFFF
"cannot understand"; PS3.7 C.4.2 0x0122 "SOP class not supported").
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time

from pydicom.dataset import Dataset
from pydicom.uid import (
    BasicTextSRStorage,
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.association import Association

from .. import dicomnet, metrics
from ..config import Destination
from ..errors import ExportError

log = logging.getLogger(__name__)

dicomnet.keep_identifiers_out_of_logs()

#: SOP classes proposed on every association (the router sends SRs); others are added on first use.
DEFAULT_SOP_CLASSES = (Comprehensive3DSRStorage, ComprehensiveSRStorage, EnhancedSRStorage, BasicTextSRStorage)
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
SUCCESS_OR_WARNING = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007}


def _permanent(status: int) -> bool:
    return (status & 0xFF00) == 0xA900 or 0xC000 <= status <= 0xCFFF or status in (0x0122, 0x0124)


class StoreError(ExportError):
    """A C-STORE that did not succeed: ``status`` (None when no response) and whether retrying can help."""

    def __init__(self, message: str, *, status: int | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.permanent = permanent


def _accepts(assoc: Association, sop_class: str) -> bool:
    return any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts)


class StoreClient:
    """C-STORE SCU for one destination with association reuse.

    Parameters
    ----------
    destination : config.Destination
        Where to send (called AE title, host, port, name for messages).
    calling_ae : str
        The router's own AE title.
    connect_timeout, acse_timeout, dimse_timeout : float
        Seconds to wait for TCP connect, association negotiation and each C-STORE response.
    idle_release_seconds : float
        :meth:`release_if_idle` releases an association unused for this long.
    sop_classes : tuple of str
        SOP classes proposed on each association; a data set of another class triggers a new association.

    Notes
    -----
    Thread-safe: sends are serialised, one association per client.
    """

    def __init__(
        self,
        destination: Destination,
        calling_ae: str,
        *,
        connect_timeout: float = 10.0,
        acse_timeout: float = 30.0,
        dimse_timeout: float = 60.0,
        idle_release_seconds: float = 10.0,
        sop_classes: tuple[str, ...] = DEFAULT_SOP_CLASSES,
    ) -> None:
        self.destination = destination
        self.calling_ae = calling_ae
        self.idle_release_seconds = idle_release_seconds
        self._timeouts = (connect_timeout, acse_timeout, dimse_timeout)
        self._sop_classes = list(dict.fromkeys(sop_classes))
        self._assoc: Association | None = None
        self._last_used = 0.0
        self._lock = threading.Lock()
        #: Associations opened so far (tests and benchmarks read it to prove reuse).
        self.associations_opened = 0

    def __enter__(self) -> StoreClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def _where(self) -> str:
        d = self.destination
        return f"destination {d.name!r} ({d.ae_title}@{d.host}:{d.port})"

    def _associate(self) -> Association:
        connect_timeout, acse_timeout, dimse_timeout = self._timeouts
        ae = AE(ae_title=self.calling_ae)
        ae.connection_timeout = connect_timeout
        ae.acse_timeout = acse_timeout
        ae.dimse_timeout = dimse_timeout
        # A stalled peer must not hang the outbox thread; idle associations are released well before this.
        ae.network_timeout = max(dimse_timeout, self.idle_release_seconds * 2)
        for sop_class in self._sop_classes:
            ae.add_requested_context(sop_class, TRANSFER_SYNTAXES)
        try:
            tls_args = dicomnet.tls_args(self.destination.tls, self.destination.host)
        except (OSError, ssl.SSLError) as exc:
            raise StoreError(f"{self._where}: destinations[{self.destination.name}].tls: cannot load the CA, "
                             f"certificate or key files ({type(exc).__name__}); check the mounted Secret") from None
        assoc = ae.associate(
            self.destination.host, self.destination.port, ae_title=self.destination.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, dicomnet.set_nodelay_on_connect)], tls_args=tls_args,
        )
        if not assoc.is_established:
            reason = "association rejected" if assoc.is_rejected else "cannot connect or association aborted"
            if tls_args is not None and not assoc.is_rejected:
                reason += " (over TLS: a failed handshake, e.g. an untrusted server certificate, is logged above)"
            raise StoreError(f"{self._where}: {reason}; check that it is running and accepts calling AE "
                              f"title {self.calling_ae!r}")
        self.associations_opened += 1
        metrics.EXPORT_ASSOCIATIONS.labels(self.destination.name).inc()
        log.debug("associated with %s", self._where)
        return assoc

    def _usable(self, sop_class: str) -> Association:
        if sop_class not in self._sop_classes:
            self._sop_classes.append(sop_class)
        assoc = self._assoc
        if assoc is not None and assoc.is_established and _accepts(assoc, sop_class):
            return assoc
        self._release()
        self._assoc = self._associate()
        if not _accepts(self._assoc, sop_class):
            raise StoreError(f"{self._where} does not accept SOP class {sop_class}; enable it on the destination",
                             permanent=True)
        return self._assoc

    def send(self, ds: Dataset) -> int:
        """C-STORE one data set and return the DIMSE status (success or warning).

        Reuses the open association; when the peer has dropped it (idle timeout, restart) a new one is opened
        and the data set sent once more, which is safe because a C-STORE of the same SOP Instance UID is
        idempotent at the destination.

        Raises
        ------
        ExportError
            Cannot connect, association rejected, no response, or a failure status; ``permanent`` is True when
            resending the same data set cannot succeed.
        """
        with self._lock:
            for attempt in (1, 2):
                reused = self._assoc is not None and self._assoc.is_established
                assoc = self._usable(ds.SOPClassUID)
                try:
                    response = assoc.send_c_store(ds)
                except (ValueError, AttributeError) as exc:
                    # pynetdicom raises these for data sets it cannot encode in any accepted context.
                    raise StoreError(f"{self._where}: cannot encode the data set: {exc}", permanent=True) from None
                self._last_used = time.monotonic()
                status = int(response.get("Status", -1)) if response else -1
                if status >= 0:
                    break
                self._assoc = None
                if not (reused and attempt == 1):
                    raise StoreError(f"{self._where}: no C-STORE response (association aborted or timed out)")
                log.info("association to %s was dropped by the peer; re-associating", self._where)
            if status not in SUCCESS_OR_WARNING:
                raise StoreError(f"{self._where}: C-STORE failed with status 0x{status:04X}", status=status,
                                  permanent=_permanent(status))
            return status

    @property
    def nodelay(self) -> bool | None:
        """``TCP_NODELAY`` of the open association's socket (None when no association is open)."""
        assoc = self._assoc
        sock = assoc.dul.socket.socket if assoc is not None and assoc.dul.socket is not None else None
        if sock is None:
            return None
        return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    def connect(self) -> None:
        """Open the association now unless one is open, so that the next :meth:`send` finds it ready.

        The outbox calls it while an SR is still being computed (``Outbox.prepare``); it counts as a use for
        :meth:`release_if_idle`.

        Raises
        ------
        ExportError
            Cannot connect or association rejected (the next send reports it again).
        """
        with self._lock:
            assoc = self._assoc
            if assoc is None or not assoc.is_established:
                self._release()
                self._assoc = self._associate()
            self._last_used = time.monotonic()

    def release_if_idle(self, now: float | None = None) -> bool:
        """Release the association if unused for ``idle_release_seconds``; True when one was released."""
        with self._lock:
            now = time.monotonic() if now is None else now
            if self._assoc is not None and now - self._last_used >= self.idle_release_seconds:
                self._release()
                return True
            return False

    def _release(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()

    def close(self) -> None:
        """Release the association (if any); the client can still be used afterwards."""
        with self._lock:
            self._release()
