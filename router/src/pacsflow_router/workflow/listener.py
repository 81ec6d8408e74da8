"""The HL7 v2 order listener: one handler (parse -> order store -> ACK) behind MLLP and ``POST /hl7/orm``.

Given a ground-truth sink, it also takes final-report ORU^R01 messages (OBR-18 accession, OBR-25 result status F or
C, OBX coded findings): their findings are stored as ground truth for the evidence (results store, ``ground_truth``)
and answered AA once stored, AE when the store failed (the sender resends; storing again changes nothing).

:class:`Hl7Handler` is the single path every order message takes, whichever transport brought it; the ACK it
returns was stored with the order in one transaction (workflow/orders.py), so an AA is only sent for a durable order.
:class:`Hl7Listener` starts the MLLP server (workflow/mllp.py) and, when ``hl7Listener.httpPort`` is set, the HTTP
endpoint (workflow/hl7http.py), both wired from the routing config.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .. import metrics
from ..admission import RefusalHook, ServerTls
from ..config import Hl7Listener as Hl7ListenerConfig
from ..errors import Hl7Error, Hl7MessageError, PacsflowError
from .hl7 import (
    Hl7Refusal,
    MessageHeader,
    ack_code_of,
    ack_error_location,
    ack_text_of,
    build_ack,
    err_location,
    is_report,
    parse_order,
    parse_report,
    read_header,
)
from .hl7http import Hl7HttpServer
from .mllp import MllpServer
from .orders import REASON_UNKNOWN_ORDER, OrderStore

log = logging.getLogger(__name__)

GroundTruthSink = Callable[[list[dict[str, Any]]], Any]
"""Stores ground-truth labels (``accession``, ``finding_code``, ``present``); raises when it could not (the results
store's ``record_ground_truth`` with source ``hl7``)."""


@dataclass(frozen=True)
class Hl7Result:
    """What became of one message (the HTTP endpoint turns it into JSON)."""

    ack: bytes
    """The ER7 ACK."""
    ack_code: str
    """``AA``, ``AE`` or ``AR``."""
    outcome: str
    """The store's outcome (``created``, ``updated``, ``cancelled``, ``discontinued``, ``duplicate``,
    ``rejected``), or ``refused`` for a message that was not parsed, ``not-stored`` when the store failed."""
    accession: str | None = None
    """The order's accession number (answered to the sender that sent it; never logged)."""
    error_location: str = ""
    """ERR-2 of an AE/AR (``OBR^1^18``)."""
    error_text: str = ""
    """MSA-3 of an AE/AR (fixed texts, no field values)."""


def _kind(message_type: str) -> str:
    return message_type if message_type in metrics.HL7_MESSAGE_KINDS else "other"


class Hl7Handler:
    """Parse, store and answer HL7 order messages (the MLLP server's and the HTTP endpoint's handler).

    Parameters
    ----------
    store
        The durable order store.
    config
        The routing config's ``hl7Listener`` (field map, ACK application/facility, size limit).
    ground_truth
        Where final reports' findings go; without it an ORU^R01 is refused as an unsupported type (AR 200).
    """

    def __init__(self, store: OrderStore, config: Hl7ListenerConfig,
                 ground_truth: GroundTruthSink | None = None) -> None:
        self._store = store
        self._config = config
        self._ground_truth = ground_truth

    def _ack(self, header: MessageHeader, code: str, error: Hl7Error | None = None) -> bytes:
        return build_ack(header, code, application=self._config.application, facility=self._config.facility,
                         error=error)

    def _refused(self, header: MessageHeader, error: Hl7Error) -> Hl7Result:
        ack = self._ack(header, error.ack_code, error)
        metrics.HL7_MESSAGES.labels(_kind(header.message_type), error.ack_code).inc()
        log.warning("HL7 message refused (%s %d at %s): %s", error.ack_code, error.error_code,
                    error.location or "-", error)
        return Hl7Result(ack, error.ack_code, "refused", error_location=error.location, error_text=str(error))

    def process(self, raw: bytes) -> Hl7Result:
        """Parse one ER7 message, apply it to the order store, and return the ACK with what happened."""
        if self._ground_truth is not None and is_report(raw):
            return self._process_report(raw, self._ground_truth)
        try:
            parsed = parse_order(raw, self._config.field_map)
        except Hl7Refusal as refusal:
            return self._refused(refusal.header, refusal.error)
        accession_location = err_location(self._config.field_map.accession[0])
        errors: dict[str, Hl7Error] = {}

        def make_ack(code: str, reason: str | None) -> bytes:
            error = None
            if reason is not None:
                # 204 unknown key identifier: the order the message refers to does not exist; 207 otherwise
                # (a cancel after the images arrived is the application's refusal, not a malformed message).
                error = Hl7MessageError(reason, error_code=204 if reason == REASON_UNKNOWN_ORDER else 207,
                                        location=accession_location if reason == REASON_UNKNOWN_ORDER else "ORC^1^1")
                errors["error"] = error
            return self._ack(parsed.header, code, error)

        try:
            outcome = self._store.apply_hl7(parsed.store_key, parsed.order_control, parsed.order, make_ack)
        except (SQLAlchemyError, sqlite3.Error, OSError, PacsflowError) as exc:
            # Nothing was stored (the transaction rolled back), not even the control ID: a resend is processed anew.
            # (The results store is down or refused the change; a NUL, which PostgreSQL refuses, is AE 102 above.)
            log.error("HL7 order %s not stored: %s", parsed.order.key, type(exc).__name__)
            error = Hl7MessageError("the order could not be stored; resend the message later", error_code=207)
            metrics.HL7_MESSAGES.labels(_kind(parsed.message_type), "AE").inc()
            return Hl7Result(self._ack(parsed.header, "AE", error), "AE", "not-stored",
                             accession=parsed.order.accession, error_text=str(error))
        code = ack_code_of(outcome.ack)
        metrics.HL7_MESSAGES.labels(_kind(parsed.message_type), code if code in metrics.HL7_ACK_CODES else "AE").inc()
        store_refusal = errors.get("error")
        if store_refusal is not None:
            location, text = store_refusal.location, str(store_refusal)
        else:  # an AA, or a duplicate whose stored ACK may be an AE: read what it said
            location, text = ack_error_location(outcome.ack), ack_text_of(outcome.ack)
        return Hl7Result(outcome.ack, code, outcome.outcome, accession=parsed.order.accession,
                         error_location=location, error_text=text)

    def _process_report(self, raw: bytes, sink: GroundTruthSink) -> Hl7Result:
        """A final report: its coded findings stored as ground truth, then AA (outcome ``ground-truth``); a report
        that is not final, or has no coded finding, is acknowledged and ignored (outcome ``ignored``)."""
        try:
            report = parse_report(raw, self._config.field_map)
        except Hl7Refusal as refusal:
            return self._refused(refusal.header, refusal.error)
        outcome = "ignored"
        if report.final and report.findings:
            labels = [{"accession": report.accession, "finding_code": code, "present": present}
                      for code, present in report.findings]
            try:
                sink(labels)
            except (SQLAlchemyError, OSError) as exc:  # nothing stored: the sender resends
                log.error("HL7 final report not stored as ground truth: %s", type(exc).__name__)
                error = Hl7MessageError("the report could not be stored; resend the message later", error_code=207)
                metrics.HL7_MESSAGES.labels(_kind(report.header.message_type), "AE").inc()
                return Hl7Result(self._ack(report.header, "AE", error), "AE", "not-stored", error_text=str(error))
            outcome = "ground-truth"
        log.info("HL7 final report: %s (%d coded finding(s), result status %s)", outcome, len(report.findings),
                 report.result_status or "-")
        metrics.HL7_MESSAGES.labels(_kind(report.header.message_type), "AA").inc()
        return Hl7Result(self._ack(report.header, "AA"), "AA", outcome, accession=report.accession)

    def handle(self, message: bytes) -> bytes:
        """The ACK for one message (the MLLP server's callback)."""
        return self.process(message).ack

    def refuse_too_large(self, head: bytes, size: int) -> bytes:
        """AE for a message over ``maxMessageBytes`` that was dropped unread; ``head`` is its beginning (the MSH)."""
        return self.too_large(head, size).ack

    def too_large(self, head: bytes, size: int) -> Hl7Result:
        """:meth:`refuse_too_large` with the details, for the HTTP endpoint."""
        try:
            header = read_header(head)
        except Hl7Error:
            header = MessageHeader()
        error = Hl7MessageError(f"message too large: {size} bytes, above maxMessageBytes "
                                f"{self._config.max_message_bytes}", error_code=207)
        return self._refused(header, error)


class Hl7Listener:
    """The MLLP listener and, when ``httpPort`` is set, ``POST /hl7/orm``, sharing one handler and store.

    Parameters
    ----------
    config
        The routing config's ``hl7Listener``. Port 0 binds any free port (tests); see :attr:`port`.
    store
        The order store the messages are applied to.
    ground_truth
        Where final reports' coded findings go (see :class:`Hl7Handler`).
    on_refused
        Given each connection refused on either port (allow-list, TLS handshake): the audit.
    """

    def __init__(self, config: Hl7ListenerConfig, store: OrderStore,
                 ground_truth: GroundTruthSink | None = None, on_refused: RefusalHook | None = None) -> None:
        self.config = config
        self.on_refused = on_refused
        self.handler = Hl7Handler(store, config, ground_truth)
        self._mllp: MllpServer | None = None
        self._http: Hl7HttpServer | None = None

    def start(self) -> None:
        """Bind and serve (returns at once; the servers run on daemon threads).

        Raises
        ------
        ConfigError
            ``hl7Listener.tls`` names files that cannot be loaded.
        """
        cfg = self.config
        # One context for both ports: a rotated certificate reaches MLLP and HTTPS together.
        tls = ServerTls(cfg.tls, "hl7Listener.tls") if cfg.tls is not None else None
        self._mllp = MllpServer(self.handler, cfg.bind_address, cfg.port, max_message_bytes=cfg.max_message_bytes,
                                idle_timeout=cfg.idle_timeout_seconds, message_timeout=cfg.message_timeout_seconds,
                                tls=tls, allowed_networks=cfg.allowed_networks, on_refused=self.on_refused)
        self._mllp.start()
        if cfg.http_port is not None:
            self._http = Hl7HttpServer(self.handler, cfg.bind_address, cfg.http_port,
                                       max_message_bytes=cfg.max_message_bytes,
                                       timeout=cfg.message_timeout_seconds, tls=tls,
                                       allowed_networks=cfg.allowed_networks, on_refused=self.on_refused)
            self._http.start()

    def stop(self) -> None:
        """Stop both servers and close their connections."""
        if self._mllp is not None:
            self._mllp.stop()
            self._mllp = None
        if self._http is not None:
            self._http.stop()
            self._http = None

    @property
    def port(self) -> int:
        """The MLLP port bound."""
        if self._mllp is None:
            raise RuntimeError("the HL7 listener is not started")
        return self._mllp.port

    @property
    def http_port(self) -> int | None:
        """The HTTP port bound (``None`` when ``httpPort`` is unset)."""
        return self._http.port if self._http is not None else None

    @property
    def ports(self) -> dict[str, int]:
        """``{"mllp": port, "http": port}`` of what is listening."""
        out = {"mllp": self.port}
        if self.http_port is not None:
            out["http"] = self.http_port
        return out
