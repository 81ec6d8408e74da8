"""Inputs real scanners send, through the real router: a multi-frame CT and a partial series.

storescu -> pacsflow-router (embedded ONNX Runtime) -> Orthanc; SRs fetched back from Orthanc and checked with
dciodvfy and dsrdump. The model may be retrained while these tests stand, so they assert on structure (which
instance and frame the SR points at, what it says was analysed), never on a probability.
"""

from __future__ import annotations

from io import BytesIO

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import generate_uid

from pacsflow_router.domain import study_key
from pacsflow_router.models import phantom
from tests.e2e.conftest import audit_records, wait_for
from tests.peers.dcmtk import storescu
from tests.peers.router import use_case
from tests.peers.srcheck import check_sr

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEOUT = 180


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _srs(pacs, study_uid: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(BytesIO(pacs.instance_file(i))) for i in pacs.instances(modality="SR", study_uid=study_uid)]


def _always_present(name: str) -> dict:
    # Decision threshold 0: every result is "Present" with its location, whatever the current model's probability,
    # so the frame reference is always there to check.
    uc = use_case(name, "assistive")
    uc["decisionThreshold"] = 0.0
    return uc


def test_legacy_converted_enhanced_ct_gets_an_sr_that_points_at_the_frame(pacs, make_router, tmp_path):
    datasets, truth = phantom.generate_study(61, lesion=True, slices=16, rows=256, cols=256)
    lce = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=datasets, series_instance_uid=generate_uid(), series_number=5,
        sop_instance_uid=generate_uid(), instance_number=1,
    )
    path = tmp_path / "lce.dcm"
    lce.save_as(path, enforce_file_format=True)
    router = make_router([_always_present("ich-mf")], pacs_port=pacs.dicom_port).start()
    sent = storescu(router.port, [path])
    assert len(sent.acknowledged) == 1, sent.output[-2000:]

    (sr,) = wait_for(lambda: _srs(pacs, truth.study_instance_uid), TIMEOUT, "the SR in Orthanc", router)
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path)
    check = check_sr(sr_path)
    assert check.errors == [], check.errors

    items = list(_walk(sr.ContentSequence))
    (scoord,) = [i for i in items if i.ValueType == "SCOORD"]
    (reference,) = scoord.ContentSequence[0].ReferencedSOPSequence
    assert reference.ReferencedSOPInstanceUID == lce.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2"  # Legacy Converted Enhanced CT
    frame = int(reference.ReferencedFrameNumber)
    assert 1 <= frame <= 16
    (scoord3d,) = [i for i in items if i.ValueType == "SCOORD3D"]
    assert scoord3d.ReferencedFrameOfReferenceUID == lce.FrameOfReferenceUID
    # the 3D point lies in the plane of the referenced frame
    plane = lce.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient
    assert float(scoord3d.GraphicData[2]) == pytest.approx(float(plane[2]), abs=1e-3)
    # dcmtk's reading of the same tree: the IMAGE under the SCOORD names the frame ("(<class>,,<frame>)")
    assert f"image,,{frame})" in check.dump and "SCOORD3D" in check.dump
    (record,) = audit_records(router, truth)
    assert record["inputs"] == {"analysed": 16, "expected": 16, "missing": 0, "skipped": [],
                                "completion": "stable-window", "order": None}


def test_a_study_with_one_undecodable_slice_is_analysed_around_it_and_says_so(pacs, make_router, tmp_path):
    datasets, truth = phantom.generate_study(62, lesion=True, slices=20, rows=256, cols=256)
    # The first slice of the stack (an end: no gap in what remains) arrives truncated, as from a broken transfer.
    first = min(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    first.PixelData = first.PixelData[:1000]
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(tmp_path / f"{i:02d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    router = make_router([_always_present("ich-partial")], pacs_port=pacs.dicom_port).start()
    sent = storescu(router.port, paths)
    assert len(sent.acknowledged) == 20, "acknowledged: the damage is in the pixel data, not the header"

    (sr,) = wait_for(lambda: _srs(pacs, truth.study_instance_uid), TIMEOUT, "the SR in Orthanc", router)
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path)
    check = check_sr(sr_path)
    assert check.errors == [], check.errors
    comments = [i.TextValue for i in _walk(sr.ContentSequence)
                if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert comments == ["19 of 20 images analysed; not analysed: 1 pixel data not decodable. "
                        f"Skipped instances: {first.SOPInstanceUID}."]
    (record,) = audit_records(router, truth)
    assert record["outcome"] == "reported"
    assert record["inputs"] == {
        "analysed": 19, "expected": 20, "missing": 0,
        "skipped": [{"instance": study_key(first.SOPInstanceUID), "reason": "pixel data not decodable", "images": 1}],
        "completion": "stable-window", "order": None,  # no MPPS, no order
    }


def test_a_study_in_iso_2022_japanese_gets_an_sr_with_the_name_intact(pacs, make_router, tmp_path):
    """``\\ISO 2022 IR 87`` (an empty first value) once gave no SR at all: a ValueError on every attempt."""
    datasets, truth = phantom.generate_study(63, lesion=False, slices=16, rows=256, cols=256)
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    paths = []
    for i, ds in enumerate(datasets):
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = name
        paths.append(tmp_path / f"{i:02d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    router = make_router([use_case("ich-jp", "assistive")], pacs_port=pacs.dicom_port).start()
    assert len(storescu(router.port, paths).acknowledged) == 16

    (sr,) = wait_for(lambda: _srs(pacs, truth.study_instance_uid), TIMEOUT, "the SR in Orthanc", router)
    assert list(sr.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert str(sr.PatientName) == name
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path)
    check = check_sr(sr_path)
    assert check.errors == [], check.errors
    log_text = router.log()
    assert "ValueError" not in log_text and "山田" not in log_text and "Yamada" not in log_text


def test_an_undecodable_slice_inside_the_stack_leaves_a_gap_and_the_study_is_not_analysed(pacs, make_router, tmp_path):
    """Analysed around only while the rest still meets the model's criteria: a hole in the volume does not."""
    datasets, truth = phantom.generate_study(64, lesion=True, slices=20, rows=256, cols=256)
    ordered = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    ordered[10].PixelData = ordered[10].PixelData[:1000]
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(tmp_path / f"{i:02d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    router = make_router([use_case("ich-gap", "assistive")], pacs_port=pacs.dicom_port).start()
    assert len(storescu(router.port, paths).acknowledged) == 20

    (record,) = wait_for(lambda: audit_records(router, truth), TIMEOUT, "the audit record", router)
    assert record["outcome"].startswith("not analysed"), record
    assert record["probability"] is None
    assert pacs.instances(modality="SR", study_uid=truth.study_instance_uid) == []
