"""Series acceptance criteria: each criterion on phantoms and on real scanner files, with the reason a user sees."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import SecondaryCaptureImageStorage

from pacsflow_router import metrics
from pacsflow_router.analysis.acceptance import (
    REASONS,
    effective_requirements,
    evaluate_series,
    select_series,
)
from pacsflow_router.analysis.manifest import ModelManifest, Range, load_manifest
from pacsflow_router.analysis.volume import load_study
from pacsflow_router.config import Match, ModelRef, parse_config
from pacsflow_router.domain import Series, StudyRef
from tests.peers.dicomfiles import scanner_file
from tests.unit.pacsflow_router.synthetic_ct import datasets, series_of, study_of

REPO = Path(__file__).resolve().parents[3] / "model_repository"
ICH = load_manifest(REPO, ModelRef(name="ich_detector", version=1))
REQ = effective_requirements(ICH, Match())


def _failures(series: Series, match: Match | None = None, manifest: ModelManifest = ICH) -> list[tuple[str, str]]:
    req = effective_requirements(manifest, match or Match())
    return [(f.code, f.message) for f in evaluate_series(series, req)]


def _head(**headers: object) -> Series:
    return series_of(datasets(7, slices=24, rows=256, **headers))


def test_reason_vocabulary_is_the_metric_label_set():
    assert REASONS == metrics.NOT_ANALYSED_REASONS


def test_a_phantom_head_passes_every_criterion():
    assert _failures(_head()) == []
    selection = select_series(ICH, Match(), study_of(_head()))
    assert selection.failure is None and selection.explanation == "chose series 1 of 1"


# ---------------------------------------------------------------- each criterion


@pytest.mark.parametrize(("image_type", "sop_class", "message"), [
    (["ORIGINAL", "PRIMARY", "LOCALIZER"], None, "a localizer (scout), not an original acquisition"),
    (["DERIVED", "SECONDARY", "AXIAL"], None, "Image Type is DERIVED/SECONDARY/AXIAL, the model needs "
                                             "ORIGINAL/PRIMARY (missing ORIGINAL/PRIMARY)"),
    (["ORIGINAL", "PRIMARY", "AXIAL"], SecondaryCaptureImageStorage,
     "a secondary capture (screenshot or dose screen), not an acquired image"),
])
def test_image_type(image_type, sop_class, message):
    series = _head(ImageType=image_type, SOPClassUID=sop_class)
    assert _failures(series)[0] == ("image-type", message)


def test_a_dose_screen_without_pixel_geometry_is_refused():
    series = _head(ImagePositionPatient=None, ImageOrientationPatient=None, PixelSpacing=None)
    assert _failures(series)[0] == ("image-type", "no pixel geometry (Image Position/Orientation, Pixel Spacing): "
                                                  "not a cross-sectional image")


def test_body_part_stated():
    assert _failures(_head(BodyPartExamined="CHEST")) == [
        ("body-part", "body part CHEST, the model needs BRAIN/HEAD/SKULL")]


@pytest.mark.parametrize(("series_description", "study_description", "passes"), [
    ("Kopf nativ", "", True),            # German series description
    ("AXIAL 5mm", "CT HEAD W/O", True),  # falls back to the study description
    ("Thorax", "CT CHEST", False),
    ("", "", False),
])
def test_body_part_falls_back_to_descriptions(series_description, study_description, passes):
    series = _head(BodyPartExamined=None, SeriesDescription=series_description, StudyDescription=study_description)
    found = _failures(series)
    if passes:
        assert found == []
    else:
        assert found == [("body-part", "body part not stated and no description names it; the model needs "
                                       "BRAIN/HEAD/SKULL")]


def test_a_stated_body_part_is_never_overridden_by_a_description():
    series = _head(BodyPartExamined="NECK", SeriesDescription="Head and neck angio")
    assert [c for c, _ in _failures(series)] == ["body-part"]


def test_order_procedure_code_establishes_the_anatomy_when_nothing_else_does():
    manifest = ICH.model_copy(update={"requirements": ICH.requirements.model_copy(
        update={"procedure_codes": ["RPID22"]})})
    series = _head(BodyPartExamined=None, SeriesDescription="", StudyDescription="")
    req = effective_requirements(manifest, Match())
    assert [f.code for f in evaluate_series(series, req)] == ["body-part"]
    assert evaluate_series(series, req, procedure_codes=["RPID22"]) == ()


def test_contrast():
    assert _failures(_head(ContrastBolusAgent="Omnipaque 350")) == [
        ("contrast", "contrast agent given, the model needs a non-contrast series")]
    # A use case asking for contrast against a non-contrast model admits nothing, and says so.
    assert _failures(_head(), Match(contrast="with")) == [
        ("contrast", "the use case's contrast requirement contradicts the model's: nothing passes")]


def test_slice_count():
    assert _failures(series_of(datasets(7, slices=8, rows=256))) == [
        ("slice-count", "8 slices, the model needs at least 16")]
    assert _failures(_head(), parse_match({"sliceCount": {"max": 20}})) == [
        ("slice-count", "24 slices, the model takes at most 20")]


def test_matrix():
    series = series_of(datasets(7, slices=16, rows=128))
    assert ("matrix", "matrix 128x128, the model needs at least 256") in _failures(series)
    assert _failures(_head(), parse_match({"minMatrix": 512})) == [
        ("matrix", "matrix 256x256, the model needs at least 512")]


def test_pixel_spacing():
    assert _failures(_head(PixelSpacing=["2", "2"])) == [
        ("pixel-spacing", "pixel spacing 2 x 2 mm, the model takes 0.2-1.3 mm")]


def test_slice_thickness_and_its_fallback_to_the_slice_spacing():
    assert _failures(_head(SliceThickness="12")) == [
        ("slice-thickness", "slice thickness 12 mm, the model takes 0.5-10 mm")]
    # Without Slice Thickness the spacing of the positions speaks: a narrowed range then fails on it.
    found = _failures(_head(SliceThickness=None), parse_match({"sliceThicknessMm": {"max": 1.0}}))
    assert [c for c, _ in found] == ["slice-thickness"] and "the model takes 0.5-1 mm" in found[0][1]


def test_kernel():
    assert _failures(_head(ConvolutionKernel="BONE"), parse_match({"kernelPattern": "(?i)brain|soft|H3"})) == [
        ("kernel", "reconstruction kernel BONE is not one the model was trained on")]
    # Multi-valued kernels (Siemens) are matched as the DICOM string; a series without a kernel passes.
    assert _failures(_head(ConvolutionKernel=["Hr38h", "3"]), parse_match({"kernelPattern": r"Hr38h\\3"})) == []
    assert _failures(_head(ConvolutionKernel=None), parse_match({"kernelPattern": "BONE"})) == []


def _restack(series: Series, orientation: list[float], step: np.ndarray) -> Series:
    for k, s in enumerate(series.slices):
        s.header.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        s.header.ImagePositionPatient = [f"{v:.4f}" for v in step * k]
    return series


def test_orientation_sagittal_is_refused():
    series = _restack(_head(), [0, 1, 0, 0, 0, -1], np.array([5.0, 0, 0]))
    assert _failures(series) == [("orientation", "slices 90 degrees from axial, the model takes at most 35")]


@pytest.mark.parametrize(("tilt", "passes"), [(20.0, True), (40.0, False)])
def test_gantry_tilt_seen_as_a_sheared_stack(tilt, passes):
    # A tilted gantry: axial image plane (normal z), table steps along z, each slice shifted in y by z*tan(tilt).
    step = np.array([0.0, 5.0 * math.tan(math.radians(tilt)), 5.0])
    series = _restack(_head(GantryDetectorTilt=None, SliceThickness=None), [1, 0, 0, 0, 1, 0], step)
    expected = [] if passes else [("orientation", "gantry tilt 40 degrees, the model takes at most 30")]
    assert _failures(series) == expected


def test_gantry_tilt_from_the_header():
    assert _failures(_head(GantryDetectorTilt="33")) == [
        ("orientation", "gantry tilt 33 degrees, the model takes at most 30")]


def test_a_missing_slice_is_a_spacing_gap():
    dss = datasets(7, slices=24, rows=256)
    series = series_of(dss[:10] + dss[11:])
    (found,) = _failures(series)
    assert found[0] == "spacing-gap"
    assert found[1].startswith("a gap of ") and "after slice 10 of 23" in found[1] and "missing or extra" in found[1]


def test_two_acquisitions_in_one_series_share_positions():
    dss = datasets(7, slices=16, rows=256)
    series = series_of(dss + datasets(7, slices=16, rows=256))
    series.slices.sort(key=lambda s: float(s.header.ImagePositionPatient[2]))
    assert _failures(series)[0][0] == "spacing-gap"


# ---------------------------------------------------------------- how the use case narrows the model


def parse_match(match: dict[str, object]) -> Match:
    """A Match as the operator renders it (camelCase keys), validated by the routing config."""
    config = parse_config({"useCases": [{"name": "u", "model": {"name": "ich_detector", "version": 1},
                                         "match": match}]})
    return config.use_cases[0].match


def test_a_use_case_only_narrows():
    req = effective_requirements(ICH, parse_match({
        "modalities": ["CT", "MR"], "bodyPartsExamined": ["HEAD", "NECK"], "sliceThicknessMm": {"min": 2, "max": 50},
        "sliceCount": {"max": 400}, "minMatrix": 128, "maxGantryTiltDegrees": 10, "imageTypeRequired": ["AXIAL"],
    }))
    assert req.modalities == {"CT"} and req.body_parts == {"HEAD"}
    assert req.slice_thickness_mm == (2, 10.0) and req.slice_count == (16, 400)
    assert req.min_matrix == 256 and req.max_gantry_tilt_degrees == 10
    assert req.image_type_required == {"ORIGINAL", "PRIMARY", "AXIAL"}
    # Disjoint ranges admit nothing, and the message says so.
    found = _failures(_head(), parse_match({"sliceThicknessMm": {"min": 20}}))
    assert found == [("slice-thickness", "slice thickness 5 mm, the model takes nothing (the use case's range and "
                                         "the model's do not overlap)")]


def test_invalid_narrowing_is_a_config_error():
    from pacsflow_router.config import ConfigError

    with pytest.raises(ConfigError, match=r"useCases\[0\].match.sliceCount: .*min 20.0 is above max 10.0"):
        parse_match({"sliceCount": {"min": 20, "max": 10}})
    with pytest.raises(ConfigError, match=r"kernelPattern.*regular expression"):
        parse_match({"kernelPattern": "(bone"})


# ---------------------------------------------------------------- choosing among series


def test_the_best_passing_series_is_chosen_and_the_audit_says_why():
    localizer = series_of(datasets(7, slices=3, rows=256, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    thick = series_of(datasets(7, slices=24, rows=256))
    thin = series_of(datasets(7, slices=48, rows=256))
    dose = series_of(datasets(7, slices=1, rows=256, ImageType=["DERIVED", "SECONDARY", "SCREEN SAVE"]))
    selection = select_series(ICH, Match(), study_of(localizer, thick, thin, dose))
    assert selection.series is thin
    assert selection.explanation == ("chose series 3 of 4: 2 failed image-type; 2 passed, chosen has the most "
                                     "slices (48)")


def test_when_none_passes_the_closest_series_gives_the_reason():
    localizer = series_of(datasets(7, slices=3, rows=256, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    short = series_of(datasets(7, slices=8, rows=256))
    selection = select_series(ICH, Match(), study_of(localizer, short))
    assert selection.series is None
    assert selection.failure is not None and selection.failure.code == "slice-count"
    assert selection.explanation == ("no series passes (2 candidates: 1 failed image-type, 1 failed slice-count); "
                                     "closest: series 2: 8 slices, the model needs at least 16")


def test_other_modalities_and_descriptions_are_not_applicable():
    selection = select_series(ICH, parse_match({"seriesDescriptionPattern": "(?i)non.?con"}),
                              study_of(_head(SeriesDescription="Head C+")))
    assert not selection.applicable and selection.failure is None


# ---------------------------------------------------------------- real scanner files


def _real(name: str) -> Series | None:
    path = scanner_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notes on these files' own encoding quirks
        study = load_study(StudyRef(study_uid="1.2.3", key="0" * 16, paths=(str(path),), last_received=0.0))
    selection = select_series(ICH, Match(), study)
    return selection.series if selection.applicable else None


@pytest.mark.parametrize(("name", "code", "message"), [
    # pydicom's own CT: one 128x128 slice with contrast, no body part; the headline is the anatomy.
    ("CT_small.dcm", "body-part", "body part not stated and no description names it; the model needs "
                                  "BRAIN/HEAD/SKULL"),
    # A real head slice (tilted 22 degrees): only its being one slice stops it.
    ("J2K_pixelrep_mismatch.dcm", "slice-count", "1 slice, the model needs at least 16"),
    ("693_UNCI.dcm", "image-type", "Image Type is DERIVED/PRIMARY/AXIAL, the model needs ORIGINAL/PRIMARY "
                                   "(missing ORIGINAL)"),
    ("bad_sequence.dcm", "body-part", "body part NECK, the model needs BRAIN/HEAD/SKULL"),
    ("explicit_VR-UN.dcm", "body-part", "body part PANCREAS, the model needs BRAIN/HEAD/SKULL"),
    # Enhanced CT (2 frames, a perfusion map): derived, and 2 slices.
    ("eCT_Supplemental.dcm", "image-type", "Image Type is DERIVED/PRIMARY/PERFUSION, the model needs "
                                           "ORIGINAL/PRIMARY (missing ORIGINAL)"),
])
def test_real_scanner_ct_files_are_not_analysed_and_say_why(name, code, message):
    path = scanner_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = load_study(StudyRef(study_uid="1.2.3", key="0" * 16, paths=(str(path),), last_received=0.0))
    selection = select_series(ICH, Match(), study)
    assert selection.applicable and selection.series is None
    assert selection.failure is not None
    assert (selection.failure.code, selection.failure.message) == (code, message)


def test_ct_small_fails_every_criterion_it_should():
    path = get_testdata_file("CT_small.dcm")
    study = load_study(StudyRef(study_uid="1.2.3", key="0" * 16, paths=(str(path),), last_received=0.0))
    assert _failures(study.series[0]) == [
        ("body-part", "body part not stated and no description names it; the model needs BRAIN/HEAD/SKULL"),
        ("contrast", "contrast agent given, the model needs a non-contrast series"),
        ("slice-count", "1 slice, the model needs at least 16"),
        ("matrix", "matrix 128x128, the model needs at least 256"),
    ]


def test_a_real_tilted_head_slice_fails_only_for_being_one_slice():
    # J2K_pixelrep_mismatch.dcm: a head CT slice with a 22 degree tilted image plane (Gantry/Detector Tilt -22).
    path = get_testdata_file("J2K_pixelrep_mismatch.dcm")
    study = load_study(StudyRef(study_uid="1.2.3", key="0" * 16, paths=(str(path),), last_received=0.0))
    assert _failures(study.series[0]) == [("slice-count", "1 slice, the model needs at least 16")]


def test_a_thumbnail_series_fails_its_matrix():
    # A 16x16 thumbnail of a head (a preview series some scanners send): too coarse on both counts.
    found = _failures(series_of(datasets(7, slices=16, rows=16)))
    assert [c for c, _ in found] == ["matrix", "pixel-spacing"]
    assert found[0][1] == "matrix 16x16, the model needs at least 256"
    assert found[1][1].startswith("pixel spacing 1") and found[1][1].endswith(" mm, the model takes 0.2-1.3 mm")


@pytest.mark.parametrize("name", ["MR_small.dcm", "emri_small.dcm", "RG1_UNCR.dcm"])
def test_other_modalities_are_not_applicable_to_a_ct_model(name):
    assert _real(name) is None


RADIOGRAPH = ModelManifest.model_validate({
    "finding": {"type": {"value": "36118008", "scheme": "SCT", "meaning": "Pneumothorax"},
                "procedure": {"value": "399208008", "scheme": "SCT", "meaning": "Plain chest X-ray"},
                "presentStatement": "p", "absentStatement": "a"},
    "requirements": {"modalities": ["CR", "DX"], "bodyParts": ["CHEST"], "minMatrix": 1024,
                     "imageTypeRequired": ["PRIMARY"],
                     "imageTypeExcluded": ["LOCALIZER", "SECONDARY"], "sliceCount": {"min": 16},
                     "maxAxialDeviationDegrees": 10, "maxSpacingDeviation": 0.1},
    "output": {"geometry": "image"},
})


def test_an_image_model_skips_the_volume_criteria_on_a_real_radiograph():
    path = scanner_file("RG1_UNCR.dcm")
    study = load_study(StudyRef(study_uid="1.2.3", key="0" * 16, paths=(str(path),), last_received=0.0))
    # One image, no Image Orientation, no slice thickness: a radiograph, and none of that matters to this model.
    selection = select_series(RADIOGRAPH, Match(), study)
    assert selection.failure is None and selection.series is study.series[0]
    # This device sends Pixel Spacing 0\\0 and no Imager Pixel Spacing: a model that needs the scale says so.
    needs_scale = RADIOGRAPH.model_copy(update={"requirements": RADIOGRAPH.requirements.model_copy(
        update={"pixel_spacing_mm": Range(min=0.1, max=0.5)})})
    failure = select_series(needs_scale, Match(), study).failure
    assert failure is not None and (failure.code, failure.message) == ("pixel-spacing", "pixel spacing not stated")
    # An extremity radiograph fails its anatomy.
    extremity = get_testdata_file("RG3_UNCR.dcm")
    study = load_study(StudyRef(study_uid="1.2.4", key="0" * 16, paths=(str(extremity),), last_received=0.0))
    failure = select_series(RADIOGRAPH, Match(), study).failure
    assert failure is not None and (failure.code, failure.message) == (
        "body-part", "body part EXTREMITY, the model needs CHEST")


def test_an_enhanced_multiframe_head_is_read_from_its_functional_groups(tmp_path):
    """Legacy Converted Enhanced CT of a phantom head: geometry, spacing and thickness live in the functional groups.

    Through the loader (per-frame header views) and from the raw multi-frame header alone (every slice sharing the
    instance's header, ``frame_number`` set): both pass, the same way as the classic images.
    """
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    from pacsflow_router.domain import Slice

    dss = datasets(7, slices=17, rows=256)
    lce = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=dss, series_instance_uid=generate_uid(), series_number=5,
        sop_instance_uid=generate_uid(), instance_number=1)
    path = tmp_path / "lce.dcm"
    lce.save_as(path, enforce_file_format=True)
    study = load_study(StudyRef(study_uid="1.2.3", key="0" * 16, paths=(str(path),), last_received=0.0))
    assert select_series(ICH, Match(), study).failure is None
    raw = pydicom.dcmread(path)
    assert "ImagePositionPatient" not in raw and "PixelSpacing" not in raw
    shared = Series(series_uid="s", modality="CT", body_part=str(raw.get("BodyPartExamined", "")),
                    description=str(raw.get("SeriesDescription", "")),
                    slices=[Slice(header=raw, pixels=frame, frame_number=i + 1)
                            for i, frame in enumerate(raw.pixel_array)])
    assert _failures(shared) == []
    # The per-frame positions are really read: drop one frame's worth of them and the gap shows.
    del shared.slices[8]
    for i, s in enumerate(shared.slices):
        s.frame_number = i + 1 if i < 8 else i + 2
    assert [c for c, _ in _failures(shared)] == ["spacing-gap"]
