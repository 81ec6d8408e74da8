"""What routes share: the app's state (store, identity providers, evidence hook) and who is calling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from pacsflow_router.results.store import ResultsStore

from .evidence import EvidenceFunction, verdict_counts
from .identity import Identity, IdentityProvider, SessionProvider
from .oidc import Oidc
from .problems import Problem


@dataclass
class ApiState:
    """What the routes share: the store, the identity providers (asked in order) and the evidence hook."""

    store: ResultsStore
    sessions: SessionProvider
    providers: Sequence[IdentityProvider]
    evidence: EvidenceFunction = verdict_counts
    secure_cookies: bool = False
    oidc: Oidc | None = None
    """The hospital's identity provider, when single sign-on is configured."""
    extra: dict[str, Any] = field(default_factory=dict)


def state(request: Request) -> ApiState:
    """The app's :class:`ApiState`."""
    found: ApiState = request.app.state.api
    return found


def identify(request: Request) -> Identity | None:
    """The caller, from the first provider that vouches for it (also kept on the request for the access audit)."""
    for provider in state(request).providers:
        found = provider.identify(request)
        if found is not None:
            request.state.identity = found
            return found
    return None


def caller(request: Request) -> Identity:
    """Dependency: the authenticated caller, or 401."""
    found = identify(request)
    if found is None:
        raise Problem(401, "send an API key in X-API-Key or Authorization: Bearer (pacsflow api-key create)",
                      headers={"WWW-Authenticate": 'Bearer realm="pacsflow"'})
    return found


