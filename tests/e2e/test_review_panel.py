"""The reviewer side panel in a real browser: Debian's chromium driven by chromium-driver through Selenium, against a
``pacsflow-api`` process on a loopback port, on a results store the real pipeline filled (phantom CTs through the
in-process router). A reader logs in, sees the worklist, opens the critical study, reveals the result, toggles the
marker, sees the unverified draft text, rejects with a comment; the store then holds the verdict under the reader's key id."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from pacsflow_router.results.store import ResultsStore
from tests.peers.browser import api_process, chromium
from tests.peers.reviewstore import seed_store

pytestmark = pytest.mark.e2e

STUDIES = {91: (True, "R"), 82: (False, "S")}  # 82: a negative phantom the model scores low


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, str, dict]]:
    """(base URL, store URL, study facts): a pacsflow-api process on a seeded store, stopped by PID."""
    url, facts = seed_store(tmp_path / "router", STUDIES)
    with api_process(url, tmp_path / "api.log") as base:
        yield base, url, facts
    text = (tmp_path / "api.log").read_text()
    for study in facts.values():  # no UIDs or accession numbers in the API's own log
        assert study["study_uid"] not in text and study["accession"] not in text


@pytest.fixture
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path / "chromium") as driver:
        yield driver


def _image_loaded(driver: webdriver.Chrome, img, marker: str) -> bool:
    return (f"marker={marker}" in (img.get_attribute("src") or "")
            and bool(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)))


def test_a_reader_reveals_toggles_and_rejects_and_the_store_holds_the_verdict(served, browser):
    base, url, facts = served
    store = ResultsStore(url)
    key_id, token = store.create_api_key("reader")
    wait = WebDriverWait(browser, 20)

    # 1. Log in: the worklist redirects to the login form.
    browser.get(base + "/")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.ID, "api_key").send_keys(token)
    browser.find_element(By.ID, "login").click()
    wait.until(lambda d: d.find_elements(By.ID, "worklist"))
    cookie = browser.get_cookie("pacsflow_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert token not in cookie["value"]

    # 2. The worklist: the critical study first and marked, then the stat one.
    rows = browser.find_elements(By.CSS_SELECTOR, "#worklist tbody tr")
    assert [r.get_attribute("data-study") for r in rows] == [facts[91]["study_uid"], facts[82]["study_uid"]]
    assert "critical" in rows[0].get_attribute("class") and "CRITICAL" in rows[0].text
    assert "CRITICAL" not in rows[1].text

    # 3. Open the study: patient, accession, procedure; the AI result is not on the page.
    rows[0].find_element(By.TAG_NAME, "a").click()
    wait.until(lambda d: d.find_elements(By.ID, "accession"))
    assert browser.find_element(By.ID, "accession").text == facts[91]["accession"]
    assert browser.find_element(By.ID, "procedure").text == "CT Head"  # the images' Study Description
    assert "ich_detector" not in browser.page_source
    panel = browser.find_element(By.CSS_SELECTOR, "section.result .revealed")
    assert not panel.is_displayed() and store.reveals() == []

    # 4. Reveal, from the keyboard: the result appears and the reveal is audited under the reader's key.
    button = browser.find_element(By.CSS_SELECTOR, "button.reveal")
    button.send_keys(Keys.ENTER)
    wait.until(lambda d: panel.is_displayed())
    assert browser.find_element(By.CSS_SELECTOR, ".model").text == "ich_detector version 2"
    assert "present" in browser.find_element(By.CSS_SELECTOR, ".finding").text
    assert 0.5 <= float(browser.find_element(By.CSS_SELECTOR, ".probability").text) <= 1.0
    img = browser.find_element(By.CSS_SELECTOR, "img.key-image")
    wait.until(lambda d: _image_loaded(d, img, "true"))
    assert [r["reader"] for r in store.reveals()] == [key_id]
    # The draft text appears with the result, marked unverified, in a labelled read-only field.
    draft = browser.find_element(By.ID, "draft-text")
    wait.until(lambda d: draft.is_displayed() and draft.get_attribute("value"))
    assert draft.get_attribute("value").startswith("DRAFT - AI-GENERATED, NOT VERIFIED BY A RADIOLOGIST")
    assert "Intracranial hemorrhage suspected" in draft.get_attribute("value")

    # 5. Toggle the marker overlay off (space on the labelled checkbox) and on again.
    toggle = browser.find_element(By.CSS_SELECTOR, "input.marker-toggle")
    toggle.send_keys(Keys.SPACE)
    wait.until(lambda d: _image_loaded(d, img, "false"))
    toggle.send_keys(Keys.SPACE)
    wait.until(lambda d: _image_loaded(d, img, "true"))

    # 6. Reject with a comment.
    browser.find_element(By.CSS_SELECTOR, "label[for^='reject-']").click()
    browser.find_element(By.CSS_SELECTOR, "textarea[name='comment']").send_keys("hyperdense falx, not blood")
    browser.find_element(By.CSS_SELECTOR, "form.feedback button[type='submit']").click()
    wait.until(lambda d: "Verdict saved: reject." in d.find_element(By.CSS_SELECTOR, ".status").text)

    # 7. The store holds the verdict with the reader's identity, on the result that was shown.
    feedback = store.feedback()
    assert [(f["reader"], f["verdict"], f["comment"]) for f in feedback] == [
        (key_id, "reject", "hyperdense falx, not blood")]
    shown = store.study_results(study_uid=facts[91]["study_uid"])[0]
    assert feedback[0]["result_key"] == shown["result_key"]
    assert {(a["identity"], a["route"]) for a in store.access_log()} >= {
        (key_id, "/api/v1/results/{tracking_uid}/reveal"), (key_id, "/api/v1/results/{tracking_uid}/feedback")}
    store.close()
