"""Inputs real scanners send, through volume.load_study: multi-frame images and partial series.

Multi-frame: Legacy Converted Enhanced CT built by highdicom from a phantom series (known geometry and lesion),
the Enhanced CT of ``pydicom-data`` (functional groups from a real vendor) and pydicom's Enhanced MR. Each frame
must reach the pipeline exactly as the single-frame image it came from would: same pixels, same rescale, same
geometry, and the finding must name the frame.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.uid import RLELossless, generate_uid

from pacsflow_router.analysis import volume
from pacsflow_router.analysis.findings import summarize
from pacsflow_router.analysis.preprocess import rescale_of
from pacsflow_router.errors import UnparseableInstanceError
from tests.unit.pacsflow_router.realinputs import legacy_converted, load, output_at, phantom_datasets, write

GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


def _floats(value) -> list[float]:
    return [float(v) for v in (value if isinstance(value, list | pydicom.multival.MultiValue) else [value])]


def test_legacy_converted_enhanced_ct_frames_are_the_single_frame_images(tmp_path):
    datasets, truth = phantom_datasets(21, slices=8)
    single = load(write(datasets, tmp_path / "single"), truth.study_instance_uid).series[0]
    lce = legacy_converted(datasets)
    multi_study = load(write([lce], tmp_path / "multi"), truth.study_instance_uid)
    (multi,) = multi_study.series

    assert len(multi.slices) == len(single.slices) == 8
    assert {s.frame_number for s in multi.slices} == set(range(1, 9))
    assert all(s.frame_number is None for s in single.slices)
    for one, frame in zip(single.slices, multi.slices, strict=True):
        np.testing.assert_array_equal(frame.pixels, one.pixels)
        for keyword in GEOMETRY:
            assert _floats(frame.header[keyword].value) == pytest.approx(_floats(one.header[keyword].value))
        assert float(frame.header.SliceThickness) == pytest.approx(float(one.header.SliceThickness))
        assert rescale_of(frame.header) == rescale_of(one.header)
        # The frame is referenced through the multi-frame instance, never through a UID of its own.
        assert frame.header.SOPInstanceUID == lce.SOPInstanceUID
        assert frame.header.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.2"  # Legacy Converted Enhanced CT
        assert "PerFrameFunctionalGroupsSequence" not in frame.header
    assert multi.complete and multi.expected_images == 8


def test_finding_on_a_multi_frame_series_names_the_frame_and_the_patient_point(tmp_path):
    datasets, truth = phantom_datasets(22, slices=8)
    lesion = truth.lesions[0]
    lce = legacy_converted(datasets)
    (series,) = load(write([lce], tmp_path), truth.study_instance_uid).series
    index = lesion.slice_indices[len(lesion.slice_indices) // 2]
    # the frame whose plane holds the lesion's centre slice (the ground truth counts slices in acquisition order)
    target = datasets[index]
    k = next(i for i, s in enumerate(series.slices)
             if _floats(s.header.ImagePositionPatient) == pytest.approx(_floats(target.ImagePositionPatient)))
    row, col = lesion.pixel_centre
    finding = summarize(series, output_at(series, k, row, col), critical_threshold=None)

    assert finding.sop_instance_uid == lce.SOPInstanceUID
    assert finding.frame_number == series.slices[k].frame_number
    assert finding.frame_of_reference_uid == datasets[0].FrameOfReferenceUID
    assert finding.patient_point is not None
    spacing = max(truth.pixel_spacing_mm)
    assert np.allclose(finding.patient_point[:2], lesion.centre_mm[:2], atol=2 * spacing)
    assert abs(finding.patient_point[2] - float(target.ImagePositionPatient[2])) < 1e-3


def test_real_enhanced_ct_takes_rescale_and_geometry_from_the_functional_groups(tmp_path):
    source = get_testdata_file("eCT_Supplemental.dcm")
    assert source is not None, "pydicom-data's eCT_Supplemental.dcm (pip install pydicom-data)"
    ds = pydicom.dcmread(source)
    assert "RescaleSlope" not in ds and "ImagePositionPatient" not in ds  # only in the functional groups
    study = load([source], ds.StudyInstanceUID)
    (series,) = study.series
    assert len(series.slices) == int(ds.NumberOfFrames) == 2
    shared = ds.SharedFunctionalGroupsSequence[0]
    for s in series.slices:
        frame = ds.PerFrameFunctionalGroupsSequence[s.frame_number - 1]
        assert _floats(s.header.ImagePositionPatient) == _floats(
            frame.PlanePositionSequence[0].ImagePositionPatient)
        assert _floats(s.header.ImageOrientationPatient) == _floats(
            shared.PlaneOrientationSequence[0].ImageOrientationPatient)
        measures = shared.PixelMeasuresSequence[0]
        assert _floats(s.header.PixelSpacing) == _floats(measures.PixelSpacing)
        assert float(s.header.SliceThickness) == float(measures.SliceThickness)
        assert rescale_of(s.header) == (1.0, -1024.0)
        np.testing.assert_array_equal(s.pixels, ds.pixel_array[s.frame_number - 1])
        assert list(s.header.ImageType) == list(shared.CTImageFrameTypeSequence[0].FrameType)


def test_real_enhanced_mr_without_functional_geometry_still_loads_every_frame(tmp_path):
    source = get_testdata_file("emri_small.dcm")
    ds = pydicom.dcmread(source)
    (series,) = load([source], ds.StudyInstanceUID).series
    assert [s.frame_number for s in series.slices] == list(range(1, int(ds.NumberOfFrames) + 1))
    np.testing.assert_array_equal(np.stack([s.pixels for s in series.slices]), ds.pixel_array)
    assert series.modality == "MR" and series.complete


def _truncate(ds) -> None:
    # The header parses; the pixel data is a fraction of Rows x Columns (a truncated transfer).
    ds.PixelData = ds.PixelData[:100]


def test_an_undecodable_slice_is_skipped_and_recorded_the_rest_is_loaded(tmp_path):
    datasets, truth = phantom_datasets(23, slices=8)
    bad = datasets[3]
    _truncate(bad)
    (series,) = load(write(datasets, tmp_path), truth.study_instance_uid).series
    assert len(series.slices) == 7
    assert [(s.sop_instance_uid, s.reason) for s in series.skipped] == [(bad.SOPInstanceUID, "pixel data not decodable")]
    # the skipped slice's position is known: its gap is not counted again as missing
    assert series.missing == 0 and series.expected_images == 8 and not series.complete
    assert series.coverage() == "7 of 8 images analysed; not analysed: 1 pixel data not decodable"


def test_a_slice_never_sent_is_counted_missing_from_the_gap(tmp_path):
    datasets, truth = phantom_datasets(24, slices=8)
    sent = datasets[:4] + datasets[5:]
    (series,) = load(write(sent, tmp_path), truth.study_instance_uid).series
    assert len(series.slices) == 7 and series.missing == 1 and series.expected_images == 8
    assert series.coverage() == "7 of 8 images analysed; not analysed: 1 missing"
    # the last slice gone leaves no gap: nothing says it existed
    (series,) = load(write(datasets[:7], tmp_path / "end"), truth.study_instance_uid).series
    assert series.missing == 0 and series.complete


def test_a_study_with_nothing_decodable_still_fails_to_load(tmp_path):
    datasets, truth = phantom_datasets(25, slices=3)
    for ds in datasets:
        _truncate(ds)
    with pytest.raises(UnparseableInstanceError):
        load(write(datasets, tmp_path), truth.study_instance_uid)


def test_missing_images_counts_whole_multiples_only():
    assert volume.missing_images([0, 5, 10, 20, 25]) == 1
    assert volume.missing_images([0, 5, 10, 25, 30]) == 2
    assert volume.missing_images([0, 5, 10, 17.5, 22.5]) == 0  # 1.5 steps: an irregular stack, not a dropped slice
    assert volume.missing_images([0, 10]) == 0
    assert volume.missing_images([0, 0, 5, 5, 10, 10]) == 0  # two acquisitions at the same positions


def test_a_damaged_frame_of_a_compressed_multi_frame_is_skipped_the_other_frames_are_loaded(tmp_path):
    datasets, truth = phantom_datasets(26, slices=6, size=32)
    lce = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=datasets, series_instance_uid=generate_uid(), series_number=1,
        sop_instance_uid=generate_uid(), instance_number=1, transfer_syntax_uid=RLELossless,
    )
    frames = [b"".join(f) for f in generate_fragmented_frames(lce.PixelData, number_of_frames=6)]
    frames[2] = frames[2][:20]  # frame 3: a truncated RLE segment
    lce.PixelData = encapsulate(frames)
    (series,) = load(write([lce], tmp_path), truth.study_instance_uid).series
    assert sorted(s.frame_number for s in series.slices) == [1, 2, 4, 5, 6]
    assert [(s.sop_instance_uid, s.reason, s.images) for s in series.skipped] == [
        (lce.SOPInstanceUID, "frames not decodable", 1)]
    # frame 3's plane is known from its functional groups: its gap is not counted again as missing
    assert series.missing == 0 and series.expected_images == 6
    assert series.coverage() == "5 of 6 images analysed; not analysed: 1 frames not decodable"
