"""Late instances through the real pipeline (spool -> tracker -> embedded ONNX Runtime -> SR -> outbox -> audit).

An instance that arrives after a study's result re-opens it; the use case whose series it changes runs again and
its result is an amended SR (new SOP Instance UID, Predecessor Documents Sequence, same Tracking UID), linked to
the first in the audit. A re-sent instance changes nothing. The outbox is not started: the queued SR files are
what would be delivered (the e2e test counts deliveries at a real Orthanc).
"""

from __future__ import annotations

import copy
import time

import pydicom
import pytest

from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.domain import study_key
from pacsflow_router.models import phantom
from tests.peers.dicomfiles import part10
from tests.peers.inprocess import MODEL_REPOSITORY, in_process_router
from tests.peers.srcheck import check_sr
from tests.peers.srcontent import evidence_uids, tracking_uid


@pytest.fixture
def router(tmp_path):
    use_cases = [
        {"name": "ich-assist", "model": {"name": "ich_detector", "version": 1}, "mode": "assistive",
         "match": {"modalities": ["CT"]}, "outputs": {"structuredReport": {"destination": "pacs"}}},
        {"name": "ich-silent", "model": {"name": "ich_detector", "version": 1}, "mode": "silent",
         "match": {"modalities": ["CT"]}},
    ]
    with in_process_router(tmp_path, use_cases, EmbeddedOnnxBackend(MODEL_REPOSITORY)) as r:
        yield r


def test_late_slice_gives_one_amended_sr_and_a_resent_one_none(router, tmp_path):
    spool, tracker, audit = router.spool, router.tracker, router.audit
    datasets, truth = phantom.generate_study(41, lesion=True, slices=17, rows=256, cols=256)
    for ds in datasets[:16]:
        spool.store(part10(ds))
    assert router.process_due() == 1
    (first,) = router.queued()
    key = study_key(truth.study_instance_uid)
    assert [r["revision"] for r in audit.records(study_key=key)] == [0, 0]

    # A re-sent instance (same SOP Instance UID) is a duplicate: nothing re-opens, nothing is re-sent.
    assert spool.store(part10(datasets[3])).duplicate
    assert router.process_due() == 0

    late = spool.store(part10(datasets[16]))
    assert late.late
    assert router.process_due() == 1
    first_again, amended = router.queued()
    assert first_again.SOPInstanceUID == first.SOPInstanceUID
    assert amended.SOPInstanceUID != first.SOPInstanceUID
    (pred_study,) = amended.PredecessorDocumentsSequence
    (pred_series,) = pred_study.ReferencedSeriesSequence
    assert pred_series.SeriesInstanceUID == first.SeriesInstanceUID
    assert pred_series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert tracking_uid(amended) == tracking_uid(first)
    # The amended SR covers the late slice: it is in the evidence the SR lists.
    late_uid = str(datasets[16].SOPInstanceUID)
    assert late_uid in evidence_uids(amended) and late_uid not in evidence_uids(first)
    amended.save_as(tmp_path / "amended.dcm", enforce_file_format=True)
    check = check_sr(tmp_path / "amended.dcm")
    assert check.ok, check.errors

    records = {(r["use_case"], r["revision"]): r for r in audit.records(study_key=key)}
    assert set(records) == {("ich-assist", 0), ("ich-assist", 1), ("ich-silent", 0), ("ich-silent", 1)}
    assert records[("ich-assist", 1)]["amends_sr_key"] == records[("ich-assist", 0)]["sr_key"] == \
        study_key(str(first.SOPInstanceUID))
    assert records[("ich-assist", 1)]["sr_key"] == study_key(str(amended.SOPInstanceUID))
    assert records[("ich-assist", 1)]["outcome"] == "reported-amended"
    assert records[("ich-silent", 1)]["sr_key"] is None and records[("ich-silent", 1)]["amends_sr_key"] is None
    assert tracker.is_finished(truth.study_instance_uid)

    # A crash after the amendment was queued repeats it as a no-op: same SR, same audit rows.
    ref = tracker.due(time.time() + 1, 0)
    assert ref == []
    spool.execute("UPDATE studies SET finished_at = NULL")
    assert router.process_due() == 1
    assert len(router.queued()) == 2 and len(audit.records(study_key=key)) == 4


