"""Watch the router's own ConfigMap through the Kubernetes API: a demotion applies in seconds, not a minute.

The kubelet refreshes a mounted ConfigMap up to about a minute after it changes; the kill switch (a use case
demoted to silent) must act within seconds. So the router also watches that one ConfigMap object
(a get, then a watch with ``fieldSelector=metadata.name=<name>``; RBAC: get and watch on that name only) and hands every new version of the routing config
to the service. The mounted file stays the fallback: outside a cluster, without credentials, or while the API
server cannot be reached, the file watcher keeps working as before.

This is the router's only module that imports the ``kubernetes`` client.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import kubernetes
import yaml
from kubernetes.client.exceptions import ApiException

from . import metrics
from .config import ConfigError, ConfigMapRef, RoutingConfig, parse_config

log = logging.getLogger(__name__)

#: The ConfigMap key the operator writes the routing config under (reconcile.router.CONFIG_KEY).
CONFIG_KEY = "routing.yaml"
#: Server-side timeout of one watch request; the watch is re-opened from the last resourceVersion after it.
WATCH_TIMEOUT_SECONDS = 240


def text_digest(text: str | bytes) -> str:
    """The digest the service compares the mounted file with (same bytes, same digest)."""
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def default_api_client() -> Any | None:
    """An API client from the pod's service account, else ``$KUBECONFIG``/``~/.kube/config``; None when neither."""
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        pass
    try:
        # $KUBECONFIG read now: the client's own default was frozen when the package was imported.
        return kubernetes.config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
    except (kubernetes.config.ConfigException, OSError, TypeError):
        return None


class ConfigMapWatcher:
    """Keeps a watch open on one ConfigMap and calls ``on_config(config, digest)`` for each new routing config.

    Parameters
    ----------
    ref : ConfigMapRef
        Namespace and name of the ConfigMap.
    on_config : callable
        Called from the watcher thread with the parsed config and the digest of its text. Invalid configs are
        logged and counted (``pacsflow_config_reloads_total{outcome="invalid"}``), never passed on.
    api_client : kubernetes.client.ApiClient, optional
        Defaults to :func:`default_api_client`; when there is none the watcher does not start (file only).
    min_backoff, max_backoff : float
        Reconnect delays after an error, doubling from ``min_backoff`` up to ``max_backoff`` seconds.
    """

    def __init__(self, ref: ConfigMapRef, on_config: Callable[[RoutingConfig, str], None], *,
                 api_client: Any | None = None, min_backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.ref = ref
        self.on_config = on_config
        self._api_client = api_client
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any | None = None
        self._seen_version: str | None = None
        self._resource_version: str | None = None
        self.connected = threading.Event()
        """Set while a watch is open (the last list/watch succeeded)."""

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> bool:
        """Start the watcher thread; False (and nothing started) when no Kubernetes credentials are available."""
        if self._api_client is None:
            self._api_client = default_api_client()
        if self._api_client is None:
            log.info("routing config: no Kubernetes credentials; following the mounted file only")
            return False
        self._thread = threading.Thread(target=self._run, name="pacsflow-configmap-watch", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the loop -----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        core = kubernetes.client.CoreV1Api(self._api_client)
        failures = 0
        while not self._stop.is_set():
            try:
                if self._resource_version is None:
                    self._list(core)
                self._watch_from(core)
                failures = 0
            except ApiException as exc:
                self.connected.clear()
                if exc.status == 410:  # our resourceVersion is too old: read again, then watch from there
                    self._resource_version = None
                    continue
                if exc.status == 404:  # not created yet (or deleted): keep the running config, look again later
                    self._resource_version = None
                failures += 1
                log.warning("routing config: watching ConfigMap %s/%s failed (HTTP %s %s); retrying",
                            self.ref.namespace, self.ref.name, exc.status, exc.reason)
            except Exception as exc:  # noqa: BLE001 - network errors of every kind: back off, never crash the router
                self.connected.clear()
                if self._stop.is_set():
                    break  # stop() closed the stream under us
                failures += 1
                log.warning("routing config: watching ConfigMap %s/%s failed (%s); retrying",
                            self.ref.namespace, self.ref.name, type(exc).__name__)
                log.debug("routing config: the watch error", exc_info=True)
            if failures:
                self._stop.wait(min(self.max_backoff, self.min_backoff * 2 ** (failures - 1)))
        self.connected.clear()

    def _list(self, core: Any) -> None:
        # A get, not a list: the Role grants get and watch on this one name, nothing more.
        obj = core.read_namespaced_config_map(self.ref.name, self.ref.namespace)
        self._apply(obj)
        self.connected.set()
        self._resource_version = str(obj.metadata.resource_version)

    def _watch_from(self, core: Any) -> None:
        # Resumes from the last event seen (kept on self, so a broken stream does not replay older versions).
        self._watch = kubernetes.watch.Watch()
        stream = self._watch.stream(
            core.list_namespaced_config_map, self.ref.namespace, field_selector=f"metadata.name={self.ref.name}",
            resource_version=self._resource_version, timeout_seconds=WATCH_TIMEOUT_SECONDS,
            allow_watch_bookmarks=True)
        self.connected.set()
        for event in stream:
            if self._stop.is_set():
                break
            kind = event["type"]
            raw = event.get("raw_object") or {}
            if kind == "ERROR":
                raise ApiException(status=raw.get("code", 500), reason=raw.get("reason", "watch error"))
            self._resource_version = (raw.get("metadata") or {}).get("resourceVersion") or self._resource_version
            if kind == "BOOKMARK":  # progress only (the object is not deserialised)
                continue
            obj = event["object"]
            if kind in ("ADDED", "MODIFIED"):
                self._apply(obj)
            elif kind == "DELETED":
                log.warning("routing config: ConfigMap %s/%s was deleted; keeping the running config",
                            self.ref.namespace, self.ref.name)

    def _apply(self, obj: Any) -> None:
        version = obj.metadata.resource_version
        if version == self._seen_version:
            return
        self._seen_version = version
        text = (obj.data or {}).get(CONFIG_KEY)
        if text is None:
            log.error("routing config: ConfigMap %s/%s has no %r key; keeping the running config",
                      self.ref.namespace, self.ref.name, CONFIG_KEY)
            metrics.CONFIG_RELOADS.labels("invalid").inc()
            return
        try:
            config = parse_config(yaml.safe_load(text), source=f"ConfigMap {self.ref.namespace}/{self.ref.name}")
        except (ConfigError, yaml.YAMLError) as exc:
            log.error("routing config: ConfigMap %s/%s changed but is invalid, keeping the running one: %s",
                      self.ref.namespace, self.ref.name, exc)
            metrics.CONFIG_RELOADS.labels("invalid").inc()
            return
        try:
            self.on_config(config, text_digest(text))
        except Exception:  # noqa: BLE001 - the service's code: say so loudly, keep watching for the next version
            log.exception("routing config: applying ConfigMap %s/%s failed; keeping the running config",
                          self.ref.namespace, self.ref.name)
            metrics.CONFIG_RELOADS.labels("invalid").inc()
