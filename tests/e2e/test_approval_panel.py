"""Approving a held critical result in the reviewer panel, in a real browser (Debian chromium + chromium-driver via
Selenium) against a ``pacsflow-api`` process: after the reveal the panel offers the decision only for a result whose
priority outputs are held; the click stores the approval under the reader's key id, which the router then releases
(tests/integration/test_approval.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from pacsflow_router.results.approvals import Approvals
from pacsflow_router.results.store import ResultsStore
from tests.peers.browser import api_process, chromium
from tests.peers.reviewstore import seed_store

pytestmark = pytest.mark.e2e


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[str, str, dict]]:
    """(base URL, store URL, study facts): a pacsflow-api process on a seeded store whose critical result is held."""
    url, facts = seed_store(tmp_path / "router", {91: (True, "R")})
    store = ResultsStore(url)
    (row,) = [r for r in store.study_results(study_uid=facts[91]["study_uid"]) if r["critical"]]
    # What the pipeline writes for a use case with triage.requireApproval (the held facts are the router's business).
    assert Approvals(store.engine).hold(result_key=row["result_key"], revision=row["revision"], study_key="k",
                                        use_case=row["use_case"], held={})
    store.close()
    with api_process(url, tmp_path / "api.log") as base:
        yield base, url, facts


@pytest.fixture
def browser(tmp_path) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path / "chromium") as driver:
        yield driver


def test_a_reader_approves_the_held_priority_from_the_panel(served, browser):
    base, url, facts = served
    store = ResultsStore(url)
    key_id, token = store.create_api_key("reader")
    wait = WebDriverWait(browser, 20)
    browser.get(base + "/login")
    browser.find_element(By.ID, "api_key").send_keys(token)
    browser.find_element(By.ID, "login").click()
    wait.until(lambda d: d.find_elements(By.ID, "worklist"))

    browser.get(f"{base}/studies/{facts[91]['study_uid']}")
    section = browser.find_element(By.CSS_SELECTOR, "section.result")
    box = section.find_element(By.CSS_SELECTOR, ".approval")
    assert not box.is_displayed(), "nothing to decide before the reveal"
    section.find_element(By.CSS_SELECTOR, "button.reveal").click()
    wait.until(lambda d: box.is_displayed())
    approve = box.find_element(By.CSS_SELECTOR, "button.approve")
    assert approve.text == "Approve priority" and box.get_attribute("aria-labelledby")
    approve.click()
    status = box.find_element(By.CSS_SELECTOR, ".approval-status")
    wait.until(lambda d: status.text.startswith("Approved"))
    assert not approve.is_displayed()

    (row,) = [r for r in store.study_results(study_uid=facts[91]["study_uid"]) if r["critical"]]
    held = Approvals(store.engine).state(row["result_key"])
    assert held is not None and (held["state"], held["decided_by"], held["decided_role"]) == (
        "approved", key_id, "reader")
    store.close()
