"""Human approval before priority, and the accepted draft out as HL7, end to end on one results store (SQLite).

The real pipeline (spool -> embedded ONNX Runtime) makes a critical triage result of a use case with
``triage.requireApproval``; pacsflow-api (FastAPI's TestClient on its own engine of the same store file, as the
separate API process would have) takes the reader's decision; the router's pollers (``ApprovalReleaser``,
``DraftSender``) act on it; a durable outbox with the real MLLP and webhook senders delivers to local receivers, where
each message is counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import hl7
import pytest
from fastapi.testclient import TestClient

from pacsflow_api.app import create_app
from pacsflow_router import metrics
from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.domain import Order
from pacsflow_router.models import phantom
from pacsflow_router.results.approvals import Approvals
from pacsflow_router.results.export import MessageSender, Outbox
from pacsflow_router.results.store import ResultsStore
from pacsflow_router.workflow.approval import ApprovalReleaser
from pacsflow_router.workflow.drafts import DraftSender
from pacsflow_router.workflow.orders import OrderStore
from pacsflow_router.workflow.senders import MllpSender, WebhookSender
from tests.integration.test_outbound import MllpReceiver
from tests.peers.dicomfiles import part10
from tests.peers.inprocess import MODEL_REPOSITORY, InProcessRouter, in_process_router
from tests.peers.net import free_port
from tests.peers.webhook import HttpReceiver

ALWAYS = {"decisionThreshold": 0.0, "match": {"modalities": ["CT"]}, "model": {"name": "ich_detector", "version": 2}}


@dataclass
class Setup:
    router: InProcessRouter
    outbox: Outbox
    ris: MllpReceiver
    hook: HttpReceiver
    api: TestClient
    keys: dict[str, str]
    releaser: ApprovalReleaser
    drafts: DraftSender

    def deliver(self) -> None:
        self.outbox.deliver_due()

    def hl7_kinds(self) -> list[str]:
        kinds = []
        for raw in self.ris.messages:
            msg = hl7.parse(raw.decode())
            kinds.append("order-update" if str(msg.segment("MSH")(9)(1)(1)) in ("ORM", "OMI") else
                         "draft-report" if "draft-report" in str(msg.segments("OBX")[0](3)) else "alert")
        return sorted(kinds)

    def as_(self, role: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[role]}


@pytest.fixture
def setup(tmp_path) -> Iterator[Setup]:
    ris, hook = MllpReceiver(free_port()).start(), HttpReceiver()
    extra = {"hl7Destinations": [{"name": "ris", "host": "127.0.0.1", "port": ris.port, "version": "2.3.1",
                                  "timeoutSeconds": 5}],
             "webhooks": [{"name": "worklist-api", "url": hook.url}]}
    use_cases = [
        {"name": "ich-triage", **ALWAYS, "mode": "triage",
         "triage": {"criticalThreshold": 0.0, "requireApproval": True},
         "outputs": {"structuredReport": {"destination": "pacs"}, "webhooks": ["worklist-api"],
                     "hl7": {"destination": "ris", "messages": ["order-update", "alert", "draft-report"]}}},
    ]
    with in_process_router(tmp_path, use_cases, EmbeddedOnnxBackend(MODEL_REPOSITORY), extra) as router:
        config = router.pipeline.config

        def senders(channel: str, name: str) -> MessageSender:
            return MllpSender(config.hl7_destination(name)) if channel == "hl7" else WebhookSender(
                config.webhook(name))

        def no_pacs(name: str) -> Any:
            raise LookupError("no PACS in this test: SRs stay queued")

        outbox = Outbox(tmp_path / "sending", no_pacs, message_senders=senders, base_delay=0.05, max_delay=0.2)
        router.pipeline.outbox = outbox
        router.pipeline.orders = OrderStore(router.spool, router.audit.engine)
        store = ResultsStore(str(router.audit.engine.url))  # the API's own engine, as in its own process
        keys = {role: store.create_api_key(role)[1] for role in ("reader", "clinical-lead", "integration", "admin")}
        keys["reader2"] = store.create_api_key("reader")[1]
        approvals = Approvals(router.audit.engine)
        try:
            with TestClient(create_app(store)) as api:
                yield Setup(router, outbox, ris, hook, api, keys,
                            ApprovalReleaser(approvals, outbox, router.audit, router.pipeline.orders),
                            DraftSender(approvals, outbox, router.pipeline.orders))
        finally:
            outbox.close()
            store.close()
            ris.stop()
            hook.stop()


def _critical_study(s: Setup, seed: int) -> str:
    """Process one phantom study with an order; its tracking UID (from the API's worklist)."""
    datasets, truth = phantom.generate_study(seed, lesion=True, slices=17, rows=256, cols=256)
    head = datasets[0]
    s.router.pipeline.orders.upsert(Order(
        accession=str(head.AccessionNumber) or f"ACC-{seed}", patient_id=str(head.PatientID),
        study_uid=truth.study_instance_uid, placer_order_number=f"PL-{seed}", procedure_code="CTHEAD",
        procedure_description="CT head", modality="CT", priority="R"))
    for ds in datasets:
        s.router.spool.store(part10(ds))
    assert s.router.process_due() == 1
    study = s.api.get(f"/api/v1/studies/{truth.study_instance_uid}", headers=s.as_("reader")).json()
    return str(study["results"][0]["tracking_uid"])


def _gauge(name: str, use_case: str) -> float:
    value = metrics.REGISTRY.get_sample_value(name, {"use_case": use_case})
    assert value is not None
    return value


def test_held_until_a_reader_approves_then_released_exactly_once(setup):
    s = setup
    tracking = _critical_study(s, 71)
    s.releaser.poll(s.router.pipeline.config)
    s.deliver()
    # Held: nothing reached the RIS or the webhook, no worklist flag; the SR is queued for the PACS all the same.
    assert s.ris.messages == [] and s.hook.requests == []
    assert not s.router.pipeline.orders.worklist()[0].ai_critical
    assert s.outbox.counts("dicom") == {"pending": 1}
    assert s.outbox.counts("hl7") == {} and s.outbox.counts("webhook") == {}
    assert _gauge("pacsflow_approvals_pending", "ich-triage") == 1
    assert _gauge("pacsflow_approval_oldest_age_seconds", "ich-triage") >= 0

    (listed,) = s.api.get("/api/v1/approvals", headers=s.as_("reader")).json()
    assert listed["tracking_uid"] == tracking and listed["use_case"] == "ich-triage"
    assert s.api.get("/api/v1/approvals", headers=s.as_("integration")).status_code == 403
    url = f"/api/v1/results/{tracking}/approve"
    assert s.api.post(url, headers=s.as_("reader")).status_code == 409, "reveal first"
    for role in ("integration", "admin"):
        s.api.post(f"/api/v1/results/{tracking}/reveal", headers=s.as_(role))
        answer = s.api.post(url, headers=s.as_(role))
        assert answer.status_code == 403 and answer.headers["content-type"] == "application/problem+json"
    assert s.api.post(f"/api/v1/results/{tracking}/reveal", headers=s.as_("reader")).status_code == 200
    approved = s.api.post(url, headers=s.as_("reader"), json={"comment": "bleed confirmed"})
    assert approved.status_code == 200 and approved.json()["state"] == "approved" and approved.json()["recorded"]
    reader_id = s.keys["reader"].split(".")[0]
    assert approved.json()["decided_by"] == reader_id
    again = s.api.post(url, headers=s.as_("reader"))
    assert again.status_code == 200 and again.json()["recorded"] is False, "a repeat changes nothing"
    s.api.post(f"/api/v1/results/{tracking}/reveal", headers=s.as_("reader2"))
    assert s.api.post(f"/api/v1/results/{tracking}/reject", headers=s.as_("reader2")).status_code == 409, \
        "the first decision stands"

    assert s.ris.messages == [], "nothing moves before the router polls"
    assert s.api.get("/api/v1/approvals", headers=s.as_("clinical-lead")).json() == [], "decided: no longer listed"
    assert s.releaser.poll(s.router.pipeline.config) == 1
    s.deliver()
    assert s.hl7_kinds() == ["alert", "order-update"] and len(s.hook.delivered()) == 1
    assert s.router.pipeline.orders.worklist()[0].ai_critical
    assert _gauge("pacsflow_approvals_pending", "ich-triage") == 0
    assert _gauge("pacsflow_approval_oldest_age_seconds", "ich-triage") == 0

    # Exactly once: more polls, and a release repeated as after a crash between queueing and marking "released".
    s.releaser.poll(s.router.pipeline.config)
    row = _held(s, tracking)
    assert row["state"] == "released" and row["decided_by"] == reader_id and row["decided_at"] is not None
    assert s.releaser.release(s.router.pipeline.config, s.router.pipeline.config.use_cases[0], row) == []
    s.deliver()
    assert s.hl7_kinds() == ["alert", "order-update"] and len(s.hook.delivered()) == 1
    events = [e for e in s.router.audit.events() if e["destination"] == "approval"]
    assert [e["outcome"] for e in events] == ["released"] and reader_id in events[0]["detail"]


def _held(s: Setup, tracking: str) -> dict[str, Any]:
    from sqlalchemy import select

    from pacsflow_router.results.schema import APPROVALS
    key = s.router.pipeline.results.result(tracking)["result_key"]
    with s.router.audit.engine.connect() as conn:
        return dict(conn.execute(select(APPROVALS).where(APPROVALS.c.result_key == key)).one()._mapping)


def test_a_rejected_result_is_never_sent(setup):
    s = setup
    tracking = _critical_study(s, 72)
    s.api.post(f"/api/v1/results/{tracking}/reveal", headers=s.as_("clinical-lead"))
    rejected = s.api.post(f"/api/v1/results/{tracking}/reject", headers=s.as_("clinical-lead"))
    assert rejected.status_code == 200 and rejected.json()["state"] == "rejected"
    assert s.releaser.poll(s.router.pipeline.config) == 1
    s.releaser.poll(s.router.pipeline.config)
    s.deliver()
    assert s.ris.messages == [] and s.hook.requests == []
    assert not s.router.pipeline.orders.worklist()[0].ai_critical
    assert s.outbox.counts("hl7") == {} and s.outbox.counts("webhook") == {}
    assert _held(s, tracking)["state"] == "dropped"
    s.api.post(f"/api/v1/results/{tracking}/reveal", headers=s.as_("reader"))
    assert s.api.post(f"/api/v1/results/{tracking}/approve", headers=s.as_("reader")).status_code == 409


def test_the_draft_goes_out_as_an_oru_only_after_accept_and_once(setup):
    s = setup
    tracking = _critical_study(s, 73)
    s.api.post(f"/api/v1/results/{tracking}/reveal", headers=s.as_("reader"))
    s.api.post(f"/api/v1/results/{tracking}/approve", headers=s.as_("reader"))
    s.releaser.poll(s.router.pipeline.config)
    assert s.drafts.poll(s.router.pipeline.config) == 0, "no draft before an accept"
    s.api.post(f"/api/v1/results/{tracking}/feedback", headers=s.as_("reader"), json={"verdict": "reject"})
    assert s.drafts.poll(s.router.pipeline.config) == 0, "a reject sends no draft"
    s.deliver()
    assert s.hl7_kinds() == ["alert", "order-update"]

    accepted = s.api.post(f"/api/v1/results/{tracking}/feedback", headers=s.as_("reader"),
                          json={"verdict": "accept"})
    assert accepted.status_code == 201
    assert s.drafts.poll(s.router.pipeline.config) == 1
    s.api.post(f"/api/v1/results/{tracking}/reveal", headers=s.as_("reader2"))
    s.api.post(f"/api/v1/results/{tracking}/feedback", headers=s.as_("reader2"), json={"verdict": "accept"})
    assert s.drafts.poll(s.router.pipeline.config) == 0, "a second accept sends nothing more"
    s.deliver()
    assert s.hl7_kinds() == ["alert", "draft-report", "order-update"]

    oru = next(hl7.parse(m.decode()) for m in s.ris.messages if b"draft-report" in m)
    assert str(oru.segment("MSH")(9)) == "ORU^R01^ORU_R01" and str(oru.segment("OBR")(25)) == "P"
    obx = oru.segments("OBX")
    assert {str(o(2)) for o in obx} == {"TX"} and {str(o(11)) for o in obx} == {"P"}
    text = "\n".join(oru.unescape(str(o(5))) for o in obx)
    expected = s.api.get(f"/api/v1/studies/{s.router.pipeline.results.result(tracking)['study_uid']}/draft",
                         headers=s.as_("reader")).json()["text"]
    assert text.strip() == expected.strip() and text.startswith("DRAFT - AI-GENERATED")
    assert str(oru.segment("ORC")(2)) == "PL-73", "stated with the study's order"


def test_the_running_router_releases_what_a_reader_approves_in_the_api(tmp_path):
    """RouterService with its own threads (pipeline, review poller, outbox sender) and the API on the same store."""
    from pacsflow_router.config import parse_config
    from pacsflow_router.service import RouterService
    from tests.peers.net import eventually
    from tests.peers.router import router_config

    ris, hook = MllpReceiver(free_port()).start(), HttpReceiver()
    config = parse_config(router_config(
        workdir=tmp_path, port=free_port(), metrics_port=free_port(), pacs_port=None, stable_seconds=0.5,
        use_cases=[{"name": "ich-triage", **ALWAYS, "mode": "triage",
                    "triage": {"criticalThreshold": 0.0, "requireApproval": True},
                    "outputs": {"webhooks": ["worklist-api"],
                                "hl7": {"destination": "ris", "messages": ["alert", "draft-report"]}}}],
        hl7Destinations=[{"name": "ris", "host": "127.0.0.1", "port": ris.port, "timeoutSeconds": 5}],
        webhooks=[{"name": "worklist-api", "url": hook.url}]))
    service = RouterService(config)
    store = ResultsStore(config.audit.url)
    try:
        service.start()
        datasets, truth = phantom.generate_study(74, lesion=True, slices=17, rows=256, cols=256)
        for ds in datasets:
            service.spool.store(part10(ds))
        reader = {"X-API-Key": store.create_api_key("reader")[1]}
        with TestClient(create_app(store)) as api:
            study = eventually(lambda: api.get(f"/api/v1/studies/{truth.study_instance_uid}", headers=reader)
                               if store.study_results(study_uid=truth.study_instance_uid) else None,
                               "the study's result in the store", timeout=120)
            tracking = study.json()["results"][0]["tracking_uid"]
            eventually(lambda: metrics.REGISTRY.get_sample_value("pacsflow_approvals_pending",
                                                                 {"use_case": "ich-triage"}) == 1,
                       "one approval pending", timeout=10)
            time.sleep(1.5)  # the review thread and the outbox have had their rounds: nothing may have gone out
            assert ris.messages == [] and hook.requests == []
            api.post(f"/api/v1/results/{tracking}/reveal", headers=reader)
            assert api.post(f"/api/v1/results/{tracking}/approve", headers=reader).status_code == 200
            eventually(lambda: len(ris.messages) == 1 and len(hook.delivered()) == 1, "released", timeout=20)
            assert api.post(f"/api/v1/results/{tracking}/feedback", headers=reader,
                            json={"verdict": "accept"}).status_code == 201
            eventually(lambda: len(ris.messages) == 2, "the accepted draft sent", timeout=20)
            time.sleep(2.5)
        assert len(ris.messages) == 2 and len(hook.delivered()) == 1, "each exactly once"
        assert b"draft-report" in ris.messages[1] and b"ORU^R01" in ris.messages[1]
        assert metrics.REGISTRY.get_sample_value("pacsflow_approvals_pending", {"use_case": "ich-triage"}) == 0
    finally:
        service.stop()
        service.audit.close()
        service.spool.close()
        store.close()
        ris.stop()
        hook.stop()
