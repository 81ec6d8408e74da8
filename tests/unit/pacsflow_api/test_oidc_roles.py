"""The pure parts of single sign-on: groups -> role, PKCE S256, and the page session an SSO login starts."""

from __future__ import annotations

import base64
import hashlib

import pytest
from starlette.requests import Request

from pacsflow_api.identity import SESSION_COOKIE, Identity, SessionProvider
from pacsflow_api.oidc import NO_ROLE, Oidc, OidcConfig, looks_like_jwt, pkce_pair

GROUPS = {"reader": ["PACS-Readers"], "clinical-lead": ["PACS-Leads"], "admin": ["PACS-Admins"],
          "integration": ["Interfaces"]}


def _oidc(claim: str = "groups") -> Oidc:
    return Oidc(OidcConfig(issuer="https://idp.example/realms/h", client_id="page", groups_claim=claim,
                           role_groups=GROUPS))


@pytest.mark.parametrize(("groups", "role"), [
    (["PACS-Readers"], "reader"),
    (["/PACS-Leads"], "clinical-lead"),  # Keycloak's full group path
    (["PACS-Readers", "PACS-Admins"], "admin"),  # the most privileged of several
    (["Interfaces", "PACS-Readers"], "reader"),  # a human role before the machines' one
    (["Cafeteria"], NO_ROLE),
    ([], NO_ROLE),
    ("PACS-Readers", "reader"),  # a single group as a string
    ([1, None], NO_ROLE),  # not strings: ignored
])
def test_groups_map_to_one_role(groups, role):
    assert _oidc().role({"sub": "s", "groups": groups}) == role


def test_a_nested_groups_claim_and_a_missing_one():
    oidc = _oidc("realm_access.roles")
    assert oidc.role({"realm_access": {"roles": ["PACS-Leads"]}}) == "clinical-lead"
    assert oidc.role({"realm_access": "PACS-Leads"}) == NO_ROLE
    assert oidc.role({}) == NO_ROLE
    assert oidc.identity({"sub": "1f2e", "realm_access": {"roles": ["PACS-Leads"]}}).subject == "1f2e"


def test_pkce_s256_pair():
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128  # RFC 7636 4.1
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    assert challenge == expected and pkce_pair()[0] != verifier


def test_api_keys_are_not_taken_for_jwts():
    assert looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
    assert not looks_like_jwt("k_1234.secretpart")


def _request(cookie: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/", "headers": [
        (b"cookie", f"{SESSION_COOKIE}={cookie}".encode())]})


def test_an_sso_session_keeps_sub_and_role_and_cannot_be_promoted():
    sessions = SessionProvider(store=None, secret=b"k" * 32)  # type: ignore[arg-type]  # SSO sessions need no store
    cookie = sessions.issue(Identity(subject="8c9a-.user", role="reader", via="oidc-session"))
    found = sessions.identify(_request(cookie))
    assert found == Identity(subject="8c9a-.user", role="reader", via="oidc-session")
    payload, _, mac = cookie.rpartition(".")
    forged = payload.replace(":reader.", ":admin.") + "." + mac
    assert forged != cookie and sessions.identify(_request(forged)) is None
    assert SessionProvider(store=None, secret=b"x" * 32).identify(_request(cookie)) is None  # type: ignore[arg-type]
