"""The one module that talks to the Kubernetes API (besides kopf's own watches and status patches).

Children are written with server-side apply under the field manager ``pacsflow-operator``: the same
request creates or updates, a rerun or a restarted operator converges on the same objects (no
duplicates), and fields other managers own (an HPA, a user's annotation) are left alone.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, cast

import kubernetes
from kubernetes.client.exceptions import ApiException

from . import errors
from .metrics import API_REQUESTS

log = logging.getLogger(__name__)

FIELD_MANAGER = "pacsflow-operator"

# kind -> (API path prefix, plural); only the kinds the operator reads or writes.
_PATHS: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "DicomRouter": ("/apis/pacsflow.io/v1alpha1", "dicomrouters"),
    "TritonCluster": ("/apis/pacsflow.io/v1alpha1", "tritonclusters"),
    "AIUseCase": ("/apis/pacsflow.io/v1alpha1", "aiusecases"),
}


def load_client_configuration() -> kubernetes.client.Configuration:
    """In-cluster service account when running in a pod, otherwise ``KUBECONFIG`` / ``~/.kube/config``.

    ``KUBECONFIG`` is read now, not when the kubernetes package was imported (its default is frozen at
    import), so a test or a wrapper that sets it late is honoured.
    """
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=configuration)
    except kubernetes.config.ConfigException:
        first = (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or None
        kubernetes.config.load_kube_config(config_file=first, client_configuration=configuration)
    return configuration


class Kube:
    """Typed, counted access to the few API calls the operator makes.

    Parameters
    ----------
    configuration
        Client configuration (default: :func:`load_client_configuration`).
    """

    def __init__(self, configuration: kubernetes.client.Configuration | None = None) -> None:
        self._api = kubernetes.client.ApiClient(configuration or load_client_configuration())
        self._lock = threading.Lock()
        self.requests = 0
        """API requests made so far (the benchmark's requests-per-reconcile numerator)."""

    def close(self) -> None:
        """Release the connection pool."""
        self._api.close()

    def _path(self, kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = _PATHS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        if name:
            path += f"/{name}"
        if sub:
            path += f"/{sub}"
        return path

    def _call(self, verb: str, method: str, path: str, *, body: Any = None, content_type: str | None = None,
              query: list[tuple[str, str]] | None = None) -> Any:
        with self._lock:
            self.requests += 1
        API_REQUESTS.labels(verb=verb).inc()
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        try:
            request = self._api.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*request)
            data = response.read()
        except ApiException as exc:  # transport-level failures (TLS, connection) surface this way too
            raise errors.KubeApiError(f"{verb} {path} failed: {exc.reason}") from None
        if response.status >= 400:
            reason = _api_reason(data, response.reason)
            if response.status == 404:
                raise NotFoundError(f"{verb} {path}: not found")
            if response.status == 403:
                # Retried, not permanent: fixing the RBAC (the chart's ClusterRole) must heal it without a restart.
                raise errors.KubeApiError(f"{verb} {path} forbidden: {reason}; grant it to the operator's "
                                          "ServiceAccount (charts/pacsflow/templates/rbac.yaml)")
            if response.status in (400, 422):
                raise errors.InvalidSpecError(f"{verb} {path} refused ({response.status}): {reason}")
            raise errors.KubeApiError(f"{verb} {path} failed ({response.status}): {reason}")
        return json.loads(data) if data else None

    def apply(self, manifest: dict[str, Any], namespace: str) -> dict[str, Any]:
        """Server-side apply ``manifest`` in ``namespace`` (create or update; conflicts forced).

        Parameters
        ----------
        manifest
            A full object with apiVersion, kind, metadata.name.
        namespace
            Target namespace.

        Returns
        -------
        dict
            The object as stored.

        Raises
        ------
        InvalidSpecError
            The API server rejected the object (a permanent problem).
        KubeApiError
            Any other failure (retry).
        """
        body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
        # force: the operator is the owner of what it renders; a stale manager must not block a reconcile.
        return cast(dict[str, Any], self._call(
            "apply", "PATCH", self._path(manifest["kind"], namespace, manifest["metadata"]["name"]),
            body=body, content_type="application/apply-patch+yaml",
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
        ))

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or ``None`` when it does not exist."""
        try:
            return cast("dict[str, Any] | None", self._call("get", "GET", self._path(kind, namespace, name)))
        except NotFoundError:
            return None

    def list_objects(self, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        """Objects of ``kind`` in ``namespace`` (optionally filtered by a label selector)."""
        query = [("labelSelector", label_selector)] if label_selector else []
        return cast(list[dict[str, Any]], self._call("list", "GET", self._path(kind, namespace), query=query)
                    .get("items", []))

    def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch ``status`` of a custom resource through its status subresource.

        Returns
        -------
        dict or None
            The object as stored, or None when it no longer exists.
        """
        try:
            return cast("dict[str, Any] | None", self._call(
                "patch_status", "PATCH", self._path(kind, namespace, name, "status"),
                body={"status": status}, content_type="application/merge-patch+json",
            ))
        except NotFoundError:
            log.debug("%s %s/%s vanished before its status could be written", kind, namespace, name)
            return None


class NotFoundError(errors.KubeApiError):
    """The object does not exist (HTTP 404)."""


def _api_reason(data: bytes | None, default: str | None) -> str:
    if data is None:
        return str(default)
    try:
        return cast("str | None", json.loads(data).get("message")) or str(default)
    except (TypeError, ValueError, AttributeError):
        return str(default)
