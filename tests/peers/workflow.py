"""One study's clinical life around a real router process, for the e2e tests, the demo and the benchmark.

The peers are independent implementations: HAPI HL7v2 (Java) sends the order and is the RIS that receives pacsflow's
order update and alert; dcmtk ``storescu`` sends the images and ``findscu -W`` reads pacsflow's worklist; npm
``dcmjs-dimse`` plays the modality's MPPS; Orthanc is the PACS that stores the SR; a local HTTP server is the
webhook (a vendor worklist API). Everything started here is stopped by PID.

Steps: :func:`order_for` (the RIS order of a phantom study) -> :meth:`Workflow.send_order` -> :meth:`send_images`
-> :meth:`mpps_completed` -> :meth:`worklist_item` / ``ris.records()`` / ``hooks.alerts()``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from pacsflow_router.models import phantom

from . import hapi, modality
from .dcmtk import storescu
from .hl7msgs import OrderMessage
from .orthanc import Orthanc
from .router import RouterProcess, free_port, router_config
from .webhook import HttpReceiver
from .worklist import findscu_worklist

HMAC_KEY = b"demo-shared-secret-not-for-production"
AI_PREFIX = "[AI: Critical Finding Suspected]"
WORKLIST_KEYS = ("AccessionNumber", "PatientID", "RequestedProcedurePriority", "RequestedProcedureDescription",
                 "ScheduledProcedureStepSequence[0].Modality", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepDescription")


@dataclass(frozen=True)
class PhantomStudy:
    """A phantom head CT written to disk, with what its order and its MPPS need."""

    paths: list[str]
    accession: str
    patient_id: str
    study_uid: str
    instances: list[tuple[str, str, str]]
    """(Series Instance UID, SOP Class UID, SOP Instance UID) of every image: the MPPS's Performed Series."""
    lesion: bool


def phantom_study(directory: Path, seed: int, *, lesion: bool, slices: int = 16,
                  hemorrhage: str | None = None) -> PhantomStudy:
    """Write a phantom head CT (``hemorrhage``: its type, else drawn from the seed) and read back the identifiers
    its order and MPPS carry."""
    paths, truth = phantom.write_study(directory, seed, lesion=lesion, slices=slices, hemorrhage=hemorrhage)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    head = headers[0]
    return PhantomStudy([str(p) for p in paths], str(head.AccessionNumber), str(head.PatientID),
                        truth.study_instance_uid,
                        [(str(h.SeriesInstanceUID), str(h.SOPClassUID), str(h.SOPInstanceUID)) for h in headers],
                        lesion)


def order_for(study: PhantomStudy, seed: int, *, priority: str = "R", patient_class: str = "E") -> OrderMessage:
    """The RIS's new order (ORC-1 NW) for ``study``: same accession, patient ID and Study Instance UID (ZDS-1)."""
    return OrderMessage(control_id=f"ORD{seed:08d}", accession=study.accession, patient_id=study.patient_id,
                        study_uid=study.study_uid, placer_order_number=f"PL{seed}", filler_order_number=f"FI{seed}",
                        requested_procedure_id=f"RP{seed}", priority=priority, patient_class=patient_class)


def workflow_use_case(mode: str = "triage", *, critical_threshold: float = 0.85,
                      decision_threshold: float | None = None) -> dict[str, Any]:
    """``ich_detector`` on head CT with every output: SR to the PACS, HL7 order update + alert, the webhook."""
    use_case: dict[str, Any] = {
        "name": f"ich-{mode}", "model": {"name": "ich_detector", "version": 2}, "mode": mode,
        "match": {"modalities": ["CT"]}, "triage": {"criticalThreshold": critical_threshold},
        "outputs": {"structuredReport": {"destination": "pacs"},
                    "hl7": {"destination": "ris", "messages": ["order-update", "alert"]},
                    "webhooks": ["worklist-api"]},
    }
    if decision_threshold is not None:
        use_case["decisionThreshold"] = decision_threshold
    return use_case


