"""What the running children report: is the router's Deployment available, is a model version READY in Triton.

Conditions built only from "the objects were applied" would say Ready for a router whose pod never
starts and ModelAvailable for a version Triton failed to load; these two checks read the truth from the
Deployment's status (written by kube-controller-manager from the kubelet's pod status) and from Triton's
own model-readiness endpoint (``GET /v2/models/<name>/versions/<v>/ready``, KServe v2 protocol).
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

from pacsflow_router.config import served_model_name

from .reconcile.conditions import Cond

#: Seconds one readiness request to Triton may take (the probe runs off the event loop, in its own thread).
PROBE_TIMEOUT_SECONDS = 3.0


def deployment_available(deployment: Mapping[str, Any] | None, name: str) -> Cond:
    """``DeploymentAvailable`` from a Deployment's status.

    Parameters
    ----------
    deployment
        The Deployment as read from the API (``None``: not found).
    name
        Its name (for the message).

    Returns
    -------
    Cond
        True when the Deployment's ``Available`` condition is True or ``status.availableReplicas >= 1``.
    """
    if deployment is None:
        return Cond("DeploymentAvailable", "False", "DeploymentNotFound", f"Deployment {name} does not exist yet")
    status = deployment.get("status") or {}
    available = next((c for c in status.get("conditions") or () if c.get("type") == "Available"), None)
    if (available is not None and available.get("status") == "True") or (status.get("availableReplicas") or 0) >= 1:
        return Cond("DeploymentAvailable", "True", "MinimumReplicasAvailable",
                    f"Deployment {name} has {status.get('availableReplicas') or 0} available replica(s)")
    why = (available or {}).get("message") or "no replica is available yet"
    return Cond("DeploymentAvailable", "False", "DeploymentUnavailable",
                f"Deployment {name}: {why}; see `kubectl describe deployment {name}` and its pods' events")


def model_version_ready(url: str, model: str, version: int, timeout: float = PROBE_TIMEOUT_SECONDS) -> bool | None:
    """Ask Triton whether one model version is READY.

    Parameters
    ----------
    url
        Triton's HTTP endpoint, ``host:port``.
    model, version
        The source model and pinned version (asked as ``config.served_model_name`` at ``version``).
    timeout
        Seconds for the request.

    Returns
    -------
    bool or None
        True: Triton answered 200; False: Triton answered that the version is not ready (4xx); None: Triton could
        not be asked (unreachable, 5xx), so nothing is known.
    """
    path = f"/v2/models/{urllib.parse.quote(served_model_name(model, version), safe='')}/versions/{int(version)}/ready"
    try:
        with urllib.request.urlopen(f"http://{url}{path}", timeout=timeout) as response:  # noqa: S310 - fixed scheme
            return bool(response.status == 200)
    except urllib.error.HTTPError as exc:
        return False if 400 <= exc.code < 500 else None
    except (OSError, ValueError):
        return None
