"""``pacsflow-api``: serve the results API and the reviewer page with uvicorn.

Settings come from the environment (``PACSFLOW_STORE_URL``, the same results store URL the routers' ``audit.url``
names; ``PACSFLOW_API_HOST``, ``PACSFLOW_API_PORT``, ``PACSFLOW_API_SECURE_COOKIES``,
``PACSFLOW_API_SESSION_SECRET``, ``PACSFLOW_API_METRICS_PORT``, ``PACSFLOW_API_PPV_FLOORS``) or the command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading

import uvicorn
from prometheus_client import start_http_server
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pacsflow_router.errors import AuditSchemaError
from pacsflow_router.results import evidence_metrics
from pacsflow_router.results.store import ResultsStore

from .app import create_app


class ApiSettings(BaseSettings):
    """pacsflow-api's settings."""

    model_config = SettingsConfigDict(env_prefix="PACSFLOW_API_")

    store_url: str = Field(default="sqlite:///results.db",
                           validation_alias=AliasChoices("PACSFLOW_STORE_URL", "PACSFLOW_API_STORE_URL"))
    """SQLAlchemy URL of the results store (the routers' ``audit.url``)."""
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    secure_cookies: bool = False
    """Mark the session cookie Secure: set it behind TLS (the cluster's ingress)."""
    session_secret: str = ""
    """Key that signs the page's session cookies; every replica needs the same (empty: random per process)."""
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """Serve the evidence gauges (``pacsflow_evidence_*``) on this port at ``/metrics`` (unset: off)."""
    ppv_floors: dict[str, float] = {}
    """Use case -> the lowest PPV it accepts (JSON, e.g. ``{"ich-triage": 0.3}``): ``pacsflow_evidence_ppv_floor``,
    the threshold of the PacsflowPpvUnderFloor alert."""


def main(argv: list[str] | None = None) -> int:
    """Run the API until interrupted; exit 2 when the store is from a newer release."""
    settings = ApiSettings()
    parser = argparse.ArgumentParser(prog="pacsflow-api", description=__doc__)
    parser.add_argument("--store-url", default=settings.store_url)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        store = ResultsStore(args.store_url)
    except AuditSchemaError as exc:
        print(f"pacsflow-api: {exc}", file=sys.stderr)
        return 2
    if settings.metrics_port is not None:
        start_http_server(settings.metrics_port, addr=args.host, registry=evidence_metrics.REGISTRY)
        threading.Thread(target=evidence_metrics.refresh_forever, name="evidence-metrics", daemon=True,
                         args=(store, threading.Event(), settings.ppv_floors)).start()
    app = create_app(store, secure_cookies=settings.secure_cookies,
                     session_secret=settings.session_secret.encode() or None)
    # uvicorn's access log prints raw paths, which hold Study Instance UIDs: off. The app logs route templates.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_config=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
