"""The hospital's identity provider for the single sign-on tests: a real Keycloak (Maven Central's
``keycloak-quarkus-dist``, fetched by ``scripts/fetch-identity-peer.sh`` / ``make identity-peer``) in dev mode on a free
loopback port, its H2 database in a temporary directory, with a ``hospital`` realm made through Keycloak's admin REST
API: users in AD-style groups, a public client for the reviewer page (authorization code + PKCE S256) whose tokens
carry a ``groups`` claim and the ``pacsflow-api`` audience, and a client whose tokens are for another audience.

Keycloak takes a while to start on a small machine: start it once per test module (see tests/e2e/test_sso.py).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from .net import free_port, stop_process

REPO = Path(__file__).resolve().parents[2]
REALM = "hospital"
PAGE_CLIENT = "pacsflow-page"
"""Public client of the reviewer page: authorization code + PKCE (S256 enforced); direct grants for the API tests."""
OTHER_CLIENT = "other-app"
"""Another application of the hospital: valid tokens of the same realm, but not for the ``pacsflow-api`` audience."""
SHORT_CLIENT = "short-lived"
"""Like the page client, but its access tokens live 1 second (the expired-token test)."""
AUDIENCE = "pacsflow-api"
OTHER_AUDIENCE = "billing-api"
PASSWORD = "Secret-pw-1"
USERS = {  # user name -> (AD-style group or None, first name, last name)
    "reader1": ("PACS-Readers", "Rita", "Reader"),
    "lead1": ("PACS-Leads", "Leo", "Lead"),
    "admin1": ("PACS-Admins", "Ada", "Admin"),
    "outsider": (None, "Otto", "Outsider"),
}
ROLE_GROUPS = {"reader": ["PACS-Readers"], "clinical-lead": ["PACS-Leads"], "admin": ["PACS-Admins"]}
"""What ``PACSFLOW_API_OIDC_ROLE_GROUPS`` says for this realm."""
JAVA_HOMES = ("/usr/lib/jvm/temurin-25-jdk-amd64", "/usr/lib/jvm/java-21-openjdk-amd64")


@dataclass(frozen=True)
class Keycloak:
    """A running Keycloak: its base URL and the ``hospital`` realm's issuer."""

    base: str
    admin_password: str

    @property
    def issuer(self) -> str:
        return f"{self.base}/realms/{REALM}"

    def password_token(self, user: str, client: str = PAGE_CLIENT, base: str | None = None) -> str:
        """An access token for ``user`` by the direct (resource owner password) grant, asked at ``base``."""
        url = f"{base or self.base}/realms/{REALM}/protocol/openid-connect/token"
        answer = requests.post(url, data={"grant_type": "password", "client_id": client, "username": user,
                                          "password": PASSWORD, "scope": "openid"}, timeout=30)
        answer.raise_for_status()
        token: str = answer.json()["access_token"]
        return token

    def user_id(self, user: str) -> str:
        """The ``sub`` Keycloak gives ``user`` (the subject pacsflow writes to its audit)."""
        found = self._admin("GET", f"/admin/realms/{REALM}/users", params={"username": user, "exact": "true"})
        return str(found.json()[0]["id"])

    def _admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        token = requests.post(f"{self.base}/realms/master/protocol/openid-connect/token", timeout=30, data={
            "grant_type": "password", "client_id": "admin-cli", "username": "admin",
            "password": self.admin_password}).json()["access_token"]
        answer = requests.request(method, self.base + path, headers={"Authorization": f"Bearer {token}"},
                                  timeout=60, **kwargs)
        answer.raise_for_status()
        return answer


def home() -> Path:
    """Keycloak's unpacked distribution in the cache; fails with what to run when it is missing."""
    path = Path(subprocess.run([REPO / "scripts" / "fetch-identity-peer.sh", "path"], check=True,
                               capture_output=True, text=True).stdout.strip())
    if not (path / "bin" / "kc.sh").exists():
        raise RuntimeError(f"Keycloak is not in {path}: run scripts/fetch-identity-peer.sh (make identity-peer)")
    return path


