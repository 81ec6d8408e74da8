"""Single sign-on with the hospital's identity provider (OpenID Connect): bearer tokens for the API, authorization
code + PKCE for the reviewer page, and the group claim mapped to pacsflow's roles.

PyJWT does the cryptography (signature, ``exp``/``nbf``/``iat`` with a small leeway, ``iss``, ``aud``) and caches the
IdP's signing keys (JWKS, fetched again when a token names a key it has not seen: key rotation). This module adds
what OIDC asks on top: discovery (OpenID Connect Discovery 1.0, the metadata's ``issuer`` must be the configured
one), ``azp`` when the deployment names the clients it trusts, the ``nonce`` of an ID token (OIDC Core 3.1.3.7), and
PKCE S256 (RFC 7636). Signatures are asymmetric only: ``none`` and HMAC algorithms are never accepted.

The subject pacsflow writes to its audit is the token's ``sub``, never a name or an e-mail address.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from .identity import Identity

log = logging.getLogger(__name__)

ROLE_PRECEDENCE = ("admin", "clinical-lead", "reader", "integration")
"""A user in groups of several roles gets the first of these (the groups say what the hospital granted)."""
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""Asymmetric JWS algorithms only (no ``none``, no HS*: the client must not be able to mint tokens)."""
NO_ROLE = "none"
"""The role of a valid token whose groups map to no pacsflow role: every route answers 403."""


class OidcError(Exception):
    """The identity provider cannot be reached, or answers something that is not OpenID Connect."""


@dataclass(frozen=True)
class OidcConfig:
    """How pacsflow-api trusts the hospital's identity provider (from ``PACSFLOW_API_OIDC_*``)."""

    issuer: str
    """The IdP's issuer URL (``https://idp.hospital/realms/hospital``): discovery is at
    ``<issuer>/.well-known/openid-configuration`` and every token's ``iss`` must equal it."""
    client_id: str
    """The reviewer page's client at the IdP (authorization code + PKCE)."""
    client_secret: str | None = None
    """Only for a confidential page client (read from a mounted file)."""
    audience: str | None = None
    """What a bearer token's ``aud`` must contain (default: ``client_id``)."""
    authorized_parties: tuple[str, ...] = ()
    """When set, a bearer token's ``azp`` (the client it was issued to) must be one of these."""
    groups_claim: str = "groups"
    """The claim listing the user's groups (AD groups); a dotted name reads a nested claim (``realm_access.roles``)."""
    role_groups: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """pacsflow role -> the IdP groups that grant it (``{"reader": ["PACS-Readers"], ...}``)."""
    ca_file: str | None = None
    """PEM bundle that verifies the IdP's HTTPS certificate (default: the system's trust store)."""
    leeway: float = 30.0
    """Clock skew, in seconds, tolerated on ``exp``/``nbf``/``iat``."""
    scope: str = "openid"


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge (RFC 7636 4.1-4.2)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def looks_like_jwt(token: str) -> bool:
    """Whether ``token`` has a JWS compact form (three base64url parts); API keys have two."""
    return token.count(".") == 2 and token.startswith("eyJ")


