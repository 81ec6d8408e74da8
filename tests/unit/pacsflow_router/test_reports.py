"""TID 1500 SRs from reports.build_sr, validated by the real dciodvfy and dsrdump on phantom studies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pacsflow_router import domain
from pacsflow_router.config import UseCase
from pacsflow_router.models.phantom import generate_study
from pacsflow_router.results.reports import build_sr, device_uid
from tests.peers.srcheck import check_sr

USE_CASE = UseCase.model_validate({
    "name": "ich-head-ct", "model": {"name": "ich_detector", "version": 1}, "mode": "assistive",
})


def _patient_point(ds: Dataset, col: float, row: float) -> tuple[float, float, float]:
    # PS3.3 C.7.6.2.1.1: position = IPP + col * spacing_col * row_dir + row * spacing_row * col_dir
    ipp = np.array(ds.ImagePositionPatient, dtype=float)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    spacing_row, spacing_col = (float(v) for v in ds.PixelSpacing)
    return tuple(float(v) for v in ipp + col * spacing_col * iop[:3] + row * spacing_row * iop[3:])


def phantom_study_and_result(seed: int, lesion: bool, probability: float) -> tuple[domain.Study, domain.StudyResult]:
    """A small phantom study and a use-case result pointing at its lesion (or its middle slice when negative)."""
    # Small matrix and few slices: the SR only needs headers, and the suite shares two CPU cores.
    datasets, truth = generate_study(seed, lesion=lesion, slices=6, rows=128, cols=128)
    headers = []
    for ds in datasets:
        header = Dataset()
        header.update(ds)
        if "PixelData" in header:
            del header.PixelData
        headers.append(header)
    first = headers[0]
    uid = first.StudyInstanceUID
    ref = domain.StudyRef(uid, domain.study_key(uid), (), 0.0)
    series = domain.Series(first.SeriesInstanceUID, first.Modality, str(first.get("BodyPartExamined", "")),
                           str(first.get("SeriesDescription", "")),
                           [domain.Slice(h, np.zeros((1, 1), np.int16)) for h in headers])
    if truth.lesions:  # point at the phantom's true lesion centre, as a correct model would
        lesion_truth = truth.lesions[0]
        index = lesion_truth.slice_indices[len(lesion_truth.slice_indices) // 2]
        row, col = lesion_truth.pixel_centre
    else:
        index = len(headers) // 2
        row, col = float(headers[index].Rows) / 2, float(headers[index].Columns) / 2
    target = next(h for h in headers if int(h.InstanceNumber) == index + 1)
    finding = domain.Finding(
        probability=probability, series_uid=series.series_uid, slice_index=index,
        sop_class_uid=target.SOPClassUID, sop_instance_uid=target.SOPInstanceUID,
        frame_of_reference_uid=target.get("FrameOfReferenceUID"), pixel_point=(col, row),
        patient_point=_patient_point(target, col, row),
    )
    result = domain.StudyResult(use_case=USE_CASE.name, model_name="ich_detector", model_version=1,
                                finding=finding, critical=False, timings={})
    return domain.Study(ref, first, [series]), result


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _items(sr: Dataset, value_type: str) -> list[Dataset]:
    return [i for i in _walk(sr.ContentSequence) if i.ValueType == value_type]


def _probabilities(sr: Dataset) -> list[Dataset]:
    return [i for i in _items(sr, "NUM") if i.ConceptNameCodeSequence[0].CodeMeaning == "Probability"]


def _coded(sr: Dataset, meaning: str) -> str:
    (item,) = [i for i in _items(sr, "CODE") if i.ConceptNameCodeSequence[0].CodeMeaning == meaning]
    return item.ConceptCodeSequence[0].CodeMeaning


def _saved(sr: Dataset, tmp_path, name: str):
    path = tmp_path / f"{name}.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def test_positive_sr_passes_dciodvfy_and_dsrdump_and_locates_the_finding(tmp_path):
    study, result = phantom_study_and_result(seed=11, lesion=True, probability=0.93)
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0")
    check = check_sr(_saved(sr, tmp_path, "positive"))
    assert check.ok, check.errors

    reread = pydicom.dcmread(tmp_path / "positive.dcm")
    assert reread.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert reread.StudyInstanceUID == study.ref.study_uid
    assert reread.PatientID == study.first_header.PatientID
    assert _coded(reread, "Finding") == "Intracranial hemorrhage"
    assert _coded(reread, "Presence of property") == "Present"
    (num,) = _probabilities(reread)
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.93)
    (point,) = _items(reread, "SCOORD")
    assert point.GraphicType == "POINT"
    assert list(point.GraphicData) == pytest.approx(list(result.finding.pixel_point))
    referenced = point.ContentSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == result.finding.sop_instance_uid
    (point3d,) = _items(reread, "SCOORD3D")
    assert point3d.ReferencedFrameOfReferenceUID == result.finding.frame_of_reference_uid
    assert list(point3d.GraphicData) == pytest.approx(list(result.finding.patient_point), abs=1e-3)
    texts = {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in _items(reread, "TEXT")}
    assert texts["Algorithm Name"] == "ich_detector" and texts["Algorithm Version"] == "1"
    ours = [e for e in reread.ContributingEquipmentSequence if "DeviceUID" in e]
    assert len(ours) == 1 and ours[0].Manufacturer == "pacsflow" and ours[0].DeviceUID == device_uid("ich_detector", 1)
    assert "0.1.0" in ours[0].SoftwareVersions


def test_negative_study_still_gets_a_valid_report_saying_absent_without_location(tmp_path):
    study, result = phantom_study_and_result(seed=12, lesion=False, probability=0.03)
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0")
    check = check_sr(_saved(sr, tmp_path, "negative"))
    assert check.ok, check.errors
    assert _coded(sr, "Presence of property") == "Absent"
    assert _coded(sr, "Finding") == "Intracranial hemorrhage"
    assert not _items(sr, "SCOORD") and not _items(sr, "SCOORD3D")
    (num,) = _probabilities(sr)
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.03)


def test_rebuilding_gives_the_same_sr_uids_and_a_new_model_version_new_ones():
    study, result = phantom_study_and_result(seed=13, lesion=True, probability=0.9)
    first = build_sr(study, result, USE_CASE, software_version="0.1.0")
    again = build_sr(study, result, USE_CASE, software_version="0.1.0")
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (first.SeriesInstanceUID, first.SOPInstanceUID)

    v2 = USE_CASE.model_copy(update={"model": USE_CASE.model.model_copy(update={"version": 2})})
    newer = build_sr(study, dataclasses.replace(result, model_version=2), v2, software_version="0.1.0")
    assert newer.SOPInstanceUID != first.SOPInstanceUID
    assert device_uid("ich_detector", 2) != device_uid("ich_detector", 1)
    other_study, other = phantom_study_and_result(seed=14, lesion=True, probability=0.9)
    assert build_sr(other_study, other, USE_CASE, software_version="0.1.0").SOPInstanceUID != first.SOPInstanceUID


def test_source_without_optional_patient_attributes_still_gives_a_valid_sr(tmp_path):
    study, result = phantom_study_and_result(seed=15, lesion=True, probability=0.8)
    for sl in study.series[0].slices:
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName"):
            if keyword in sl.header:
                delattr(sl.header, keyword)
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0")
    check = check_sr(_saved(sr, tmp_path, "sparse"))
    assert check.ok, check.errors


def test_checker_rejects_an_sr_whose_scoord3d_lost_its_frame_of_reference(tmp_path):
    """The validators are the gate for every SR; prove they catch what the issue says they catch."""
    study, result = phantom_study_and_result(seed=16, lesion=True, probability=0.9)
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0")
    (point3d,) = _items(sr, "SCOORD3D")
    del point3d.ReferencedFrameOfReferenceUID
    check = check_sr(_saved(sr, tmp_path, "broken"))
    assert not check.ok
    assert any("dsrdump" in e for e in check.errors)


def test_checker_rejects_an_sr_missing_a_type_1_attribute(tmp_path):
    study, result = phantom_study_and_result(seed=17, lesion=False, probability=0.1)
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0")
    del sr.CompletionFlag  # SR Document General module, Type 1
    check = check_sr(_saved(sr, tmp_path, "incomplete"))
    assert any(e.startswith("dciodvfy: Error") for e in check.errors), check.errors
