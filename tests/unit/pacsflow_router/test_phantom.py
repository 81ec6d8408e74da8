"""The phantom generator: realistic, valid, reproducible head-CT studies whose ground truth is right."""

import json
import math
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, JPEG2000Lossless, JPEGLSLossless, RLELossless

from pacsflow_router.models import phantom


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def test_same_seed_same_study_different_seed_different_study():
    a, truth_a = phantom.generate_study(11, lesion=True, slices=4, rows=128, cols=128)
    b, truth_b = phantom.generate_study(11, lesion=True, slices=4, rows=128, cols=128)
    c, truth_c = phantom.generate_study(12, lesion=True, slices=4, rows=128, cols=128)
    assert truth_a == truth_b
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert all(x.PixelData == y.PixelData for x, y in zip(a, b, strict=True))
    assert truth_c.study_instance_uid != truth_a.study_instance_uid
    assert a[0].PixelData != c[0].PixelData


def test_headers_describe_an_axial_head_ct_series():
    datasets, truth = phantom.generate_study(3, lesion=False, slices=5, rows=96, cols=80)
    assert len({d.SOPInstanceUID for d in datasets}) == 5
    for k, ds in enumerate(datasets):
        assert ds.SOPClassUID == CTImageStorage
        assert ds.Modality == "CT" and ds.BodyPartExamined == "HEAD"
        assert "non-con" in ds.SeriesDescription
        assert ds.StudyInstanceUID == truth.study_instance_uid
        assert ds.SeriesInstanceUID == truth.series_instance_uid
        assert ds.PatientName.family_name == "PHANTOM"
        assert (ds.Rows, ds.Columns) == (96, 80)
        assert ds.pixel_array.dtype == np.int16
        assert ds.RescaleType == "HU" and float(ds.RescaleIntercept) == -1024.0
        assert ds.InstanceNumber == k + 1
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert float(ds.SliceThickness) == pytest.approx(truth.slice_spacing_mm, abs=1e-4)
    z = [float(d.ImagePositionPatient[2]) for d in datasets]
    assert np.allclose(np.diff(z), truth.slice_spacing_mm, atol=1e-4)


def test_given_study_uid_is_used():
    datasets, truth = phantom.generate_study(1, lesion=False, slices=2, rows=32, cols=32,
                                             study_instance_uid="1.2.3.4.5")
    assert truth.study_instance_uid == "1.2.3.4.5"
    assert {d.StudyInstanceUID for d in datasets} == {"1.2.3.4.5"}


def test_tissues_have_plausible_attenuation():
    datasets, truth = phantom.generate_study(7, lesion=False, slices=3, rows=256, cols=256)
    hu = _hu(datasets[1])
    centre = hu[118:138, 118:138]
    assert -5 < float(np.median(centre)) < 45  # brain (or a ventricle near the middle)
    assert float(hu[0:10, 0:10].mean()) < -950  # air
    assert float(hu.max()) > 1000  # skull
    assert not truth.has_lesion and truth.lesions == ()


@pytest.mark.parametrize("kind", phantom.HEMORRHAGE_TYPES)
@pytest.mark.parametrize("seed", [2, 9])
def test_hemorrhages_are_blood_dense_where_the_truth_says(seed, kind):
    datasets, truth = phantom.generate_study(seed, lesion=True, slices=16, rows=256, cols=256, hemorrhage=kind)
    assert truth.has_lesion and 1 <= len(truth.lesions) <= 2
    assert truth.lesions[0].kind == kind and kind in truth.hemorrhage_types
    for lesion in truth.lesions:
        assert lesion.slice_indices and lesion.location and lesion.volume_ml > 0
        assert 50 <= lesion.hu <= 90
        # The centre lies on a slice that shows the lesion, on a pixel that is mostly blood.
        z = [float(d.ImagePositionPatient[2]) for d in datasets]
        k = int(np.argmin(np.abs(np.asarray(z) - lesion.centre_mm[2])))
        assert k in lesion.slice_indices
        row, col = (round(v) for v in lesion.pixel_centre)
        patch = _hu(datasets[k])[row - 1:row + 2, col - 1:col + 2]
        assert 35 < float(patch.max()) < 130, f"{kind}: {patch}"
        # ... and the pixel centre agrees with the patient-space centre through the image plane.
        ds = datasets[k]
        spacing = float(ds.PixelSpacing[0])
        x0, y0 = float(ds.ImagePositionPatient[0]), float(ds.ImagePositionPatient[1])
        assert x0 + lesion.pixel_centre[1] * spacing == pytest.approx(lesion.centre_mm[0], abs=0.05)
        assert y0 + lesion.pixel_centre[0] * spacing == pytest.approx(lesion.centre_mm[1], abs=0.05)
    assert set(truth.positive_slices) == {k for les in truth.lesions for k in les.slice_indices}


def test_hemorrhage_shapes_follow_their_type():
    def extent(kind, seed=3):
        _, truth = phantom.generate_study(seed, lesion=True, slices=24, rows=256, cols=256, hemorrhage=kind)
        return truth.lesions[0]

    sdh, edh, iph = extent("subdural"), extent("epidural"), extent("intraparenchymal")
    # A subdural crescent spreads along the skull; an epidural lens is shorter; a clot is at most 30 mm across.
    assert max(sdh.semi_axes_mm[:2]) > 20
    assert iph.radius_mm <= 15 * 1.25 + 2
    assert "convexity" in sdh.location and "convexity" in edh.location
    assert "ventricle" in extent("intraventricular").location


