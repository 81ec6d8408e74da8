"""TID 1500 SRs from reports.build_sr, validated by the real dciodvfy and dsrdump on phantom studies."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from pacsflow_router import domain
from pacsflow_router.analysis.manifest import load_manifest
from pacsflow_router.config import UseCase
from pacsflow_router.models.phantom import generate_study
from pacsflow_router.pipeline import report_spec
from pacsflow_router.results.reports import build_sr, device_uid
from tests.peers.srcheck import check_sr

REPO = Path(__file__).resolve().parents[3] / "model_repository"
USE_CASE = UseCase.model_validate({
    "name": "ich-head-ct", "model": {"name": "ich_detector", "version": 1}, "mode": "assistive",
})
# What the pipeline derives from the committed ich_detector manifest (codes, statements, thresholds).
SPEC = report_spec(USE_CASE, load_manifest(REPO, USE_CASE.model), REPO)


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
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC)
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
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC)
    check = check_sr(_saved(sr, tmp_path, "negative"))
    assert check.ok, check.errors
    assert _coded(sr, "Presence of property") == "Absent"
    assert _coded(sr, "Finding") == "Intracranial hemorrhage"
    assert not _items(sr, "SCOORD") and not _items(sr, "SCOORD3D")
    (num,) = _probabilities(sr)
    assert float(num.MeasuredValueSequence[0].NumericValue) == pytest.approx(0.03)


def test_rebuilding_gives_the_same_sr_uids_and_a_new_model_version_new_ones():
    study, result = phantom_study_and_result(seed=13, lesion=True, probability=0.9)
    first = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC)
    again = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC)
    assert (again.SeriesInstanceUID, again.SOPInstanceUID) == (first.SeriesInstanceUID, first.SOPInstanceUID)

    v2 = USE_CASE.model_copy(update={"model": USE_CASE.model.model_copy(update={"version": 2})})
    newer = build_sr(study, dataclasses.replace(result, model_version=2), v2, software_version="0.1.0", spec=SPEC)
    assert newer.SOPInstanceUID != first.SOPInstanceUID
    assert device_uid("ich_detector", 2) != device_uid("ich_detector", 1)
    other_study, other = phantom_study_and_result(seed=14, lesion=True, probability=0.9)
    other_sr = build_sr(other_study, other, USE_CASE, software_version="0.1.0", spec=SPEC)
    assert other_sr.SOPInstanceUID != first.SOPInstanceUID


def test_source_without_optional_patient_attributes_still_gives_a_valid_sr(tmp_path):
    study, result = phantom_study_and_result(seed=15, lesion=True, probability=0.8)
    for sl in study.series[0].slices:
        for keyword in ("PatientBirthDate", "PatientSex", "AccessionNumber", "ReferringPhysicianName"):
            if keyword in sl.header:
                delattr(sl.header, keyword)
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC)
    check = check_sr(_saved(sr, tmp_path, "sparse"))
    assert check.ok, check.errors


def test_checker_rejects_an_sr_whose_scoord3d_lost_its_frame_of_reference(tmp_path):
    """The validators are the gate for every SR; prove they catch what the issue says they catch."""
    study, result = phantom_study_and_result(seed=16, lesion=True, probability=0.9)
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC)
    (point3d,) = _items(sr, "SCOORD3D")
    del point3d.ReferencedFrameOfReferenceUID
    check = check_sr(_saved(sr, tmp_path, "broken"))
    assert not check.ok
    assert any("dsrdump" in e for e in check.errors)


def test_checker_rejects_an_sr_missing_a_type_1_attribute(tmp_path):
    study, result = phantom_study_and_result(seed=17, lesion=False, probability=0.1)
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC)
    del sr.CompletionFlag  # SR Document General module, Type 1
    check = check_sr(_saved(sr, tmp_path, "incomplete"))
    assert any(e.startswith("dciodvfy: Error") for e in check.errors), check.errors


def _texts(sr: Dataset) -> dict[str, str]:
    return {i.ConceptNameCodeSequence[0].CodeMeaning: i.TextValue for i in _items(sr, "TEXT")}


def _triage(threshold: float = 0.85, decision: float | None = None) -> tuple[UseCase, object]:
    use_case = USE_CASE.model_validate({
        **USE_CASE.model_dump(by_alias=True), "mode": "triage", "triage": {"criticalThreshold": threshold},
        **({"decisionThreshold": decision} if decision is not None else {}),
    })
    return use_case, report_spec(use_case, load_manifest(REPO, use_case.model), REPO)


def test_manifest_supplies_site_statements_and_the_sr_says_which_one_applies(tmp_path):
    """Finding Site and the plain-language statement come from model.json; positive and negative differ."""
    manifest = load_manifest(REPO, USE_CASE.model)
    study, result = phantom_study_and_result(seed=21, lesion=True, probability=0.9)
    positive = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC)
    negative = build_sr(study, dataclasses.replace(result, finding=dataclasses.replace(result.finding, probability=0.1)),
                        USE_CASE, software_version="0.1.0", spec=SPEC)
    for name, sr in (("pos", positive), ("neg", negative)):
        check = check_sr(_saved(sr, tmp_path, name))
        assert check.ok, check.errors
        assert _coded(sr, "Finding Site") == manifest.finding.site.meaning
        assert _coded(sr, "Finding") == manifest.finding.type.meaning
        (procedure,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeMeaning == "Procedure reported"]
        assert procedure.ConceptCodeSequence[0].CodeValue == manifest.finding.procedure.value
    assert _texts(positive)["Impression"] == manifest.finding.present_statement
    assert _texts(negative)["Impression"] == manifest.finding.absent_statement
    (equipment,) = [e for e in positive.ContributingEquipmentSequence if "DeviceUID" in e]
    assert equipment.ContributionDateTime  # when the algorithm contributed (PS3.3 C.12.1.1.8 / IHE AIR)


def test_critical_result_is_stated_in_the_sr_and_is_always_present(tmp_path):
    use_case, spec = _triage(threshold=0.8)
    study, result = phantom_study_and_result(seed=22, lesion=True, probability=0.95)
    sr = build_sr(study, dataclasses.replace(result, critical=True), use_case, software_version="0.1.0", spec=spec)
    check = check_sr(_saved(sr, tmp_path, "critical"))
    assert check.ok, check.errors
    assert _coded(sr, "Presence of property") == "Present"
    (item,) = [i for i in _items(sr, "CODE") if i.ConceptNameCodeSequence[0].CodeValue == "260870009"]
    code = item.ConceptCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("RID49480", "RADLEX")  # PS3.16 CID 7035, ACR Cat 1
    assert "Critical result" in _texts(sr)["Impression"]

    plain = build_sr(study, result, use_case, software_version="0.1.0", spec=spec)
    assert not [i for i in _items(plain, "CODE") if i.ConceptNameCodeSequence[0].CodeValue == "260870009"]
    # Today's bug: "Absent" while flagged critical. A critical flag below the decision threshold is refused.
    low = dataclasses.replace(result, critical=True, finding=dataclasses.replace(result.finding, probability=0.3))
    with pytest.raises(ValueError, match="critical result must be Present"):
        build_sr(study, low, use_case, software_version="0.1.0", spec=spec)


def test_use_case_decision_threshold_overrides_the_manifest_and_critical_cannot_be_below_it():
    from pacsflow_router.config import ConfigError, parse_config
    from pacsflow_router.pipeline import is_critical

    use_case, spec = _triage(threshold=0.9, decision=0.7)
    assert spec.decision_threshold == 0.7
    assert SPEC.decision_threshold == load_manifest(REPO, USE_CASE.model).operating_point.decision_threshold
    study, result = phantom_study_and_result(seed=23, lesion=True, probability=0.6)
    assert _coded(build_sr(study, result, use_case, software_version="0", spec=spec), "Presence of property") == "Absent"
    assert _coded(build_sr(study, result, USE_CASE, software_version="0", spec=SPEC), "Presence of property") == "Present"
    with pytest.raises(ConfigError, match="criticalThreshold 0.5 is below decisionThreshold 0.7"):
        parse_config({"useCases": [{"name": "x", "model": {"name": "m", "version": 1}, "decisionThreshold": 0.7,
                                    "triage": {"criticalThreshold": 0.5}}]})
    # A manifest operating point above the critical threshold: the stricter one decides, so critical => Present.
    low_critical, _ = _triage(threshold=0.3)
    assert not is_critical(low_critical, 0.4, decision=0.5)
    assert is_critical(low_critical, 0.5, decision=0.5)


def test_sr_uids_follow_the_content_and_the_tracking_uid_follows_the_finding():
    study, result = phantom_study_and_result(seed=24, lesion=True, probability=0.9)
    base = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC)

    def tracking(sr: Dataset) -> str:
        (item,) = [i for i in _items(sr, "UIDREF") if i.ConceptNameCodeSequence[0].CodeValue == "112040"]
        return str(item.UID)

    variants = {
        "decision threshold": build_sr(study, result, USE_CASE, software_version="0.1.0",
                                       spec=dataclasses.replace(SPEC, decision_threshold=0.6)),
        "mode and critical threshold": build_sr(study, result, *_triage(threshold=0.95)[:1],
                                                software_version="0.1.0", spec=_triage(threshold=0.95)[1]),
        "critical threshold": build_sr(study, result, *_triage(threshold=0.9)[:1], software_version="0.1.0",
                                       spec=_triage(threshold=0.9)[1]),
        "analysed instances": build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC,
                                       analysed=[s.header.SOPInstanceUID for s in study.series[0].slices[:-1]]),
    }
    uids = {(base.SeriesInstanceUID, base.SOPInstanceUID)}
    for what, sr in variants.items():
        assert (sr.SeriesInstanceUID, sr.SOPInstanceUID) not in uids, what
        uids.add((sr.SeriesInstanceUID, sr.SOPInstanceUID))
        assert tracking(sr) == tracking(base), what
    again = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC,
                     analysed=reversed([s.header.SOPInstanceUID for s in study.series[0].slices]))
    assert again.SOPInstanceUID == base.SOPInstanceUID, "the analysed set, not its order, determines the UID"


def test_amended_sr_names_its_predecessor_and_keeps_the_tracking_uid(tmp_path):
    from pacsflow_router.results.reports import Predecessor

    study, result = phantom_study_and_result(seed=25, lesion=True, probability=0.9)
    slices = [s.header.SOPInstanceUID for s in study.series[0].slices]
    first = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC, analysed=slices[:-1])
    amended = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC, analysed=slices,
                       predecessor=Predecessor(first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPClassUID,
                                               first.SOPInstanceUID))
    check = check_sr(_saved(amended, tmp_path, "amended"))
    assert check.ok, check.errors
    assert amended.SOPInstanceUID != first.SOPInstanceUID
    (study_item,) = amended.PredecessorDocumentsSequence
    assert study_item.StudyInstanceUID == first.StudyInstanceUID
    (ref,) = study_item.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert ref.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in first

    def tracking(sr: Dataset) -> str:
        return next(str(i.UID) for i in _items(sr, "UIDREF") if i.ConceptNameCodeSequence[0].CodeValue == "112040")

    assert tracking(amended) == tracking(first)


def test_image_geometry_model_gets_a_valid_sr_with_2d_coordinates_only(tmp_path):
    """A second model family (one 2D radiograph, manifest output.geometry "image"): SCOORD, never SCOORD3D."""
    from pydicom.sr.coding import Code

    study, result = phantom_study_and_result(seed=26, lesion=True, probability=0.9)
    for sl in study.series[0].slices:  # a projection image: no frame of reference, no slice geometry
        for keyword in ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "SliceThickness"):
            if keyword in sl.header:
                delattr(sl.header, keyword)
    spec = dataclasses.replace(
        SPEC, finding_type=Code("36118008", "SCT", "Pneumothorax"), finding_site=None,
        procedure=Code("399208008", "SCT", "Plain chest X-ray"), present_statement="Pneumothorax suspected.",
        absent_statement="No pneumothorax detected.", image_only=True)
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0", spec=spec)
    check = check_sr(_saved(sr, tmp_path, "image"))
    assert check.ok, check.errors
    assert _items(sr, "SCOORD") and not _items(sr, "SCOORD3D")
    assert _coded(sr, "Finding") == "Pneumothorax"
    assert not [i for i in _items(sr, "CODE") if i.ConceptNameCodeSequence[0].CodeMeaning == "Finding Site"]
    # Even a source that has a frame of reference gets no 3D point from an image model.
    study3d, result3d = phantom_study_and_result(seed=27, lesion=True, probability=0.9)
    assert not _items(build_sr(study3d, result3d, USE_CASE, software_version="0", spec=spec), "SCOORD3D")


def test_algorithm_version_is_the_models_own_version_string(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from pacsflow_router.analysis.manifest import algorithm_version
    from pacsflow_router.config import ModelRef

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    helper.set_model_props(model, {"algorithm_version": "2.1.0-phantoms+4c1d"})
    (tmp_path / "m" / "2").mkdir(parents=True)
    onnx.save(model, tmp_path / "m" / "2" / "model.onnx")
    assert algorithm_version(tmp_path, ModelRef(name="m", version=2)) == "2.1.0-phantoms+4c1d"
    assert algorithm_version(tmp_path, ModelRef(name="m", version=3)) == "3", "no model file: the version number"
    assert algorithm_version(REPO, USE_CASE.model) == "1", "v1 carries no version string: the version number"

    study, result = phantom_study_and_result(seed=28, lesion=True, probability=0.9)
    sr = build_sr(study, result, USE_CASE, software_version="0.1.0",
                  spec=dataclasses.replace(SPEC, algorithm_version="2.1.0-phantoms+4c1d"))
    assert {t.TextValue for t in _items(sr, "TEXT")
            if t.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Version"} == {"2.1.0-phantoms+4c1d"}


@pytest.mark.parametrize("modality", ["DX", "CR"])
def test_sr_on_a_synthetic_chest_radiograph_is_valid_and_2d(tmp_path, modality):
    """The second model family's input as the radiograph generator writes it (no frame of reference, no slice
    geometry): a valid SR with one SCOORD on the image, for a positive and a negative result."""
    from pydicom.sr.coding import Code

    from pacsflow_router.models.radiograph_phantom import generate_radiograph

    radiograph = generate_radiograph(31, pneumothorax=True, modality=modality, rows=512, cols=512)
    header = Dataset()
    header.update(radiograph.dataset)
    del header.PixelData
    uid = str(header.StudyInstanceUID)
    series = domain.Series(str(header.SeriesInstanceUID), modality, str(header.get("BodyPartExamined", "")),
                           str(header.get("SeriesDescription", "")), [domain.Slice(header, np.zeros((1, 1), np.int16))])
    study = domain.Study(domain.StudyRef(uid, domain.study_key(uid), (), 0.0), header, [series])
    finding = domain.Finding(
        probability=0.9, series_uid=series.series_uid, slice_index=0, sop_class_uid=str(header.SOPClassUID),
        sop_instance_uid=str(header.SOPInstanceUID), frame_of_reference_uid=header.get("FrameOfReferenceUID"),
        pixel_point=(200.0, 150.0), patient_point=None,
    )
    result = domain.StudyResult(use_case="ptx-cxr", model_name="ptx_detector", model_version=1, finding=finding,
                                critical=False, timings={})
    use_case = UseCase.model_validate({"name": "ptx-cxr", "model": {"name": "ptx_detector", "version": 1},
                                       "mode": "assistive"})
    spec = dataclasses.replace(
        SPEC, finding_type=Code("36118008", "SCT", "Pneumothorax"), finding_site=None,
        procedure=Code("399208008", "SCT", "Plain chest X-ray"), present_statement="Pneumothorax suspected.",
        absent_statement="No pneumothorax detected.", image_only=True, algorithm_version="")
    for name, probability in (("pos", 0.9), ("neg", 0.1)):
        res = dataclasses.replace(result, finding=dataclasses.replace(finding, probability=probability))
        sr = build_sr(study, res, use_case, software_version="0.1.0", spec=spec)
        check = check_sr(_saved(sr, tmp_path, f"{modality}-{name}"))
        assert check.ok, check.errors
        assert not _items(sr, "SCOORD3D")
        assert len(_items(sr, "SCOORD")) == (1 if probability >= 0.5 else 0)