def java_home() -> str:
    """A Java 21+ for Keycloak 26."""
    for candidate in (os.environ.get("KEYCLOAK_JAVA_HOME", ""), *JAVA_HOMES):
        if candidate and Path(candidate, "bin", "java").exists():
            return candidate
    raise RuntimeError("Keycloak 26 needs Java 21+: install temurin-25-jdk (Adoptium) or openjdk-21-jdk-headless, "
                       "or point KEYCLOAK_JAVA_HOME at one")


def _client(client_id: str, *, audience: str, lifespan: int | None = None) -> dict[str, Any]:
    mappers: list[dict[str, Any]] = [{
        "name": "groups", "protocol": "openid-connect", "protocolMapper": "oidc-group-membership-mapper",
        "config": {"claim.name": "groups", "full.path": "false", "id.token.claim": "true",
                   "access.token.claim": "true", "userinfo.token.claim": "true"}}]
    mappers.append({"name": "audience", "protocol": "openid-connect", "protocolMapper": "oidc-audience-mapper",
                    "config": {"included.custom.audience": audience, "access.token.claim": "true",
                               "id.token.claim": "false"}})
    attributes = {"pkce.code.challenge.method": "S256", "post.logout.redirect.uris": "+"}
    if lifespan is not None:
        attributes["access.token.lifespan"] = str(lifespan)
    return {"clientId": client_id, "enabled": True, "publicClient": True, "standardFlowEnabled": True,
            "directAccessGrantsEnabled": True, "redirectUris": ["http://127.0.0.1:*"],
            "webOrigins": ["+"], "attributes": attributes, "protocolMappers": mappers}


def realm() -> dict[str, Any]:
    """The ``hospital`` realm: groups, users (names and e-mail set, no required actions) and the three clients."""
    users = []
    for name, (group, first, last) in USERS.items():
        users.append({"username": name, "enabled": True, "email": f"{name}@hospital.example", "emailVerified": True,
                      "firstName": first, "lastName": last, "groups": [f"/{group}"] if group else [],
                      "credentials": [{"type": "password", "value": PASSWORD, "temporary": False}]})
    return {"realm": REALM, "enabled": True, "accessTokenLifespan": 300, "sslRequired": "none",
            "groups": [{"name": g} for g, _, _ in USERS.values() if g], "users": users,
            "clients": [_client(PAGE_CLIENT, audience=AUDIENCE), _client(OTHER_CLIENT, audience=OTHER_AUDIENCE),
                        _client(SHORT_CLIENT, audience=AUDIENCE, lifespan=1)]}


@contextmanager
def keycloak(workdir: Path, timeout: float = 300.0) -> Iterator[Keycloak]:
    """``kc.sh start-dev`` on a free loopback port (H2 file database under ``workdir``) with the ``hospital`` realm;
    stopped by PID when the block ends."""
    kc_home = home()
    port, admin_password = free_port(), f"admin-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "JAVA_HOME": java_home(), "KC_BOOTSTRAP_ADMIN_USERNAME": "admin",
           "KC_BOOTSTRAP_ADMIN_PASSWORD": admin_password, "JAVA_OPTS_KC_HEAP": "-Xms128m -Xmx768m"}
    command = [str(kc_home / "bin" / "kc.sh"), "start-dev", "--http-host", "127.0.0.1", "--http-port", str(port),
               "--db", "dev-file", "--db-url", f"jdbc:h2:file:{workdir}/keycloakdb;NON_KEYWORDS=VALUE",
               "--health-enabled", "false", "--cache", "local"]
    log_path = workdir / "keycloak.log"
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"Keycloak exited with {proc.returncode}:\n{_tail(log_path)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Keycloak not up after {timeout:.0f}s:\n{_tail(log_path)}")
                try:
                    if requests.get(f"{base}/realms/master/.well-known/openid-configuration", timeout=5).ok:
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(1)
            kc = Keycloak(base, admin_password)
            kc._admin("POST", "/admin/realms", json=realm())
            yield kc
        finally:
            stop_process(proc, timeout=30)


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
