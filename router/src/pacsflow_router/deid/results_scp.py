"""The results port: where external AIs return SRs about pseudonymous studies (C-STORE).

The router's own SCP machinery (:class:`~pacsflow_router.ingest.scp.DicomReceiver`: PDU guard, TCP_NODELAY,
AE-title allow-list, and whatever transport security it has) on a second AE title and port; only the store handler
differs. On the association thread a result is re-identified (a few map look-ups) and queued in the durable outbox
before success is answered. A result that cannot be re-identified is refused with an error comment and kept in
``<spool>/deid/refused/`` (never lost, never forwarded).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from .. import metrics
from ..config import RoutingConfig
from ..ingest.scp import DicomReceiver
from ..ingest.spool import Spool
from .annex_e import DeidentificationError
from .pseudonyms import PseudonymMapError, PseudonymStore, StudyIdentity
from .reidentify import UnknownPseudonymError, reidentify

log = logging.getLogger(__name__)

#: C-STORE status of a refused result: 0xC000-0xCFFF "Error: Cannot understand" (PS3.4 Table B.2-1).
REFUSED = 0xC001


def results_config(config: RoutingConfig) -> RoutingConfig:
    """The receiver config of the results port (its own AE title, port and calling AE titles)."""
    edge = config.external_ai
    if edge is None:
        raise ValueError("externalAi is not configured")
    return config.model_copy(update={"ae_title": edge.results_ae_title, "port": edge.results_port,
                                     "allowed_calling_ae_titles": list(edge.allowed_calling_ae_titles)})


class ResultsReceiver(DicomReceiver):
    """C-STORE SCP of the results port.

    Parameters
    ----------
    config
        The routing config (``externalAi`` gives the AE title, port and calling AE titles).
    spool
        The router's spool (refused results are kept under ``<spool>/deid/refused``).
    store
        The pseudonym map.
    deliver
        Called with the re-identified SR and its study; queues it durably (raises on failure).
    port
        Overrides ``externalAi.resultsPort`` (0: a free port, tests).
    """

    def __init__(self, config: RoutingConfig, spool: Spool, store: PseudonymStore,
                 deliver: Callable[[Dataset, StudyIdentity], None], *, port: int | None = None) -> None:
        super().__init__(results_config(config), spool, port=port)
        self.store = store
        self.deliver = deliver
        self.refused_dir = spool.spool_dir / "deid" / "refused"

    def _keep(self, encoded: bytes) -> Path:
        self.refused_dir.mkdir(parents=True, exist_ok=True)
        # Named by content hash: never by a received UID (STYLE.md), and a resend keeps one copy.
        path = self.refused_dir / (hashlib.sha256(encoded).hexdigest()[:32] + ".dcm")
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(encoded)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def _handle_store(self, event: Any) -> int | Dataset:  # type: ignore[override]  # may answer an error comment
        encoded = event.encoded_dataset(include_meta=True)
        try:
            result, study = reidentify(pydicom.dcmread(BytesIO(encoded)), self.store)
            self.deliver(result, study)
        except (InvalidDicomError, DeidentificationError, PseudonymMapError, AttributeError, KeyError) as exc:
            try:
                kept = self._keep(encoded)
            except OSError as write_error:
                log.error("result refused and could not be kept (%s); the sender keeps it", write_error)
                return 0xA700
            log.warning("external result refused, kept as %s: %s", kept.name, exc)
            metrics.REIDENTIFIED.labels("refused").inc()
            status = Dataset()
            status.Status = REFUSED
            status.ErrorComment = ("Study Instance UID is not a pseudonym issued here; result kept"
                                   if isinstance(exc, UnknownPseudonymError) else "result cannot be re-identified; kept")
            return status
        except OSError as exc:
            log.error("re-identified result could not be queued (%s); the sender keeps it", exc)
            return 0xA700
        metrics.REIDENTIFIED.labels("reidentified").inc()
        return 0x0000
