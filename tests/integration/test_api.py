"""pacsflow-api through FastAPI's TestClient on a results store the real pipeline filled (phantom CTs through the
in-process router, embedded ONNX Runtime); the store's reviewer queries also on a real PostgreSQL."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pacsflow_api.app import create_app
from pacsflow_api.drafts import DraftWriter
from pacsflow_router.results.store import ResultsStore
from tests.peers.postgres import fresh_database, postgres_server  # noqa: F401  (fixture)
from tests.peers.reviewstore import seed_store

# seed -> (lesion, order priority): a critical routine study, a negative stat one, a negative routine one.
STUDIES = {81: (True, "R"), 82: (False, "S"), 83: (False, "R")}
PROBLEM = "application/problem+json"


@dataclass
class Seeded:
    url: str
    facts: dict[int, dict[str, str]]
    keys: dict[str, str]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Seeded:
    url, facts = seed_store(tmp_path_factory.mktemp("api"), STUDIES)
    store = ResultsStore(url)
    keys = {role: store.create_api_key(role)[1] for role in ("reader", "clinical-lead", "integration", "admin")}
    keys["reader2"] = store.create_api_key("reader")[1]
    store.close()
    return Seeded(url, facts, keys)


@pytest.fixture
def api(seeded) -> Iterator[tuple[TestClient, ResultsStore]]:
    store = ResultsStore(seeded.url)
    with TestClient(create_app(store)) as client:
        yield client, store
    store.close()


def _as(seeded: Seeded, role: str) -> dict[str, str]:
    return {"X-API-Key": seeded.keys[role]}


def _triage_uid(client: TestClient, seeded: Seeded, seed: int, role: str = "reader") -> str:
    study = client.get(f"/api/v1/studies/{seeded.facts[seed]['study_uid']}", headers=_as(seeded, role)).json()
    return next(s["tracking_uid"] for s in study["results"] if s["mode"] == "triage")


def test_no_key_or_a_wrong_key_is_a_401_problem(api, seeded):
    client, _ = api
    for headers in ({}, {"X-API-Key": "nope.nope"}, {"Authorization": "Bearer " + seeded.keys["reader"] + "x"}):
        response = client.get("/api/v1/worklist", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["status"] == 401 and response.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/api/v1/worklist",
                      headers={"Authorization": "Bearer " + seeded.keys["reader"]}).status_code == 200


def test_the_worklist_is_critical_first_then_order_priority_then_age_and_pages(api, seeded):
    client, _ = api
    page = client.get("/api/v1/worklist", headers=_as(seeded, "reader")).json()
    assert [i["study_uid"] for i in page["items"]] == [seeded.facts[s]["study_uid"] for s in (81, 82, 83)]
    assert [i["critical"] for i in page["items"]] == [True, False, False]
    assert page["total"] == 3 and page["next"] is None
    first = client.get("/api/v1/worklist?limit=2", headers=_as(seeded, "reader")).json()
    assert len(first["items"]) == 2 and first["next"] == "/api/v1/worklist?limit=2&offset=2"
    rest = client.get(first["next"], headers=_as(seeded, "reader")).json()
    assert [i["study_uid"] for i in rest["items"]] == [seeded.facts[83]["study_uid"]]
    bad = client.get("/api/v1/worklist?limit=0", headers=_as(seeded, "reader"))
    assert bad.status_code == 422 and bad.headers["content-type"] == PROBLEM


def test_silent_use_cases_are_invisible_to_readers_and_in_the_leads_evaluation_view(api, seeded):
    client, _ = api
    uid = seeded.facts[81]["study_uid"]
    reader = client.get(f"/api/v1/studies/{uid}", headers=_as(seeded, "reader")).json()
    assert [s["mode"] for s in reader["results"]] == ["triage"]
    assert client.get(f"/api/v1/studies/{uid}?evaluation=true", headers=_as(seeded, "reader")).status_code == 403
    lead = client.get(f"/api/v1/studies/{uid}?evaluation=true", headers=_as(seeded, "clinical-lead")).json()
    assert sorted(s["mode"] for s in lead["results"]) == ["silent", "triage"]
    silent_uid = next(s["tracking_uid"] for s in lead["results"] if s["mode"] == "silent")
    # A reader cannot reach a silent result by its UID either: it does not exist for them.
    assert client.post(f"/api/v1/results/{silent_uid}/reveal", headers=_as(seeded, "reader")).status_code == 404


def test_a_result_is_shown_only_after_an_audited_reveal(api, seeded):
    client, store = api
    uid = seeded.facts[81]["study_uid"]
    study = client.get(f"/api/v1/studies/{uid}", headers=_as(seeded, "reader2")).json()
    assert study["accession"] == seeded.facts[81]["accession"] and study["procedure"]
    slot = study["results"][0]
    assert slot["revealed"] is False and slot["result"] is None
    tracking = slot["tracking_uid"]
    image = client.get(f"/api/v1/results/{tracking}/image", headers=_as(seeded, "reader2"))
    assert image.status_code == 409 and image.headers["content-type"] == PROBLEM
    shown = client.post(f"/api/v1/results/{tracking}/reveal", headers=_as(seeded, "reader2")).json()["result"]
    assert shown["present"] and shown["critical"] and shown["model_name"] == "ich_detector"
    assert shown["model_version"] == 2 and shown["sr_sop_uid"] and 0.5 <= shown["probability"] <= 1
    key_id = seeded.keys["reader2"].split(".")[0]
    reveals = [r for r in store.reveals() if r["reader"] == key_id]
    assert len(reveals) == 1 and reveals[0]["revealed_at"] is not None
    again = client.get(f"/api/v1/studies/{uid}", headers=_as(seeded, "reader2")).json()["results"][0]
    assert again["revealed"] and again["result"]["tracking_uid"] == tracking
    # Another reader still has to ask.
    assert client.get(f"/api/v1/studies/{uid}", headers=_as(seeded, "reader")).json()["results"][0]["result"] is None


def test_the_key_image_is_a_png_with_a_marker_that_can_be_left_off(api, seeded):
    client, _ = api
    tracking = _triage_uid(client, seeded, 81)
    client.post(f"/api/v1/results/{tracking}/reveal", headers=_as(seeded, "reader"))
    marked = client.get(f"/api/v1/results/{tracking}/image", headers=_as(seeded, "reader"))
    plain = client.get(f"/api/v1/results/{tracking}/image?marker=false", headers=_as(seeded, "reader"))
    assert marked.headers["content-type"] == plain.headers["content-type"] == "image/png"
    with_marker, without = Image.open(io.BytesIO(marked.content)), Image.open(io.BytesIO(plain.content))
    assert with_marker.size == without.size and without.mode == "L"
    # The marker is the only colour in the picture.
    rgb = np.asarray(with_marker.convert("RGB")).astype(int)
    assert ((rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])).any()


def test_feedback_is_idempotent_per_reader_and_verdict_and_names_the_reader(api, seeded):
    client, store = api
    tracking = _triage_uid(client, seeded, 81)
    url = f"/api/v1/results/{tracking}/feedback"
    body = {"verdict": "reject", "comment": "calcification, not blood"}
    # Not before the reader has seen it.
    assert client.post(url, json=body, headers=_as(seeded, "admin")).status_code == 409
    client.post(f"/api/v1/results/{tracking}/reveal", headers=_as(seeded, "reader"))
    with ThreadPoolExecutor(4) as pool:
        codes = sorted(pool.map(lambda _: client.post(url, json=body, headers=_as(seeded, "reader")).status_code,
                                range(4)))
    assert codes == [200, 200, 200, 201]
    modify = {"verdict": "modify", "corrected_finding": "subdural haematoma",
              "corrected_location": {"slice_index": 3, "row_fraction": 0.4, "col_fraction": 0.6}}
    assert client.post(url, json=modify, headers=_as(seeded, "reader")).status_code == 201
    wrong = client.post(url, json={"verdict": "accept", "corrected_finding": "x"}, headers=_as(seeded, "reader"))
    assert wrong.status_code == 422 and wrong.headers["content-type"] == PROBLEM
    assert client.post(url, json={"verdict": "maybe"}, headers=_as(seeded, "reader")).status_code == 422
    assert client.post(url, json=body, headers=_as(seeded, "integration")).status_code == 403
    key_id = seeded.keys["reader"].split(".")[0]
    rows = [r for r in store.feedback() if r["reader"] == key_id]
    assert sorted(r["verdict"] for r in rows) == ["modify", "reject"]
    assert next(r for r in rows if r["verdict"] == "modify")["corrected_location"]["slice_index"] == 3
    evidence = client.get("/api/v1/usecases/ich-triage/evidence", headers=_as(seeded, "clinical-lead")).json()
    assert evidence["versions"][0]["model_version"] == 2 and evidence["versions"][0]["reviewed"] >= 1
    assert evidence["versions"][0]["reject"] >= 1
    assert client.get("/api/v1/usecases/ich-triage/evidence", headers=_as(seeded, "reader")).status_code == 403


def test_every_request_is_audited_with_its_identity_and_route_template_and_logs_hold_no_phi(api, seeded, caplog):
    client, store = api
    before = len(store.access_log())
    uid = seeded.facts[82]["study_uid"]
    with caplog.at_level(logging.DEBUG):
        client.get(f"/api/v1/studies/{uid}", headers=_as(seeded, "integration"))
        client.get(f"/api/v1/studies?accession={seeded.facts[82]['accession']}", headers=_as(seeded, "integration"))
        client.get("/api/v1/worklist")
    rows = store.access_log()[before:]
    key_id = seeded.keys["integration"].split(".")[0]
    assert [(r["identity"], r["route"], r["status"]) for r in rows] == [
        (key_id, "/api/v1/studies/{study_uid}", 200), (key_id, "/api/v1/studies", 200),
        ("anonymous", "/api/v1/worklist", 401)]
    study = client.get(f"/api/v1/studies/{uid}", headers=_as(seeded, "reader")).json()
    # The server's logs (not httpx's: that is the test client printing its own URLs).
    server = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith(("pacsflow", "uvicorn")))
    assert "/api/v1/studies/{study_uid}" in server
    for secret in (uid, seeded.facts[82]["accession"], study["patient_id"], study["patient_name"]):
        assert secret not in server


def test_the_draft_states_only_revealed_results_and_is_always_unverified(api, seeded, tmp_path):
    client, store = api
    uid = seeded.facts[83]["study_uid"]
    url = f"/api/v1/studies/{uid}/draft"
    assert client.get(url, headers=_as(seeded, "reader2")).status_code == 409
    assert client.get("/api/v1/studies/1.2.3/draft", headers=_as(seeded, "reader2")).status_code == 404
    tracking = _triage_uid(client, seeded, 83, "reader2")
    client.post(f"/api/v1/results/{tracking}/reveal", headers=_as(seeded, "reader2"))
    draft = client.get(url, headers=_as(seeded, "reader2")).json()
    assert draft["status"] == "unverified" and draft["results"] == [tracking]
    assert draft["text"].startswith("DRAFT - AI-GENERATED, NOT VERIFIED BY A RADIOLOGIST")
    assert "no intracranial hemorrhage detected" in draft["text"].lower() and "ich_detector version 2" in draft["text"]
    # A site's template for the use case replaces the built-in wording; it runs sandboxed.
    (tmp_path / "ich-triage.j2").write_text("{% for r in results %}ICH: {{ 'yes' if r.present else 'no' }}{% endfor %}")
    with TestClient(create_app(store, drafts=DraftWriter(tmp_path))) as site:
        text = site.get(url, headers=_as(seeded, "reader2")).json()["text"]
    assert text == "DRAFT - AI-GENERATED, NOT VERIFIED BY A RADIOLOGIST\nICH: no"


def test_a_page_session_is_an_httponly_cookie_that_ends_when_its_key_is_rotated_or_revoked(api, seeded):
    client, store = api
    key_id, token = store.create_api_key("reader")
    assert client.post("/login", data={"api_key": "wrong"}, follow_redirects=False).status_code == 401
    login = client.post("/login", data={"api_key": token}, follow_redirects=False)
    assert login.status_code == 303
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and token.lower() not in cookie
    assert client.get("/api/v1/worklist").status_code == 200 and client.get("/").status_code == 200
    store.rotate_api_key(key_id)
    assert client.get("/api/v1/worklist").status_code == 401
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"
    _, token2 = store.create_api_key("reader")
    client.post("/login", data={"api_key": token2})
    assert client.get("/api/v1/worklist").status_code == 200
    store.revoke_api_key(token2.split(".")[0])
    assert client.get("/api/v1/worklist").status_code == 401


def test_the_openapi_schema_is_published_with_every_endpoint(api):
    client, _ = api
    schema = client.get("/api/v1/openapi.json").json()
    assert {"/api/v1/worklist", "/api/v1/studies/{study_uid}", "/api/v1/results/{tracking_uid}/image",
            "/api/v1/results/{tracking_uid}/feedback", "/api/v1/results/{tracking_uid}/reveal",
            "/api/v1/usecases/{name}/evidence", "/api/v1/studies/{study_uid}/draft"} <= set(schema["paths"])
    assert not any(p.startswith("/login") for p in schema["paths"])


@pytest.fixture(params=["sqlite", "postgresql"])
def copied_store(request, seeded, tmp_path) -> Iterator[ResultsStore]:
    """The seeded results on SQLite or copied into a fresh PostgreSQL database."""
    url = f"sqlite:///{tmp_path / 'copy.db'}" if request.param == "sqlite" else fresh_database(
        request.getfixturevalue("postgres_server"))
    source, target = ResultsStore(seeded.url), ResultsStore(url)
    for facts in seeded.facts.values():
        for row in source.study_results(study_uid=facts["study_uid"], include_silent=True):
            full = source.result(row["tracking_uid"], include_silent=True)
            assert full is not None and target.record_result(full) and not target.record_result(full)
    source.close()
    yield target
    target.close()


def test_the_reviewer_queries_agree_on_both_backends(copied_store, seeded):
    rows, total = copied_store.worklist()
    assert total == 3 and [r["study_uid"] for r in rows] == [seeded.facts[s]["study_uid"] for s in (81, 82, 83)]
    assert [r["order_priority"] for r in rows] == ["R", "S", "R"]
    assert len(copied_store.study_results(accession=seeded.facts[81]["accession"], include_silent=True)) == 2
    with TestClient(create_app(copied_store)) as client:
        key_id, token = copied_store.create_api_key("reader")
        assert copied_store.active_key(key_id) == ("reader", None)
        token = copied_store.rotate_api_key(key_id)
        role, rotated = copied_store.active_key(key_id) or ("", None)
        assert role == "reader" and rotated is not None and rotated.tzinfo is not None
        tracking = client.get(f"/api/v1/studies/{seeded.facts[81]['study_uid']}",
                              headers={"X-API-Key": token}).json()["results"][0]["tracking_uid"]
        client.post(f"/api/v1/results/{tracking}/reveal", headers={"X-API-Key": token})
        assert client.post(f"/api/v1/results/{tracking}/feedback", json={"verdict": "accept"},
                           headers={"X-API-Key": token}).status_code == 201
    counts = copied_store.verdict_counts("ich-triage")["versions"]
    assert counts == [{"model_version": 2, "reviewed": 1, "accept": 1, "modify": 0, "reject": 0}]
    # An amendment (next revision) that is no longer critical takes the study off the top.
    critical = next(r for r in copied_store.study_results(study_uid=seeded.facts[81]["study_uid"])
                    if r["critical"])
    amended = {**copied_store.result(critical["tracking_uid"]), "revision": critical["revision"] + 1,
               "critical": False, "probability": 0.1, "present": False}
    assert copied_store.record_result(amended)
    rows, total = copied_store.worklist()
    assert total == 3 and not any(r["critical"] for r in rows)
    assert copied_store.study_results(study_uid=seeded.facts[81]["study_uid"])[0]["revision"] == amended["revision"]