def test_varied_acquisitions_tilt_thickness_and_fov():
    tilts, thicknesses, fovs = set(), set(), set()
    for seed in range(30, 42):
        datasets, truth = phantom.generate_study(seed, lesion=False, slices=2, rows=64, cols=64, varied=True)
        ds = datasets[0]
        tilt = float(ds.GantryDetectorTilt)
        tilts.add(tilt > 0)
        thicknesses.add(float(ds.SliceThickness))
        fovs.add(round(float(ds.PixelSpacing[0]) * 64))
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        assert np.degrees(np.arccos(iop[4])) == pytest.approx(tilt, abs=1e-3)
        # The table moves along z: the stack is sheared by the tilt, spacing along the normal is smaller.
        ipp = np.array([[float(v) for v in d.ImagePositionPatient] for d in datasets])
        assert np.allclose(ipp[1] - ipp[0], [0, 0, truth.slice_spacing_mm], atol=1e-3)
        assert float(ds.SpacingBetweenSlices) == pytest.approx(truth.slice_spacing_mm * math.cos(math.radians(tilt)),
                                                               abs=1e-4)
        assert truth.acquisition["gantry_tilt_deg"] == pytest.approx(tilt, abs=1e-3)
    assert tilts == {True, False} and len(thicknesses) >= 3 and len(fovs) >= 5


@pytest.mark.parametrize("seed", [5, 6])
def test_physiological_calcifications_are_dense_and_not_hemorrhages(seed):
    datasets, truth = phantom.generate_study(seed, lesion=False, slices=24, rows=256, cols=256,
                                             mimics=["calcifications"])
    assert not truth.has_lesion and truth.mimics == ("calcifications",)
    assert {"pineal", "choroid_plexus", "falx", "basal_ganglia"} <= set(truth.calcifications)
    # Calcifications: small, 150+ HU, inside the brain (away from the skull: more than 15 mm from any 900+ HU).
    from scipy import ndimage

    found = 0
    for ds in datasets:
        hu = _hu(ds)
        far_from_bone = ndimage.distance_transform_edt(hu < 900) * float(ds.PixelSpacing[0]) > 15
        found += int(((hu > 150) & far_from_bone).sum())
    assert found > 10


def test_bone_only_heads_have_a_skull_and_no_brain():
    datasets, truth = phantom.generate_study(4, lesion=True, slices=6, rows=128, cols=128, mimics=["bone_only"])
    assert not truth.has_lesion  # no brain, no hemorrhage
    hu = _hu(datasets[3])
    assert float(hu.max()) > 1000
    inside = hu[54:74, 54:74]
    assert abs(float(np.median(inside))) < 20 and float(inside.std()) < 12


def test_dense_falx_is_a_midline_line_in_the_blood_range():
    plain, _ = phantom.generate_study(12, lesion=False, slices=8, rows=256, cols=256)
    dense, truth = phantom.generate_study(12, lesion=False, slices=8, rows=256, cols=256, mimics=["dense_falx"])
    assert not truth.has_lesion and truth.mimics == ("dense_falx",)

    def bright(ds_list):
        return sum(int(((_hu(d) > 55) & (_hu(d) < 100)).sum()) for d in ds_list)
    assert bright(dense) > bright(plain) + 50


def test_studies_without_lesion_have_no_clot_in_the_brain():
    datasets, _ = phantom.generate_study(2, lesion=False, slices=16, rows=256, cols=256)
    with_lesion, _ = phantom.generate_study(2, lesion=True, slices=16, rows=256, cols=256)
    # Same anatomy (same seed), so only the lesion adds brain pixels in the 60-90 HU range.
    def clot_pixels(ds_list):
        return sum(int(((_hu(d) > 60) & (_hu(d) < 95)).sum()) for d in ds_list)
    assert clot_pixels(with_lesion) > clot_pixels(datasets) + 20


@pytest.mark.parametrize("ts", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_are_lossless(ts):
    plain, _ = phantom.generate_study(5, lesion=True, slices=2, rows=64, cols=48)
    packed, _ = phantom.generate_study(5, lesion=True, slices=2, rows=64, cols=48, transfer_syntax_uid=ts)
    assert packed[0].file_meta.TransferSyntaxUID == ts
    assert packed[0].SOPInstanceUID == plain[0].SOPInstanceUID
    assert np.array_equal(packed[1].pixel_array, plain[1].pixel_array)


def test_written_files_pass_dciodvfy(tmp_path):
    if shutil.which("dciodvfy") is None:
        pytest.fail("dciodvfy missing: run scripts/install-system-deps.sh (Debian dicom3tools)")
    paths, _ = phantom.write_study(tmp_path, 8, lesion=True, slices=2, rows=64, cols=64)
    result = subprocess.run(["dciodvfy", str(paths[0])], capture_output=True, text=True, check=False)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
    assert "CTImage" in result.stdout + result.stderr


def test_cli_writes_studies_and_ground_truth(tmp_path):
    out = tmp_path / "out"
    assert phantom.main(["--out", str(out), "--studies", "3", "--seed", "40", "--lesion-fraction", "0.34",
                         "--slices", "3", "--rows", "64", "--cols", "64"]) == 0
    truth = json.loads((out / "ground_truth.json").read_text())["studies"]
    assert [t["has_lesion"] for t in truth] == [False, False, True]
    assert [t["seed"] for t in truth] == [40, 41, 42]
    for entry in truth:
        files = sorted((out / entry["folder"]).glob("*.dcm"))
        assert len(files) == 3
        assert pydicom.dcmread(files[0]).StudyInstanceUID == entry["study_instance_uid"]


def test_lesion_schedule_is_exact_and_interleaved():
    assert phantom.lesion_schedule(4, 0.5) == [False, True, False, True]
    assert sum(phantom.lesion_schedule(40, 0.5)) == 20
    assert phantom.lesion_schedule(3, 0.0) == [False] * 3
    assert phantom.lesion_schedule(3, 1.0) == [True] * 3
