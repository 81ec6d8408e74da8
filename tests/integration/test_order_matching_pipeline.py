"""Use cases narrowed by the study's order, and the audit's record of the order and how the study completed.

Real pipeline (spool -> embedded ONNX Runtime), the order in the real order store: an emergency-only use case runs on
the study whose order says patient class E, is "not applicable" (audited, with the criterion) on an outpatient's
study and on a study without an order, while a use case without order criteria runs on all three.
"""

from __future__ import annotations

import time

import pytest

from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.domain import Order, study_key
from pacsflow_router.models import phantom
from pacsflow_router.workflow.orders import OrderStore
from tests.peers.dicomfiles import part10
from tests.peers.inprocess import MODEL_REPOSITORY, in_process_router


def _use_case(name: str, match: dict) -> dict:
    return {"name": name, "model": {"name": "ich_detector", "version": 2}, "mode": "assistive",
            "match": {"modalities": ["CT"], **match}}


@pytest.fixture
def router(tmp_path):
    use_cases = [_use_case("ich-ed", {"patientClasses": ["E"], "orderingLocationPattern": "^ED"}),
                 _use_case("ich-all", {})]
    with in_process_router(tmp_path, use_cases, EmbeddedOnnxBackend(MODEL_REPOSITORY)) as r:
        r.pipeline.orders = OrderStore(r.spool, r.audit.engine)
        yield r


def _records(router) -> dict[tuple[str, str], dict]:
    return {(r["study_key"], r["use_case"]): r for r in router.audit.records()}


def test_order_criteria_select_studies_and_the_audit_names_order_and_completion(router):
    store: OrderStore = router.pipeline.orders
    keys, heads = {}, {}
    for seed, patient_class, location in ((71, "E", "ED^BAY1"), (72, "O", "OPD^1"), (73, None, None)):
        datasets, truth = phantom.generate_study(seed, lesion=False, slices=9, rows=256, cols=256)
        head = datasets[0]
        if patient_class is not None:
            # Matched by accession + patient ID (the order carries no Study Instance UID), as from many RIS.
            store.upsert(Order(accession=str(head.AccessionNumber), patient_id=str(head.PatientID),
                               patient_class=patient_class, location=location, modality="CT"))
        for ds in datasets:
            router.spool.store(part10(ds))
        keys[seed] = study_key(truth.study_instance_uid)
        heads[seed] = (str(head.AccessionNumber), str(head.PatientID))
    assert router.process_due() == 3

    records = _records(router)
    ed, outpatient, unordered = keys[71], keys[72], keys[73]
    assert not records[(ed, "ich-ed")]["outcome"].startswith("not applicable")
    assert records[(outpatient, "ich-ed")]["outcome"] == (
        "not applicable: the order's patient class is not one of ['E']")
    assert records[(unordered, "ich-ed")]["outcome"].startswith("not applicable: the use case selects studies by")
    for key in (ed, outpatient, unordered):
        assert not records[(key, "ich-all")]["outcome"].startswith("not applicable")
    # The order's key (never its accession number) and how the study completed are in every record.
    ed_order = store.find_for_study("", *heads[71])
    assert ed_order is not None and heads[71][0]
    assert records[(ed, "ich-all")]["inputs"]["order"] == ed_order.key
    assert records[(unordered, "ich-all")]["inputs"]["order"] is None
    assert all(r["inputs"]["completion"] == "stable-window" for r in records.values())
    # The order matched by accession + patient ID is linked to its study: found by the UID, never expired.
    assert ed_order.study_uid and store.find_for_study(ed_order.study_uid, "", "") == ed_order
    assert store.expire(now=time.time() + 10 * 86400, max_age_seconds=3600) == 0

