"""A results store seeded with real pipeline results: phantom CT studies through the in-process router (spool ->
embedded ONNX Runtime -> review_results), for the API and browser tests."""

from __future__ import annotations

from pathlib import Path

from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.domain import Order
from pacsflow_router.models import phantom
from pacsflow_router.workflow.orders import OrderStore
from tests.peers.dicomfiles import part10
from tests.peers.inprocess import MODEL_REPOSITORY, in_process_router

#: One use case per mode the panel treats differently: readers see triage, clinical leads also silent.
USE_CASES = [
    {"name": "ich-triage", "model": {"name": "ich_detector", "version": 2}, "mode": "triage",
     "match": {"modalities": ["CT"]}, "triage": {"criticalThreshold": 0.5},
     "outputs": {"structuredReport": {"destination": "pacs"}}},
    {"name": "ich-silent", "model": {"name": "ich_detector", "version": 2}, "mode": "silent",
     "match": {"modalities": ["CT"]}},
]


def seed_store(tmp_path: Path, studies: dict[int, tuple[bool, str]]) -> tuple[str, dict[int, dict[str, str]]]:
    """Run the pipeline on one phantom study per seed and return (store URL, per seed: study_uid, accession).

    Parameters
    ----------
    studies : dict
        seed -> (lesion, HL7 order priority) of each study.
    """
    facts: dict[int, dict[str, str]] = {}
    with in_process_router(tmp_path, USE_CASES, EmbeddedOnnxBackend(MODEL_REPOSITORY)) as router:
        router.pipeline.orders = OrderStore(router.spool, router.audit.engine)
        for seed, (lesion, priority) in studies.items():
            datasets, truth = phantom.generate_study(seed, lesion=lesion, slices=17, rows=256, cols=256)
            head = datasets[0]
            accession = str(head.AccessionNumber) or f"ACC-{seed}"
            router.pipeline.orders.upsert(Order(
                accession=accession, patient_id=str(head.PatientID), study_uid=truth.study_instance_uid,
                procedure_description="CT head without contrast", modality="CT", priority=priority))
            for ds in datasets:
                router.spool.store(part10(ds))
            facts[seed] = {"study_uid": truth.study_instance_uid, "accession": accession}
        router.process_due()
        url = str(router.audit.engine.url)
    return url, facts
