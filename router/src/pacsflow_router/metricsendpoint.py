"""The /metrics endpoint: prometheus-client's exposition behind an allow-list, optional HTTPS and a bearer token.

prometheus-client's own ``start_http_server`` can do TLS but neither a bearer token nor an allow-list, so its
request handler (``MetricsHandler``: content negotiation, gzip, OpenMetrics) is served here from an
:class:`~.admission.GuardedHTTPServer`. With ``metrics.bearerTokenFile`` set, a request without ``Authorization:
Bearer <token>`` or with another token is answered 401 (the comparison is constant-time, ``hmac.compare_digest``);
the file is read on every request, so a rotated Secret applies at once. A token file that cannot be read answers 503
rather than opening the endpoint. ``GET /healthz`` answers 200 without a token (it tells nothing but that the router
is up), so a kubelet liveness probe (``httpGet``, ``scheme: HTTPS`` when TLS is on) needs no secret; the allow-list
still applies to it, so the nodes' addresses belong in ``allowedNetworks``. ``GET /readyz``, also without a token,
answers 200 when the router can take studies and 503 with the reason otherwise (:mod:`.readiness`: DICOM listener
accepting, spool writable): the startup and readiness probes.
"""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.exposition import MetricsHandler

from . import metrics
from .admission import GuardedHTTPServer, Refusal, RefusalHook, ServerTls, report
from .config import Metrics
from .errors import ConfigError

log = logging.getLogger(__name__)

#: Answered 200 without a bearer token (liveness probes).
HEALTH_PATH = "/healthz"
#: Answered 200 or 503 (with the reason) without a bearer token (startup and readiness probes).
READY_PATH = "/readyz"


def _read_token(path: str) -> bytes:
    token = Path(path).read_bytes().strip()
    if not token:
        raise ValueError("empty")
    return token


class _Server(GuardedHTTPServer):
    token_file: str | None = None
    ready: Callable[[], tuple[bool, str]] | None = None


class _Handler(MetricsHandler):
    server: _Server
    registry = metrics.REGISTRY

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        if path == HEALTH_PATH:
            self._answer(200, b"ok\n")
            return
        if path == READY_PATH and self.server.ready is not None:
            ok, reason = self.server.ready()
            self._answer(200 if ok else 503, reason.encode() + b"\n")
            return
        token_file = self.server.token_file
        if token_file is not None and not self._authorized(token_file):
            return
        super().do_GET()

    def _authorized(self, token_file: str) -> bool:
        try:
            expected = _read_token(token_file)
        except (OSError, ValueError):
            log.error("metrics.bearerTokenFile %s cannot be read or is empty: /metrics answers 503", token_file)
            self._answer(503, b"the bearer token file cannot be read\n")
            return False
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return True
        metrics.CONNECTIONS_REFUSED.labels("metrics", "unauthorized").inc()
        # The token itself is never recorded, only whether one was offered.
        report(self.server.on_refused, Refusal("metrics", "unauthorized", str(self.client_address[0]),
                                               "wrong bearer token" if given else "no bearer token"))
        self._answer(401, b"a bearer token is required\n", challenge=True)
        return False

    def _answer(self, status: int, body: bytes, *, challenge: bool = False) -> None:
        self.send_response(status)
        if challenge:
            self.send_header("WWW-Authenticate", 'Bearer realm="pacsflow-metrics"')
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's parameter name)
        pass  # a scrape every few seconds: not worth a log line


class MetricsEndpoint:
    """``/metrics`` (any path, as prometheus-client serves it) on a daemon thread, per the routing config's ``metrics``.

    Parameters
    ----------
    config
        ``metrics``: host, port (0: any free port, see :attr:`port`), ``tls``, ``bearerTokenFile``,
        ``allowedNetworks``.
    on_refused
        Given each refused connection or scrape (allow-list, TLS handshake, bearer token): the audit.
    ready
        Answers ``GET /readyz``: ``(ready, reason)`` (:meth:`.readiness.Readiness.check`); without it ``/readyz`` is
        served like any other path (metrics).

    Raises
    ------
    ConfigError
        The TLS files or the token file cannot be read (at construction: the router does not start half-open).
    """

    def __init__(self, config: Metrics, on_refused: RefusalHook | None = None,
                 ready: Callable[[], tuple[bool, str]] | None = None) -> None:
        self.config = config
        tls = ServerTls(config.tls, "metrics.tls") if config.tls is not None else None
        if config.bearer_token_file is not None:
            try:
                _read_token(config.bearer_token_file)
            except (OSError, ValueError):
                raise ConfigError(f"metrics.bearerTokenFile {config.bearer_token_file} cannot be read or is empty; "
                                  "mount the Secret holding the scrape token") from None
        self._server = _Server((config.host, config.port), _Handler, listener="metrics",
                               networks=config.allowed_networks, tls=tls)
        self._server.token_file = config.bearer_token_file
        self._server.on_refused = on_refused
        self._server.ready = ready
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self._server.server_address[1])

    @property
    def scheme(self) -> str:
        """``https`` or ``http``."""
        return "https" if self.config.tls is not None else "http"

    def start(self) -> MetricsEndpoint:
        """Serve on a daemon thread; returns ``self``."""
        self._thread.start()
        log.info("metrics on %s://%s:%d/metrics%s", self.scheme, self.config.host, self.port,
                 " (bearer token required)" if self.config.bearer_token_file else "")
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