def test_late_instance_of_another_series_amends_nothing(router):
    spool, tracker, audit = router.spool, router.tracker, router.audit
    datasets, truth = phantom.generate_study(42, lesion=False, slices=16, rows=256, cols=256)
    for ds in datasets:
        spool.store(part10(ds))
    assert router.process_due() == 1
    # A localizer (one image, another series) arrives late: the analysed series is unchanged.
    extra, _ = phantom.generate_study(43, lesion=False, slices=1, rows=256, cols=256,
                                      study_instance_uid=truth.study_instance_uid)
    extra[0].SeriesInstanceUID = pydicom.uid.generate_uid()
    extra[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert spool.store(part10(extra[0])).late
    assert router.process_due() == 1  # re-opened and looked at ...
    assert len(router.queued()) == 1  # ... but nothing amended
    assert [r["revision"] for r in audit.records(study_key=study_key(truth.study_instance_uid))] == [0, 0]
    assert tracker.is_finished(truth.study_instance_uid)


def test_late_series_makes_a_not_applicable_study_eligible(router):
    """A study that had nothing for the use case gets its first (not amended) result when a matching series comes."""
    spool, tracker, audit = router.spool, router.tracker, router.audit
    datasets, truth = phantom.generate_study(44, lesion=True, slices=16, rows=256, cols=256)
    other = copy.deepcopy(datasets[0])  # update() would share the elements, and the edits below with them
    other.Modality = "MR"  # the use cases match CT only
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    spool.store(part10(other))
    assert router.process_due() == 1
    assert tracker.outcome(truth.study_instance_uid, "ich-assist") == "not-applicable"
    assert router.queued() == []

    stored = [spool.store(part10(ds)) for ds in datasets]
    assert [s.late for s in stored] == [True] + [False] * 15, "the first re-opens the study, the rest join it"
    assert router.process_due() == 1
    (sr,) = router.queued()
    assert "PredecessorDocumentsSequence" not in sr, "a first result, not an amendment"
    records = [r for r in audit.records(study_key=study_key(truth.study_instance_uid)) if r["use_case"] == "ich-assist"]
    (reported,) = [r for r in records if r["sr_key"] is not None]
    assert reported["outcome"] == "reported" and reported["amends_sr_key"] is None
    assert reported["sr_key"] == study_key(str(sr.SOPInstanceUID))
    # Its revision follows the earlier "not applicable" record, if the audit has one, so both are kept.
    assert reported["revision"] == 1 and len(records) <= 2
    assert tracker.outcome(truth.study_instance_uid, "ich-assist") == "reported"


def test_late_undecodable_slice_amends_the_sr_to_say_it_was_skipped(router):
    """The analysed images stay the same, but the series changed: the amended SR says what was skipped."""
    spool = router.spool
    datasets, truth = phantom.generate_study(45, lesion=True, slices=17, rows=256, cols=256)
    for ds in datasets[:16]:
        spool.store(part10(ds))
    assert router.process_due() == 1
    broken = copy.deepcopy(datasets[16])
    broken.PixelData = b"\0" * 64  # far too short for 256 x 256 x 16 bits: not decodable
    assert spool.store(part10(broken)).late
    assert router.process_due() == 1
    first, amended = router.queued()
    comments = [i.TextValue for s in amended.ContentSequence for g in s.get("ContentSequence", [])
                for i in g.get("ContentSequence", []) if i.ValueType == "TEXT"
                and i.ConceptNameCodeSequence[0].CodeMeaning == "Comment"]
    assert any(str(broken.SOPInstanceUID) in c for c in comments), comments
    assert amended.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == first.SOPInstanceUID
