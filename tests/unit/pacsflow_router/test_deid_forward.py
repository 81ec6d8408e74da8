"""Sending a series to an external AI (deid/forward.py): de-identified into the durable outbox, burned-in images
left out and audited, and nothing without Patient Identity Removed YES let through to an external destination."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from pacsflow_router.config import UseCase
from pacsflow_router.deid.forward import ExternalOnly, ExternalSender, NotDeidentifiedError
from pacsflow_router.deid.pseudonyms import PseudonymStore
from pacsflow_router.results.audit import AuditLog
from pacsflow_router.results.export import Outbox
from tests.unit.pacsflow_router.realinputs import load, phantom_datasets, write

USE_CASE = UseCase.model_validate({"name": "ich-external", "model": {"name": "ich_detector", "version": 2},
                                   "external": {"destination": "vendor"}})


def test_series_goes_out_deidentified_and_burned_in_images_stay(tmp_path: Path) -> None:
    slices, truth = phantom_datasets(4, slices=3, size=32)
    slices[1].BurnedInAnnotation = "YES"
    paths = write(slices, tmp_path / "study")
    study = load(paths, truth.study_instance_uid)
    outbox = Outbox(tmp_path / "outbox", lambda name: pytest.fail("nothing is sent in this test"))
    audit = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}")
    store = PseudonymStore(tmp_path / "pseudonyms.db", b"forward-test-key" * 3)
    outcome = ExternalSender(store, outbox, audit).send(study, study.series[0], USE_CASE)
    assert outcome == "sent-external"
    assert outbox.pending("dicom") == 2
    queued = [pydicom.dcmread(p) for p in sorted((tmp_path / "outbox").rglob("*.dcm"))]
    assert {ds.PatientIdentityRemoved for ds in queued} == {"YES"}
    assert not {ds.StudyInstanceUID for ds in queued} & {truth.study_instance_uid}
    assert store.study(queued[0].StudyInstanceUID) is not None  # recorded before it was queued
    (record,) = audit.records(study_key=study.ref.key)
    assert record["outcome"].startswith("sent-external: 2 instance(s) de-identified, 1 refused (")
    assert "Burned In Annotation is YES" in record["outcome"]


def test_external_destination_refuses_what_is_not_deidentified() -> None:
    sent: list[object] = []

    class Recorder:
        def send(self, ds: pydicom.Dataset) -> int:
            sent.append(ds)
            return 0

    guard = ExternalOnly(Recorder(), "vendor")
    plain = pydicom.Dataset()
    plain.PatientName = "Doe^Jane"
    with pytest.raises(NotDeidentifiedError, match="destination vendor is external"):
        guard.send(plain)
    assert sent == []
    plain.PatientIdentityRemoved = "YES"
    assert guard.send(plain) == 0 and sent == [plain]