class Oidc:
    """The identity provider: discovery, keys, token validation and the role a token's groups grant."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._ssl = ssl.create_default_context(cafile=config.ca_file) if config.ca_file else None
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._keys: jwt.PyJWKClient | None = None

    def _get(self, url: str, data: Mapping[str, str] | None = None) -> dict[str, Any]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        request = urllib.request.Request(url, data=body, headers={"Accept": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=15, context=self._ssl) as answer:  # noqa: S310 (https/http)
                found = json.load(answer)
        except urllib.error.HTTPError as exc:
            raise OidcError(f"the identity provider answered {exc.code} at {url}") from exc
        except (OSError, ValueError) as exc:
            raise OidcError(f"the identity provider cannot be reached at {url}: {exc}") from exc
        if not isinstance(found, dict):
            raise OidcError(f"the identity provider answered something other than a JSON object at {url}")
        return found

    def metadata(self) -> dict[str, Any]:
        """The IdP's discovery document (fetched once, then cached).

        Raises
        ------
        OidcError
            When it cannot be fetched, or names another issuer than the configured one.
        """
        with self._lock:
            if self._metadata is None:
                found = self._get(self.config.issuer.rstrip("/") + "/.well-known/openid-configuration")
                if found.get("issuer") != self.config.issuer:
                    raise OidcError(f"the identity provider's discovery document names issuer {found.get('issuer')!r}"
                                    f", not the configured {self.config.issuer!r} (PACSFLOW_API_OIDC_ISSUER)")
                for needed in ("jwks_uri", "authorization_endpoint", "token_endpoint"):
                    if not isinstance(found.get(needed), str):
                        raise OidcError(f"the identity provider's discovery document has no {needed}")
                self._keys = jwt.PyJWKClient(found["jwks_uri"], cache_keys=True, lifespan=3600,
                                             ssl_context=self._ssl)
                self._metadata = found
            return self._metadata

    def claims(self, token: str, *, audience: str, nonce: str | None = None) -> dict[str, Any]:
        """The claims of ``token`` after its signature, ``iss``, ``aud``, ``exp``, ``nbf`` (and ``nonce``) checked.

        Raises
        ------
        jwt.PyJWTError
            When the token is not valid (the message says which check failed; it holds no claim values).
        OidcError
            When the IdP cannot be reached.
        """
        self.metadata()
        assert self._keys is not None
        try:
            key = self._keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise OidcError(f"the identity provider's keys cannot be fetched: {exc}") from exc
        found: dict[str, Any] = jwt.decode(
            token, key.key, algorithms=list(ALGORITHMS), audience=audience, issuer=self.config.issuer,
            leeway=self.config.leeway, options={"require": ["exp", "iat", "iss", "sub", "aud"]})
        if nonce is not None and not secrets.compare_digest(str(found.get("nonce", "")), nonce):
            raise jwt.InvalidTokenError("the ID token's nonce is not the one this login sent")
        return found

    def access_claims(self, token: str) -> dict[str, Any]:
        """The claims of a bearer (access) token for pacsflow-api: as :meth:`claims`, with the configured audience
        and, where configured, ``azp`` among the authorized parties."""
        found = self.claims(token, audience=self.config.audience or self.config.client_id)
        parties = self.config.authorized_parties
        if parties and found.get("azp") not in parties:
            raise jwt.InvalidTokenError("the token was issued to a client that is not in "
                                        "PACSFLOW_API_OIDC_AUTHORIZED_PARTIES")
        return found

    def groups(self, claims: Mapping[str, Any]) -> list[str]:
        """The user's groups from the configured claim (a list of strings; a nested claim by a dotted name)."""
        value: Any = claims
        for part in self.config.groups_claim.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, str):
            return [value]
        return [g for g in value if isinstance(g, str)] if isinstance(value, list) else []

    def role(self, claims: Mapping[str, Any]) -> str:
        """The pacsflow role the token's groups grant (:data:`ROLE_PRECEDENCE` among several), or :data:`NO_ROLE`.

        A group written as a path (``/PACS-Readers``, Keycloak's full path) matches the plain name too.
        """
        have = set(self.groups(claims))
        have |= {g.rsplit("/", 1)[-1] for g in have}
        for role in ROLE_PRECEDENCE:
            if have.intersection(self.config.role_groups.get(role, ())):
                return role
        return NO_ROLE

    def identity(self, claims: Mapping[str, Any], via: str = "oidc") -> Identity:
        """The caller a validated token stands for: its ``sub`` and the role of its groups."""
        return Identity(subject=str(claims["sub"]), role=self.role(claims), via=via)

    # The reviewer page's login: authorization code + PKCE (OIDC Core 3.1, RFC 7636).

    def authorization_url(self, *, redirect_uri: str, state: str, nonce: str, challenge: str) -> str:
        """Where the browser goes to sign in at the IdP."""
        query = urllib.parse.urlencode({
            "response_type": "code", "client_id": self.config.client_id, "redirect_uri": redirect_uri,
            "scope": self.config.scope, "state": state, "nonce": nonce, "code_challenge": challenge,
            "code_challenge_method": "S256"})
        endpoint: str = self.metadata()["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    def redeem(self, *, code: str, redirect_uri: str, verifier: str, nonce: str) -> dict[str, Any]:
        """Exchange an authorization code at the token endpoint; the validated ID token's claims (groups taken from
        the ID token, else from the access token).

        Raises
        ------
        OidcError, jwt.PyJWTError
            When the IdP refuses the code or its ID token is not valid.
        """
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "client_id": self.config.client_id, "code_verifier": verifier}
        if self.config.client_secret:
            form["client_secret"] = self.config.client_secret
        answer = self._get(self.metadata()["token_endpoint"], form)
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("the identity provider's token response has no ID token (is 'openid' in the scope?)")
        found = self.claims(id_token, audience=self.config.client_id, nonce=nonce)
        if self.config.groups_claim not in found and isinstance(answer.get("access_token"), str):
            try:
                found[self.config.groups_claim] = self.groups(self.access_claims(answer["access_token"]))
            except jwt.PyJWTError:
                pass  # an access token for another audience: the ID token has no groups, so no role
        return found

    def logout_url(self, *, id_token: str | None, post_logout_redirect_uri: str) -> str | None:
        """The IdP's end-session URL (OIDC RP-Initiated Logout), or None when it has none."""
        endpoint = self.metadata().get("end_session_endpoint")
        if not isinstance(endpoint, str):
            return None
        query = {"client_id": self.config.client_id, "post_logout_redirect_uri": post_logout_redirect_uri}
        if id_token:
            query["id_token_hint"] = id_token
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urllib.parse.urlencode(query)}"


class OidcBearerProvider:
    """``Authorization: Bearer <JWT>`` from the hospital's IdP (see :class:`~pacsflow_api.identity.IdentityProvider`).

    An invalid token is logged with the failed check (never its claims) and answers None, so the route says 401.
    """

    def __init__(self, oidc: Oidc) -> None:
        self.oidc = oidc

    def identify(self, request: Any) -> Identity | None:
        """See :class:`~pacsflow_api.identity.IdentityProvider`."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not looks_like_jwt(token):
            return None
        try:
            return self.oidc.identity(self.oidc.access_claims(token))
        except jwt.PyJWTError as exc:
            log.info("bearer token refused: %s", exc)
        except OidcError as exc:
            log.warning("bearer token not checked: %s", exc)
        return None