@dataclass
class Workflow:
    """The running router and its peers."""

    router: RouterProcess
    pacs: Orthanc
    ris: hapi.HapiReceiver
    hooks: HttpReceiver
    hl7_port: int
    http_port: int

    def send_order(self, order: OrderMessage, kind: str = "orm231") -> dict[str, Any]:
        """Send the order over MLLP with HAPI's client; its ACK as a dict (``ack``: MSA-1)."""
        (answer,) = hapi.send(self.hl7_port, [order.encoded(kind)])
        return answer

    def send_images(self, study: PhantomStudy) -> None:
        result = storescu(self.router.port, study.paths)
        if len(result.acknowledged) != len(study.paths):
            raise AssertionError(f"storescu: {len(result.acknowledged)}/{len(study.paths)} acknowledged")

    def mpps_in_progress(self, study: PhantomStudy, uid: str) -> None:
        (created,) = modality.send(self.router.port, [modality.n_create(uid, [study.study_uid])])
        assert created.status == 0, f"MPPS N-CREATE answered {created.status:#06x}"

    def mpps_completed(self, study: PhantomStudy, uid: str, *, created: bool = True) -> float:
        """N-SET COMPLETED listing every image (after an N-CREATE on the same association unless ``created``);
        returns the wall-clock time the modality got the last answer (stamped by the modality as it arrived, before
        the association's release and the process's exit)."""
        requests = [modality.n_set(uid, "COMPLETED", study.instances)]
        if not created:
            requests.insert(0, modality.n_create(uid, [study.study_uid]))
        answers = modality.send(self.router.port, requests)
        assert [a.status for a in answers] == [0] * len(requests), f"MPPS answered {answers}"
        received_at = answers[-1].received_at
        return time.time() if received_at is None else received_at

    def worklist_item(self, accession: str) -> Dataset | None:
        """The item ``findscu -W`` gets from pacsflow's worklist for ``accession`` (None: not listed)."""
        answer = findscu_worklist(self.router.port, [f"AccessionNumber={accession}",
                                                     *(k for k in WORKLIST_KEYS if k != "AccessionNumber")])
        assert answer.success, f"findscu -W: {answer.final}\n{answer.output[-2000:]}"
        return answer.items[0] if answer.items else None


def workflow_config(workdir: Path, *, pacs_port: int, ris_port: int, webhook_url: str, secret_file: Path,
                    use_cases: list[dict[str, Any]], hl7_port: int, http_port: int,
                    stable_seconds: float = 600.0, mpps: bool = True) -> dict[str, Any]:
    """A routing config with every clinical edge on loopback; ``stableSeconds`` is long so that MPPS completes
    (``mpps=False``: no MPPS SCP, only the stable window completes a study)."""
    return router_config(
        workdir=workdir, port=free_port(), metrics_port=free_port(), pacs_port=pacs_port, use_cases=use_cases,
        stable_seconds=stable_seconds,
        hl7Listener={"port": hl7_port, "httpPort": http_port},
        hl7Destinations=[{"name": "ris", "host": "127.0.0.1", "port": ris_port, "version": "2.3.1",
                          "receivingApplication": "RIS", "timeoutSeconds": 5}],
        webhooks=[{"name": "worklist-api", "url": webhook_url, "secretFile": str(secret_file), "timeoutSeconds": 5}],
        mpps={"enabled": mpps},
    )


@contextmanager
def running_workflow(workdir: Path, use_cases: list[dict[str, Any]], *, start_ris: bool = True,
                     webhook_statuses: list[int] | None = None, stable_seconds: float = 600.0,
                     mpps: bool = True) -> Iterator[Workflow]:
    """Orthanc, the HAPI RIS receiver (unless ``start_ris`` is False: the test starts it later), the webhook
    receiver and the router; all stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret = workdir / "webhook-hmac-key"
    secret.write_bytes(HMAC_KEY)
    with ExitStack() as stack:
        pacs = Orthanc(workdir / "orthanc").start()
        stack.callback(pacs.stop)
        ris = hapi.HapiReceiver(workdir / "ris-received.jsonl")
        if start_ris:
            ris.start()
        stack.callback(ris.stop)
        hooks = HttpReceiver(webhook_statuses)
        stack.callback(hooks.stop)
        hl7_port, http_port = free_port(), free_port()
        router = RouterProcess(workdir / "router", workflow_config(
            workdir / "router", pacs_port=pacs.dicom_port, ris_port=ris.port, webhook_url=hooks.url,
            secret_file=secret, use_cases=use_cases, hl7_port=hl7_port, http_port=http_port,
            stable_seconds=stable_seconds, mpps=mpps))
        stack.callback(router.stop)
        router.start()
        yield Workflow(router, pacs, ris, hooks, hl7_port, http_port)
