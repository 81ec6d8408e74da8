"""volume.load_study on spooled phantom files: grouping, slice order, decoding, missing tags, any matrix."""

import random

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from pacsflow_router import domain
from pacsflow_router.analysis import volume
from pacsflow_router.errors import UnparseableInstanceError
from pacsflow_router.models import phantom


def _ref(paths) -> domain.StudyRef:
    return domain.StudyRef(study_uid="1.2.3", key="k", paths=tuple(str(p) for p in paths), last_received=0.0)


def test_slices_come_back_sorted_along_the_normal_whatever_the_file_order(tmp_path):
    paths, truth = phantom.write_study(tmp_path, 21, lesion=True, slices=8, rows=64, cols=64)
    shuffled = list(paths)
    random.Random(1).shuffle(shuffled)
    study = volume.load_study(_ref(shuffled))
    assert len(study.series) == 1
    series = study.series[0]
    assert series.series_uid == truth.series_instance_uid
    assert (series.modality, series.body_part, series.description) == ("CT", "HEAD", "Head non-con")
    assert [int(s.header.InstanceNumber) for s in series.slices] == list(range(1, 9))
    original = pydicom.dcmread(paths[3])
    assert np.array_equal(series.slices[3].pixels, original.pixel_array)
    assert "PixelData" not in series.slices[3].header
    assert study.first_header.StudyInstanceUID == truth.study_instance_uid


def test_feet_first_order_follows_the_normal_not_the_instance_number(tmp_path):
    paths, _ = phantom.write_study(tmp_path, 22, lesion=False, slices=4, rows=32, cols=32)
    # Renumber in reverse: InstanceNumber now disagrees with position; position must win.
    for i, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = 10 - i
        ds.save_as(p)
    series = volume.load_study(_ref(paths)).series[0]
    z = [float(s.header.ImagePositionPatient[2]) for s in series.slices]
    assert z == sorted(z)


def test_missing_optional_tags_fall_back_to_instance_number(tmp_path):
    paths, _ = phantom.write_study(tmp_path, 23, lesion=False, slices=5, rows=32, cols=48)
    for p in paths:
        ds = pydicom.dcmread(p)
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceLocation",
                        "BodyPartExamined", "SeriesDescription", "RescaleSlope", "RescaleIntercept",
                        "FrameOfReferenceUID"):
            delattr(ds, keyword)
        ds.save_as(p)
    series = volume.load_study(_ref(reversed(paths))).series[0]
    assert [int(s.header.InstanceNumber) for s in series.slices] == [1, 2, 3, 4, 5]
    assert series.body_part == "" and series.description == ""
    assert series.slices[0].pixels.shape == (32, 48)


@pytest.mark.parametrize("ts", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_instances_are_decoded(tmp_path, ts):
    plain, _ = phantom.write_study(tmp_path / "plain", 24, lesion=True, slices=2, rows=40, cols=40)
    packed, _ = phantom.write_study(tmp_path / "packed", 24, lesion=True, slices=2, rows=40, cols=40,
                                    transfer_syntax_uid=ts)
    a = volume.load_study(_ref(plain)).series[0]
    b = volume.load_study(_ref(packed)).series[0]
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a.slices, b.slices, strict=True))


def test_two_series_are_grouped_and_non_images_skipped(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.1"
    a, ta = phantom.write_study(tmp_path / "a", 25, lesion=False, slices=3, rows=32, cols=32, study_instance_uid=uid)
    b, tb = phantom.write_study(tmp_path / "b", 26, lesion=False, slices=2, rows=48, cols=48, study_instance_uid=uid)
    no_pixels = pydicom.dcmread(a[0])
    del no_pixels.PixelData
    no_pixels.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    no_pixels.save_as(tmp_path / "nopixels.dcm")
    study = volume.load_study(_ref([*b, *a, tmp_path / "nopixels.dcm"]))
    by_uid = {s.series_uid: s for s in study.series}
    assert len(by_uid[ta.series_instance_uid].slices) == 3
    assert len(by_uid[tb.series_instance_uid].slices) == 2


def test_unreadable_files_are_skipped_but_an_all_bad_study_fails(tmp_path):
    paths, _ = phantom.write_study(tmp_path, 27, lesion=False, slices=2, rows=32, cols=32)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 10)
    assert len(volume.load_study(_ref([junk, *paths])).series[0].slices) == 2
    with pytest.raises(UnparseableInstanceError, match="none of its 1 instances"):
        volume.load_study(_ref([junk]))
