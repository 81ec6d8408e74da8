"""A modality's MPPS SCU played by dcmjs-dimse (Node.js), an independent DIMSE implementation (tests/peers/modality.js).

``scripts/install-node-peers.sh`` (``make node-peers``) installs dcmjs-dimse into ``${PACSFLOW_CACHE}/node``; a missing
install is a failure naming the command, never a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).with_name("modality.js")
MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"


def node_modules() -> Path:
    """Where ``scripts/install-node-peers.sh`` put dcmjs-dimse."""
    cache = Path(os.environ.get("PACSFLOW_CACHE") or Path.home() / ".cache" / "pacsflow")
    path = cache / "node" / "node_modules"
    if not (path / "dcmjs-dimse").is_dir():
        raise FileNotFoundError(f"dcmjs-dimse is not installed under {path}: run `make node-peers`")
    return path


@dataclass(frozen=True)
class Response:
    """One N-CREATE/N-SET response as the modality saw it."""

    op: str
    uid: str
    status: int
    error_comment: str | None
    error_id: int | None
    received_at: float | None = None
    """Wall clock (``time.time()`` seconds) when the modality got this answer, before the association's release."""


@dataclass(frozen=True)
class Request:
    """One MPPS message: ``op`` is ``create`` or ``set``; ``dataset`` in dcmjs's naturalized JSON form."""

    op: str
    uid: str
    dataset: dict[str, Any]


def instance_refs(instances: Iterable[tuple[str, str, str]]) -> list[dict[str, Any]]:
    """Performed Series Sequence items for ``(series UID, SOP Class UID, SOP Instance UID)`` triples."""
    series: dict[str, list[dict[str, str]]] = {}
    for series_uid, sop_class, sop_uid in instances:
        series.setdefault(series_uid, []).append(
            {"ReferencedSOPClassUID": sop_class, "ReferencedSOPInstanceUID": sop_uid})
    return [{"SeriesInstanceUID": uid, "SeriesDescription": "", "PerformingPhysicianName": "",
             "OperatorsName": "", "ProtocolName": "", "RetrieveAETitle": "",
             "ReferencedImageSequence": refs, "ReferencedNonImageCompositeSOPInstanceSequence": []}
            for uid, refs in series.items()]


def n_create(uid: str, study_uids: Sequence[str], *, modality: str = "CT", status: str = "IN PROGRESS",
             listed: Iterable[tuple[str, str, str]] = ()) -> Request:
    """An N-CREATE as a modality sends it when acquisition starts (PS3.4 F.7.2.1, the Type 1/2 attributes)."""
    return Request("create", uid, {
        "ScheduledStepAttributesSequence": [
            {"StudyInstanceUID": s, "AccessionNumber": "", "RequestedProcedureID": "",
             "ScheduledProcedureStepID": "", "ScheduledProcedureStepDescription": "",
             "RequestedProcedureDescription": ""} for s in study_uids],
        "PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "",
        "PerformedProcedureStepID": "PPS1", "PerformedStationAETitle": "CT_ED_1", "PerformedStationName": "",
        "PerformedLocation": "", "PerformedProcedureStepStartDate": "20260101",
        "PerformedProcedureStepStartTime": "120000", "PerformedProcedureStepStatus": status,
        "PerformedProcedureStepDescription": "", "PerformedProcedureTypeDescription": "",
        "PerformedProcedureStepEndDate": "", "PerformedProcedureStepEndTime": "",
        "Modality": modality, "StudyID": "", "PerformedSeriesSequence": instance_refs(listed),
    })


def n_set(uid: str, status: str | None, listed: Iterable[tuple[str, str, str]] | None = None) -> Request:
    """An N-SET: the final status (COMPLETED / DISCONTINUED) with the Performed Series Sequence, as at the end of
    acquisition (PS3.4 F.7.2.2); ``status=None`` leaves the status out, ``listed=None`` the sequence."""
    dataset: dict[str, Any] = {}
    if status is not None:
        dataset["PerformedProcedureStepStatus"] = status
        dataset["PerformedProcedureStepEndDate"] = "20260101"
        dataset["PerformedProcedureStepEndTime"] = "121000"
    if listed is not None:
        dataset["PerformedSeriesSequence"] = instance_refs(listed)
    return Request("set", uid, dataset)


def send(port: int, requests: Sequence[Request], *, called: str = "PACSFLOW", calling: str = "CT_ED_1",
         host: str = "127.0.0.1", timeout: float = 60) -> list[Response]:
    """Send ``requests`` over one association with dcmjs-dimse and return the responses in request order.

    Raises
    ------
    RuntimeError
        The association failed (rejected, refused, network error), with the peer's message.
    """
    spec = {"host": host, "port": port, "calling": calling, "called": called,
            "requests": [{"op": r.op, "uid": r.uid, "dataset": r.dataset} for r in requests]}
    proc = subprocess.run(["node", str(SCRIPT)], input=json.dumps(spec), capture_output=True, text=True,
                          timeout=timeout, check=False,
                          env={**os.environ, "NODE_PATH": str(node_modules()), "TCP_NODELAY": "1"})
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"modality.js exited {proc.returncode}: {proc.stderr[-2000:]}") from None
    if "error" in out:
        raise RuntimeError(f"modality.js: {out['error']}")
    responses = []
    for r in out["responses"]:
        if r is None:
            raise RuntimeError(f"modality.js got no response for a request: {proc.stderr[-2000:]}")
        responses.append(Response(r["op"], r["uid"], int(r["status"]), r["errorComment"],
                                  None if r["errorId"] is None else int(r["errorId"]), r.get("receivedAt")))
    return responses
