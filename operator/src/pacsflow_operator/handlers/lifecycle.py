"""Operator start-up: kopf settings with pacsflow-owned names, API login, the shared controller."""

from __future__ import annotations

import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from ..apievidence import api_evidence_source
from ..kube import Kube, load_client_configuration
from ..settings import OperatorSettings
from .bookkeeping import HandledEssence, HandlerProgress
from .controller import Controller

FINALIZER = "pacsflow.io/finalizer"
PREFIX = "pacsflow.io"


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """Same credentials as :class:`Kube`: in-cluster service account, else ``KUBECONFIG`` (read now)."""
    config = load_client_configuration()
    # kubernetes>=36 keeps the bearer token under "BearerToken", older ones under "authorization".
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix("authorization")
    scheme, _sep, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        scheme=scheme or None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
        trust_env=settings.networking.trust_env,
    )


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """Name kopf's bookkeeping after pacsflow and build the controller once per process."""
    settings.persistence.finalizer = FINALIZER
    # Not kopf's default status.kopf: the CRD status schema is structural and would prune it. AIUseCases keep
    # kopf's bookkeeping in memory (no PATCH per handled change), the other kinds in annotations (.bookkeeping).
    settings.persistence.progress_storage = HandlerProgress(prefix=PREFIX)
    memo.handled = HandledEssence(prefix=PREFIX, key="last-handled-configuration")
    settings.persistence.diffbase_storage = memo.handled
    # kopf would post every handler log line >= INFO as an Event: one API request each. Events are posted
    # explicitly (kopf.event, unfiltered; kopf.warn) where a user learns something; handler logs go to the log only.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    # One worker per object with events; a finished worker idles for queueing.idle_timeout (5 s) before it
    # frees its slot, so a fixed limit (it was 32) made a burst of 200 new AIUseCases wait in rounds of
    # 5 s (33.5 s to converge on 3.8 s of CPU). Workers are coroutines; the API calls they make go through
    # the default thread pool and one connection pool, which bound the real concurrency.
    settings.queueing.worker_limit = None
    op_settings = memo.get("settings") or OperatorSettings()
    memo.settings = op_settings
    # An embedding process (kopf.run(memo=...)) may pass an EvidenceSource that fills status.evidence; otherwise
    # pacsflow-api is asked when its URL is set.
    source = memo.get("evidence_source")
    if source is None and op_settings.evidence_url:
        source = api_evidence_source(op_settings.evidence_url, op_settings.evidence_api_key)
    memo.controller = Controller(Kube(), op_settings, source)
    if op_settings.metrics_port:
        start_http_server(op_settings.metrics_port, op_settings.metrics_host)
        logger.info("metrics on %s:%d/metrics", op_settings.metrics_host, op_settings.metrics_port)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    """Release the API connection pool and the Triton probes' threads."""
    controller = memo.get("controller")
    if controller is not None:
        controller.close()
