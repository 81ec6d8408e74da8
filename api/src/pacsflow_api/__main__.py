"""``pacsflow-api``: serve the results API and the reviewer page with uvicorn.

Settings come from the environment (``PACSFLOW_STORE_URL``, the same results store URL the routers' ``audit.url``
names; ``PACSFLOW_API_HOST``, ``PACSFLOW_API_PORT``, ``PACSFLOW_API_SECURE_COOKIES``,
``PACSFLOW_API_SESSION_SECRET``, ``PACSFLOW_API_METRICS_PORT``, ``PACSFLOW_API_PPV_FLOORS``; HTTPS with
``PACSFLOW_API_TLS_CERT_FILE``/``_TLS_KEY_FILE``; ``PACSFLOW_API_ALLOWED_NETWORKS``; single sign-on with
``PACSFLOW_API_OIDC_*``) or the command line.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import sys
import threading
from pathlib import Path
from typing import Any, Literal

import uvicorn
from prometheus_client import start_http_server
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pacsflow_router.config import Network, TlsServer
from pacsflow_router.errors import AuditSchemaError
from pacsflow_router.results import evidence_metrics
from pacsflow_router.results.store import ResultsStore
from pacsflow_router.tls import server_context

from .app import create_app
from .oidc import ROLE_PRECEDENCE, Oidc, OidcConfig


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
    tls_cert_file: str = ""
    """PEM certificate chain: serve HTTPS (TLS 1.2+, pacsflow_router.tls's BCP 195 choices); cookies become Secure."""
    tls_key_file: str = ""
    """PEM key of ``tls_cert_file``."""
    tls_min_version: Literal["1.2", "1.3"] = "1.2"
    allowed_networks: list[Network] = []
    """Address blocks that may connect (JSON list, e.g. ``["10.20.0.0/16"]``); others get 403 before any
    authentication. Empty: every address."""
    oidc_issuer: str = ""
    """The hospital IdP's issuer URL: turns on single sign-on (bearer tokens and the page's login)."""
    oidc_client_id: str = ""
    """The reviewer page's client at the IdP."""
    oidc_client_secret_file: str = ""
    """File holding the client secret, for a confidential client (a mounted Secret; never the secret itself)."""
    oidc_audience: str = ""
    """What a bearer token's ``aud`` must contain (default: the client id)."""
    oidc_authorized_parties: list[str] = []
    """When set, a bearer token's ``azp`` must be one of these clients."""
    oidc_groups_claim: str = "groups"
    oidc_role_groups: dict[str, list[str]] = {}
    """Role -> IdP groups (JSON, e.g. ``{"reader": ["PACS-Readers"], "clinical-lead": ["PACS-Leads"]}``)."""
    oidc_ca_file: str = ""
    """PEM bundle that verifies the IdP's HTTPS certificate (default: the system's trust store)."""
    oidc_redirect_uri: str = ""
    """The page's callback URL as the IdP sees it (default: this host's ``/login/callback``)."""
    oidc_leeway: float = Field(default=30.0, ge=0, le=300)

    @field_validator("oidc_role_groups")
    @classmethod
    def _known_roles(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(value) - set(ROLE_PRECEDENCE))
        if unknown:
            raise ValueError(f"PACSFLOW_API_OIDC_ROLE_GROUPS names {unknown}; roles are {list(ROLE_PRECEDENCE)}")
        return value

    @model_validator(mode="after")
    def _pairs(self) -> ApiSettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("set both PACSFLOW_API_TLS_CERT_FILE and PACSFLOW_API_TLS_KEY_FILE, or neither")
        if self.oidc_issuer and not (self.oidc_client_id and self.oidc_role_groups):
            raise ValueError("single sign-on needs PACSFLOW_API_OIDC_CLIENT_ID and PACSFLOW_API_OIDC_ROLE_GROUPS")
        return self

    def tls(self) -> TlsServer | None:
        """The HTTPS settings, or None for plain HTTP."""
        if not self.tls_cert_file:
            return None
        return TlsServer(cert_file=self.tls_cert_file, key_file=self.tls_key_file, min_version=self.tls_min_version)

    def oidc(self) -> Oidc | None:
        """The identity provider, or None without ``PACSFLOW_API_OIDC_ISSUER``."""
        if not self.oidc_issuer:
            return None
        secret = Path(self.oidc_client_secret_file).read_text().strip() if self.oidc_client_secret_file else None
        return Oidc(OidcConfig(
            issuer=self.oidc_issuer, client_id=self.oidc_client_id, client_secret=secret,
            audience=self.oidc_audience or None, authorized_parties=tuple(self.oidc_authorized_parties),
            groups_claim=self.oidc_groups_claim, role_groups=self.oidc_role_groups, ca_file=self.oidc_ca_file or None,
            leeway=self.oidc_leeway))


class _TlsConfig(uvicorn.Config):
    """uvicorn's settings with the TLS context pacsflow_router.tls builds (BCP 195) instead of uvicorn's own."""

    def __init__(self, app: Any, tls: TlsServer, **kwargs: Any) -> None:
        super().__init__(app, ssl_certfile=tls.cert_file, ssl_keyfile=tls.key_file, **kwargs)
        self.tls = tls

    def load(self) -> None:
        super().load()
        self.ssl = server_context(self.tls)


def main(argv: list[str] | None = None) -> int:
    """Run the API until interrupted; exit 2 when the store is from a newer release."""
    try:
        # Secrets (store URL, session key) may come as files named after their variable, from a mounted Secret.
        settings = ApiSettings(_secrets_dir=os.environ.get("PACSFLOW_API_SECRETS_DIR") or None)
        oidc = settings.oidc()
        tls = settings.tls()
        if tls is not None:
            server_context(tls)  # fail here, naming the setting, rather than inside uvicorn
    except (ValueError, OSError, ssl.SSLError) as exc:
        print(f"pacsflow-api: bad settings: {exc}", file=sys.stderr)
        return 2
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
    app = create_app(store, secure_cookies=settings.secure_cookies or tls is not None,
                     session_secret=settings.session_secret.encode() or None, oidc=oidc,
                     allowed_networks=settings.allowed_networks)
    app.state.oidc_redirect_uri = settings.oidc_redirect_uri or None
    # uvicorn's access log prints raw paths, which hold Study Instance UIDs: off. The app logs route templates.
    options: dict[str, Any] = {"host": args.host, "port": args.port, "access_log": False, "log_config": None}
    config = _TlsConfig(app, tls, **options) if tls is not None else uvicorn.Config(app, **options)
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
