"""Single sign-on against a real identity provider: Keycloak (tests/peers/keycloak.py), started once for this module,
with users in AD-style groups. Bearer tokens from Keycloak's direct grant drive the API's role checks and refusals;
the reviewer page logs in through Keycloak's own login page (authorization code + PKCE) in headless chromium."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from pacsflow_api.app import create_app
from pacsflow_api.oidc import Oidc, OidcConfig
from pacsflow_router.results import chain
from pacsflow_router.results.store import ResultsStore
from tests.peers import keycloak as kc
from tests.peers.browser import api_process, chromium
from tests.peers.reviewstore import seed_store

pytestmark = pytest.mark.e2e

STUDIES = {91: (True, "R")}  # one critical study: a result to reveal


@dataclass
class Setup:
    idp: kc.Keycloak
    store_url: str
    facts: dict[int, dict[str, str]]
    workdir: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """Keycloak with the hospital realm, and a results store the real pipeline filled (both once per module)."""
    workdir = tmp_path_factory.mktemp("sso")
    url, facts = seed_store(workdir / "router", STUDIES)
    with kc.keycloak(workdir / "keycloak") as idp:
        yield Setup(idp, url, facts, workdir)


def _oidc(idp: kc.Keycloak) -> Oidc:
    return Oidc(OidcConfig(issuer=idp.issuer, client_id=kc.PAGE_CLIENT, audience=kc.AUDIENCE,
                           role_groups=kc.ROLE_GROUPS, leeway=0))


@pytest.fixture
def api(setup: Setup) -> Iterator[tuple[TestClient, ResultsStore]]:
    store = ResultsStore(setup.store_url)
    with TestClient(create_app(store, oidc=_oidc(setup.idp))) as client:
        yield client, store
    store.close()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_roles_come_from_the_idp_groups_and_the_audit_names_the_subject(setup, api):
    client, store = api
    idp = setup.idp
    reader, lead, admin, outsider = (_bearer(idp.password_token(u)) for u in ("reader1", "lead1", "admin1",
                                                                               "outsider"))
    study_uid = setup.facts[91]["study_uid"]
    # A reader reads and reveals, but the evaluation view and the evidence are for clinical leads.
    assert client.get("/api/v1/worklist", headers=reader).status_code == 200
    assert client.get(f"/api/v1/studies/{study_uid}?evaluation=true", headers=reader).status_code == 403
    assert client.get("/api/v1/usecases/ich-triage/evidence", headers=reader).status_code == 403
    tracking = client.get(f"/api/v1/studies/{study_uid}", headers=reader).json()["results"][0]["tracking_uid"]
    assert client.post(f"/api/v1/results/{tracking}/reveal", headers=reader).status_code == 200
    # A clinical lead may; so may an admin.
    modes = [s["mode"] for s in client.get(f"/api/v1/studies/{study_uid}?evaluation=true",
                                           headers=lead).json()["results"]]
    assert sorted(modes) == ["silent", "triage"]
    assert client.get("/api/v1/usecases/ich-triage/evidence", headers=lead).status_code == 200
    assert client.get("/api/v1/usecases/ich-triage/evidence", headers=admin).status_code == 200
    # A valid token of a user in no pacsflow group: authenticated, allowed nothing.
    refused = client.get("/api/v1/worklist", headers=outsider)
    assert refused.status_code == 403 and "role none" in refused.json()["detail"]
    # API keys still work, for machines.
    _, key = store.create_api_key("integration")
    assert client.get("/api/v1/worklist", headers={"X-API-Key": key}).status_code == 200

    # The audit holds each user's sub, never a user name, a display name or an e-mail address.
    reader_sub, lead_sub = idp.user_id("reader1"), idp.user_id("lead1")
    assert [r["reader"] for r in store.reveals()] == [reader_sub]
    rows = store.access_log()
    assert {(r["identity"], r["role"]) for r in rows} >= {(reader_sub, "reader"), (lead_sub, "clinical-lead")}
    text = json.dumps(rows, default=str)
    for user, (_, first, last) in kc.USERS.items():
        assert user not in text and first not in text and last not in text and "@hospital.example" not in text


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["PACS-Admins"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


def _unsigned(token: str) -> str:
    _, payload, _ = token.split(".")
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    return f"{header}.{payload}."


def test_tokens_from_another_issuer_audience_or_time_or_forged_are_401(setup, api, caplog):
    client, store = api
    idp = setup.idp
    good = idp.password_token("reader1")
    assert client.get("/api/v1/worklist", headers=_bearer(good)).status_code == 200
    short = idp.password_token("reader1", client=kc.SHORT_CLIENT)  # lives 1 s
    refused = {  # what -> (token, the check PyJWT names in the API's log)
        # Same realm and keys, but asked at http://localhost:...: the token's iss is not the configured issuer.
        "wrong issuer": (idp.password_token("reader1", base=idp.base.replace("127.0.0.1", "localhost")),
                         "Invalid issuer"),
        "wrong audience": (idp.password_token("reader1", client=kc.OTHER_CLIENT), "Audience doesn't match"),
        "forged claims": (_tampered(good), "Signature verification failed"),
        "alg none": (_unsigned(good), "signing key"),  # no key id: no key of the IdP's signs it
    }
    time.sleep(2.5)
    refused["expired"] = (short, "Signature has expired")
    before = len(store.access_log())
    for what, (token, check) in refused.items():
        caplog.clear()
        with caplog.at_level("INFO", logger="pacsflow_api.oidc"):
            answer = client.get("/api/v1/worklist", headers=_bearer(token))
        assert answer.status_code == 401, what
        assert answer.headers["www-authenticate"].startswith("Bearer"), what
        assert check in caplog.text, (what, caplog.text)
    assert {r["identity"] for r in store.access_log()[before:]} == {"anonymous"}


@pytest.fixture
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path / "chromium") as driver:
        yield driver


def _sign_in_at_keycloak(browser: webdriver.Chrome, wait: WebDriverWait, idp: kc.Keycloak, user: str) -> None:
    browser.find_element(By.ID, "sso-login").click()
    wait.until(lambda d: d.find_elements(By.ID, "username"))
    assert browser.current_url.startswith(idp.issuer + "/protocol/openid-connect/auth?")
    assert "code_challenge_method=S256" in browser.current_url
    browser.find_element(By.ID, "username").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(kc.PASSWORD)
    browser.find_element(By.ID, "kc-login").click()


def test_the_page_signs_in_through_the_idps_own_login_page_and_out_again(setup, tmp_path, browser):
    idp = setup.idp
    env = {"PACSFLOW_API_OIDC_ISSUER": idp.issuer, "PACSFLOW_API_OIDC_CLIENT_ID": kc.PAGE_CLIENT,
           "PACSFLOW_API_OIDC_AUDIENCE": kc.AUDIENCE, "PACSFLOW_API_OIDC_ROLE_GROUPS": json.dumps(kc.ROLE_GROUPS)}
    wait = WebDriverWait(browser, 30)
    with api_process(setup.store_url, tmp_path / "api.log", env) as base:
        browser.get(base + "/")
        assert browser.current_url == base + "/login"
        _sign_in_at_keycloak(browser, wait, idp, "reader1")
        wait.until(lambda d: d.find_elements(By.ID, "worklist"))
        assert browser.current_url == base + "/"
        assert browser.find_element(By.ID, "role").text == "reader"
        cookie = browser.get_cookie("pacsflow_session")
        assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert browser.get_cookie("pacsflow_login") is None

        # Sign out: the page's session and the IdP's end (Keycloak asks to confirm without an ID token hint).
        browser.find_element(By.CSS_SELECTOR, "header form button").click()
        wait.until(lambda d: d.find_elements(By.ID, "kc-logout") or d.current_url == base + "/login")
        if browser.find_elements(By.ID, "kc-logout"):
            browser.find_element(By.ID, "kc-logout").click()
        wait.until(lambda d: d.current_url == base + "/login")
        assert browser.get_cookie("pacsflow_session") is None

        # The next sign-in asks Keycloak for a password again; a clinical lead sees the evaluation view.
        _sign_in_at_keycloak(browser, wait, idp, "lead1")
        wait.until(lambda d: d.find_elements(By.ID, "worklist"))
        assert browser.find_element(By.ID, "role").text == "clinical-lead"

    store = ResultsStore(setup.store_url)
    rows = [(r["identity"], r["role"], r["method"], r["route"], r["status"]) for r in store.access_log()]
    # The tamper-evident chain's login records: the subs, by single sign-on.
    logins = [(r["actor"], json.loads(r["detail"])["method"]) for r in chain.records(store.engine)
              if r["kind"] == "login"]
    store.close()
    reader_sub, lead_sub = idp.user_id("reader1"), idp.user_id("lead1")
    assert (reader_sub, "reader", "GET", "/login/callback", 200) in rows, "the login is audited under the sub"
    assert (reader_sub, "reader", "POST", "/logout", 303) in rows, "so is the logout"
    assert (lead_sub, "clinical-lead", "GET", "/login/callback", 200) in rows
    assert logins == [(reader_sub, "oidc"), (lead_sub, "oidc")]
    log = (tmp_path / "api.log").read_text()
    assert "reader1" not in log and "Rita" not in log and "@hospital.example" not in log
