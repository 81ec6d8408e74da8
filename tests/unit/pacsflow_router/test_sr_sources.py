"""SRs on sources real scanners send: a multi-frame instance (the SR points at the frame) and de-identified sources.

Every SR is written, read back and checked by dciodvfy and dsrdump (tests/peers/srcheck.py) with zero errors.
"""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset

from pacsflow_router.results.patient_modules import UNSPECIFIED_DEIDENTIFICATION_METHOD
from tests.unit.pacsflow_router.realinputs import (
    finding_at,
    items,
    legacy_converted,
    load,
    phantom_datasets,
    report,
    valid,
    write,
)


def test_sr_on_a_legacy_converted_enhanced_ct_references_the_frame_and_the_frame_of_reference(tmp_path):
    datasets, truth = phantom_datasets(41, slices=8)
    lesion = truth.lesions[0]
    lce = legacy_converted(datasets)
    study = load(write([lce], tmp_path / "source"), truth.study_instance_uid)
    (series,) = study.series
    target = datasets[lesion.slice_indices[len(lesion.slice_indices) // 2]]
    k = next(i for i, s in enumerate(series.slices)
             if float(s.header.ImagePositionPatient[2]) == pytest.approx(float(target.ImagePositionPatient[2])))
    row, col = lesion.pixel_centre
    finding = finding_at(series, k, row, col)
    sr = valid(report(study, finding), tmp_path / "sr.dcm")
    (point,) = items(sr, "SCOORD")
    (image,) = point.ContentSequence
    (reference,) = image.ReferencedSOPSequence
    assert reference.ReferencedSOPInstanceUID == lce.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == lce.SOPClassUID
    assert [int(v) for v in _list(reference.ReferencedFrameNumber)] == [series.slices[k].frame_number]
    assert list(point.GraphicData) == pytest.approx([col, row])
    (point3d,) = items(sr, "SCOORD3D")
    assert point3d.ReferencedFrameOfReferenceUID == lce.FrameOfReferenceUID
    assert list(point3d.GraphicData) == pytest.approx(list(finding.patient_point), abs=1e-3)
    # the evidence names the multi-frame instance once, not once per frame
    evidence = [i for s in sr.CurrentRequestedProcedureEvidenceSequence for r in s.ReferencedSeriesSequence
                for i in r.ReferencedSOPSequence]
    assert [i.ReferencedSOPInstanceUID for i in evidence] == [lce.SOPInstanceUID]


def _list(value) -> list:
    return list(value) if isinstance(value, list | pydicom.multival.MultiValue) else [value]


def _deidentified(tmp_path, **attributes):
    datasets, truth = phantom_datasets(42, slices=3, size=32)
    for ds in datasets:
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
    study = load(write(datasets, tmp_path / "source"), truth.study_instance_uid)
    (series,) = study.series
    finding = finding_at(series, 1, 16, 16)
    return valid(report(study, finding), tmp_path / "sr.dcm")


def test_source_saying_identity_removed_without_a_method_still_gives_a_valid_sr(tmp_path):
    sr = _deidentified(tmp_path, PatientIdentityRemoved="YES")
    # the flag is kept (the SR is as de-identified as its source) and the method says the source named none
    assert sr.PatientIdentityRemoved == "YES"
    assert sr.DeidentificationMethod == UNSPECIFIED_DEIDENTIFICATION_METHOD


def test_source_with_a_method_keeps_it(tmp_path):
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113100", "DCM", "Basic Application Confidentiality Profile"
    sr = _deidentified(tmp_path, PatientIdentityRemoved="YES", DeidentificationMethod="PACS anonymiser 2.1",
                      DeidentificationMethodCodeSequence=[code])
    assert sr.DeidentificationMethod == "PACS anonymiser 2.1"
    assert sr.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


def test_invalid_identity_removed_value_is_not_copied(tmp_path):
    sr = _deidentified(tmp_path, PatientIdentityRemoved="Y")
    assert "PatientIdentityRemoved" not in sr


def test_the_source_headers_are_not_changed_by_reporting(tmp_path):
    datasets, truth = phantom_datasets(43, slices=3, size=32)
    for ds in datasets:
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientIdentityRemoved = "YES"
    study = load(write(datasets, tmp_path / "source"), truth.study_instance_uid)
    (series,) = study.series
    finding = finding_at(series, 1, 16, 16)
    report(study, finding)
    header = series.slices[0].header
    assert list(header.SpecificCharacterSet) == ["", "ISO 2022 IR 87"]
    assert "DeidentificationMethod" not in header


def test_sr_on_a_partial_series_says_how_many_images_were_analysed_and_which_were_skipped(tmp_path):
    datasets, truth = phantom_datasets(44, slices=8, size=32)
    bad = datasets[0]
    bad.PixelData = bad.PixelData[:100]  # undecodable; at the end of the stack, so no gap
    sent = [d for i, d in enumerate(datasets) if i != 5]  # never sent: a gap in the middle
    study = load(write(sent, tmp_path / "source"), truth.study_instance_uid)
    (series,) = study.series
    finding = finding_at(series, 2, 16, 16)
    sr = valid(report(study, finding), tmp_path / "sr.dcm")
    (comment,) = [i for i in items(sr, "TEXT") if i.ConceptNameCodeSequence[0].CodeValue == "121106"]
    assert comment.TextValue == (
        "6 of 8 images analysed; not analysed: 1 pixel data not decodable, 1 missing. "
        f"Skipped instances: {bad.SOPInstanceUID}."
    )
    # the skipped instance was not analysed, so it is not evidence
    evidence = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert bad.SOPInstanceUID not in evidence and len(evidence) == 6


def test_sr_on_a_complete_series_has_no_coverage_comment(tmp_path):
    datasets, truth = phantom_datasets(45, slices=3, size=32)
    study = load(write(datasets, tmp_path / "source"), truth.study_instance_uid)
    (series,) = study.series
    finding = finding_at(series, 1, 16, 16)
    sr = report(study, finding)
    assert not [i for i in items(sr, "TEXT") if i.ConceptNameCodeSequence[0].CodeValue == "121106"]


def test_sr_on_the_real_enhanced_ct_of_pydicom_data_is_valid_and_names_the_frame(tmp_path):
    from pydicom.data import get_testdata_file

    source = get_testdata_file("eCT_Supplemental.dcm")  # pydicom-data (dev extra)
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    study = load([source], ds.StudyInstanceUID)
    (series,) = study.series
    finding = finding_at(series, 1, 256, 256)
    sr = valid(report(study, finding), tmp_path / "sr.dcm")
    (point,) = items(sr, "SCOORD")
    (reference,) = point.ContentSequence[0].ReferencedSOPSequence
    assert reference.ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert int(reference.ReferencedFrameNumber) == series.slices[1].frame_number
    (point3d,) = items(sr, "SCOORD3D")
    frame = ds.PerFrameFunctionalGroupsSequence[series.slices[1].frame_number - 1]
    assert float(point3d.GraphicData[2]) == pytest.approx(float(frame.PlanePositionSequence[0].ImagePositionPatient[2]))
    assert sr.SpecificCharacterSet == ds.SpecificCharacterSet
