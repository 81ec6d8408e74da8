"""Who is calling: an :class:`Identity` from an :class:`IdentityProvider`.

API keys (``X-API-Key`` or ``Authorization: Bearer``, checked against the results store's scrypt hashes) and the
reviewer page's session cookie are the providers today. Single sign-on plugs in as one more provider (an OIDC
bearer-token validator mapping a group claim to a role) without touching the routes: they only see an Identity.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request

from pacsflow_router.results.store import ResultsStore

SESSION_COOKIE = "pacsflow_session"
SESSION_SECONDS = 8 * 3600
"""A reader's shift: the page asks for the key again after this."""


@dataclass(frozen=True)
class Identity:
    """An authenticated caller."""

    subject: str
    """Stable, non-personal id written to the audit: the API key's id (or the SSO subject)."""
    role: str
    """reader, clinical-lead, integration or admin."""
    via: str
    """Which provider vouched for it: ``api-key``, ``session`` (a page login with a key), ``oidc`` (a bearer token
    from the hospital's IdP) or ``oidc-session`` (a page login through the IdP)."""

    @property
    def sees_silent(self) -> bool:
        """Clinical leads and admins may open the evaluation view of silent use cases; readers never see them."""
        return self.role in ("clinical-lead", "admin")


class IdentityProvider(Protocol):
    """Turns a request into an Identity, or None when the request carries nothing this provider understands or its
    credential is not valid (the next provider is asked; no provider: 401)."""

    def identify(self, request: Request) -> Identity | None:
        """The caller of ``request``, or None."""


class ApiKeyProvider:
    """API keys from ``X-API-Key`` or ``Authorization: Bearer <token>`` (token ``<key id>.<secret>``)."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store

    def identify(self, request: Request) -> Identity | None:
        """See :class:`IdentityProvider`."""
        token = request.headers.get("x-api-key")
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if token is None and scheme.lower() == "bearer":
            token = bearer.strip()
        if not token:
            return None
        found = self.store.authenticate(token)
        return None if found is None else Identity(subject=found[0], role=found[1], via="api-key")


class SessionProvider:
    """The reviewer page's session: after a login with an API key, an HttpOnly SameSite=Strict cookie
    ``<key id>.<issued ms>.<expiry>.<HMAC>`` signed with ``secret`` (default: random per process, so a restart logs
    readers out; replicas share one).

    The key's scrypt hash is checked once at login, not on every image request; each request only looks the key up:
    revoking or rotating it ends its sessions at once, and the role is the key's current one.

    After a single sign-on login the cookie's first part is ``oidc:<base64url sub>:<role>`` instead: the role the
    IdP's groups granted at login, kept (signed) until the session ends.
    """

    def __init__(self, store: ResultsStore, secret: bytes | None = None) -> None:
        self.store = store
        self.secret = secret or secrets.token_bytes(32)

    def _sign(self, payload: str) -> str:
        mac = hmac.new(self.secret, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def sign(self, payload: str) -> str:
        """The HMAC of ``payload`` under the session secret (base64url), for other short-lived signed cookies."""
        return self._sign(payload)

    def issue(self, identity: Identity, now: float | None = None) -> str:
        """The cookie value of a new session for ``identity``."""
        issued = now or time.time()
        subject = identity.subject
        if identity.via.startswith("oidc"):
            sub = base64.urlsafe_b64encode(identity.subject.encode()).decode().rstrip("=")
            subject = f"oidc:{sub}:{identity.role}"
        payload = f"{subject}.{int(issued * 1000)}.{int(issued + SESSION_SECONDS)}"  # issued in ms
        return f"{payload}.{self._sign(payload)}"

    def identify(self, request: Request) -> Identity | None:
        """See :class:`IdentityProvider`."""
        value = request.cookies.get(SESSION_COOKIE, "")
        payload, _, mac = value.rpartition(".")
        parts = payload.split(".")
        if len(parts) != 3 or not hmac.compare_digest(mac, self._sign(payload)):
            return None
        subject, issued, expiry = parts
        if not (issued.isdigit() and expiry.isdigit()) or int(expiry) < time.time():
            return None
        if subject.startswith("oidc:"):
            _, sub, role = subject.split(":", 2)
            decoded = base64.urlsafe_b64decode(sub + "=" * (-len(sub) % 4)).decode()
            return Identity(subject=decoded, role=role, via="oidc-session")
        key = self.store.active_key(subject)
        if key is None or (key[1] is not None and key[1].timestamp() * 1000 >= int(issued)):
            return None  # revoked, or rotated after this session began
        return Identity(subject=subject, role=key[0], via="session")
