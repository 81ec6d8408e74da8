"""The reviewer page's single sign-on: authorization code + PKCE against the hospital's identity provider.

``GET /login/sso`` sends the browser to the IdP with a fresh ``state``, ``nonce`` and PKCE S256 challenge, kept in a
short-lived signed cookie (HttpOnly, SameSite=Lax: it must come back on the IdP's cross-site redirect).
``GET /login/callback`` checks the state, redeems the code with the verifier, validates the ID token (signature,
issuer, audience, expiry, nonce), maps its groups to a role and starts the page's usual session. The login is a
``login`` record of the audit chain and an access-audit row (the callback's) under the token's ``sub``; the logout is
an access-audit row.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Annotated

import jwt
from fastapi import FastAPI, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from . import deps as api
from .identity import SESSION_COOKIE, SESSION_SECONDS
from .oidc import NO_ROLE, Oidc, OidcError, pkce_pair

log = logging.getLogger(__name__)

LOGIN_COOKIE = "pacsflow_login"
LOGIN_SECONDS = 600
"""How long a user may take at the IdP's login page."""


def _oidc(request: Request) -> Oidc | None:
    return api.state(request).oidc


def redirect_uri(request: Request) -> str:
    """Where the IdP sends the browser back (``PACSFLOW_API_OIDC_REDIRECT_URI`` behind a proxy, else this host)."""
    configured: str | None = getattr(request.app.state, "oidc_redirect_uri", None)
    return configured or str(request.url_for("login_callback"))


def _failed(templates: Jinja2Templates, request: Request, message: str, status: int) -> Response:
    response = templates.TemplateResponse(request, "login.html", {"error": message, "sso": True},
                                          status_code=status)
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


def add_routes(app: FastAPI, templates: Jinja2Templates) -> None:
    """The single sign-on routes (a 404 when no identity provider is configured)."""

    @app.get("/login/sso", include_in_schema=False)
    def login_sso(request: Request) -> Response:
        oidc = _oidc(request)
        if oidc is None:
            return _failed(templates, request, "Single sign-on is not configured here.", 404)
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier, challenge = pkce_pair()
        try:
            target = oidc.authorization_url(redirect_uri=redirect_uri(request), state=state, nonce=nonce,
                                            challenge=challenge)
        except OidcError as exc:
            log.warning("single sign-on unavailable: %s", exc)
            return _failed(templates, request, "The hospital sign-in service cannot be reached.", 503)
        payload = f"{state}.{nonce}.{verifier}.{int(time.time()) + LOGIN_SECONDS}"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(LOGIN_COOKIE, f"{payload}.{api.state(request).sessions.sign(payload)}",
                            max_age=LOGIN_SECONDS, path="/login", httponly=True, samesite="lax",
                            secure=api.state(request).secure_cookies)
        return response

    @app.get("/login/callback", name="login_callback", include_in_schema=False)
    def login_callback(request: Request, code: Annotated[str, Query(max_length=4096)] = "",
                       state: Annotated[str, Query(max_length=512)] = "",
                       error: Annotated[str, Query(max_length=256)] = "") -> Response:
        oidc, shared = _oidc(request), api.state(request)
        if oidc is None:
            return _failed(templates, request, "Single sign-on is not configured here.", 404)
        payload, _, mac = request.cookies.get(LOGIN_COOKIE, "").rpartition(".")
        parts = payload.split(".")
        if (len(parts) != 4 or not secrets.compare_digest(mac, shared.sessions.sign(payload))
                or not parts[3].isdigit() or int(parts[3]) < time.time()):
            return _failed(templates, request, "The sign-in took too long or was not started here; try again.", 400)
        expected_state, nonce, verifier, _ = parts
        if not secrets.compare_digest(state, expected_state):
            return _failed(templates, request, "The sign-in answer does not belong to this sign-in; try again.", 400)
        if error or not code:
            log.info("single sign-on refused by the identity provider: %s", error or "no code")
            return _failed(templates, request, "The hospital sign-in service did not sign you in.", 401)
        try:
            claims = oidc.redeem(code=code, redirect_uri=redirect_uri(request), verifier=verifier, nonce=nonce)
        except jwt.PyJWTError as exc:
            log.warning("single sign-on: ID token refused: %s", exc)
            return _failed(templates, request, "The hospital sign-in service's answer is not valid.", 401)
        except OidcError as exc:
            log.warning("single sign-on failed: %s", exc)
            return _failed(templates, request, "The hospital sign-in service cannot be reached.", 503)
        identity = oidc.identity(claims, via="oidc-session")
        request.state.identity = identity  # the access audit's row for this route is the login record
        if identity.role == NO_ROLE:
            return _failed(templates, request, "Your account is in no pacsflow group; ask for access.", 403)
        shared.store.record_login(identity.subject, method="oidc")  # the tamper-evident chain's login record
        # A page of our own, not a redirect: a SameSite=Strict cookie set during the IdP's cross-site redirect
        # chain would not be sent on its last hop; the refresh below is a same-site navigation.
        response = templates.TemplateResponse(request, "signed_in.html", {"identity": identity})
        response.set_cookie(SESSION_COOKIE, shared.sessions.issue(identity), max_age=SESSION_SECONDS, path="/",
                            httponly=True, samesite="strict", secure=shared.secure_cookies)
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response
