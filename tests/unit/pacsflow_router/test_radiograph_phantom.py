"""The synthetic chest-radiograph generator: deterministic, the storage variants it promises, a visible finding."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from pacsflow_router.models import radiograph_phantom as rp


def test_same_seed_same_image_and_uids():
    a = rp.generate_radiograph(42, pneumothorax=True, rows=512, cols=448)
    b = rp.generate_radiograph(42, pneumothorax=True, rows=512, cols=448)
    assert a.dataset.PixelData == b.dataset.PixelData
    assert a.truth == b.truth
    c = rp.generate_radiograph(43, pneumothorax=True, rows=512, cols=448)
    assert c.truth.study_instance_uid != a.truth.study_instance_uid


@pytest.mark.parametrize(("modality", "photometric", "bits"), [
    ("DX", "MONOCHROME1", (16, 14)), ("DX", "MONOCHROME2", (16, 16)), ("CR", "MONOCHROME1", (16, 10)),
    ("CR", "MONOCHROME2", (8, 8)),
])
def test_storage_variants_are_valid_pixel_data(tmp_path, modality, photometric, bits):
    path, truth = rp.write_radiograph(tmp_path, 7, pneumothorax=False, rows=640, cols=512, modality=modality,
                                      photometric_interpretation=photometric, bits=bits, voi_window=True)
    ds = pydicom.dcmread(path)
    assert ds.Modality == modality and ds.PhotometricInterpretation == photometric
    assert ds.SOPClassUID == (rp.DX_STORAGE if modality == "DX" else rp.CR_STORAGE)
    assert (ds.BitsAllocated, ds.BitsStored) == bits and ds.BodyPartExamined == "CHEST"
    pixels = ds.pixel_array
    assert pixels.shape == (640, 512) and int(pixels.max()) <= 2**bits[1] - 1
    assert "WindowCenter" in ds and float(ds.WindowWidth) > 0
    # Air outside the body is the darkest region of a MONOCHROME2 image and the brightest of a MONOCHROME1 one.
    corner, centre = float(pixels[:20, :20].mean()), float(pixels[250:350, 200:300].mean())
    assert (corner < centre) == (photometric == "MONOCHROME2")
    assert truth.photometric_interpretation == photometric and not truth.has_pneumothorax


@pytest.mark.parametrize("kind", ["apical", "lateral"])
def test_pneumothorax_ground_truth_and_absent_markings(kind):
    """Pleural air lies in the lung, on the stated side, and is smoother (no markings) than the lung beside it."""
    r = rp.generate_radiograph(17, pneumothorax=True, kind=kind, rows=512, cols=512, mimics=(),
                               photometric_interpretation="MONOCHROME2", bits=(16, 16))
    ptx = r.truth.pneumothorax
    assert ptx is not None and ptx.kind == kind and 9.0 <= ptx.depth_mm <= 70.0
    row, col = ptx.pixel_centre
    # PA display: the patient's right is the image's left half.
    assert (col < 256) == (ptx.side == "right")
    assert r.pleural_air[int(round(row)), int(round(col))] or r.pleural_air.sum() > 0
    air = r.pleural_air
    image = r.dataset.pixel_array.astype(float)
    # Texture inside the pleural air vs. the same-size ring of lung just inside it.
    from scipy import ndimage

    grown = ndimage.binary_dilation(air, iterations=6) & ~ndimage.binary_dilation(air, iterations=2)
    detail = np.abs(image - ndimage.gaussian_filter(image, 3))
    assert detail[ndimage.binary_erosion(air, iterations=2)].mean() < detail[grown].mean()


def test_mimics_are_drawn_on_request_and_unknown_ones_refused():
    r = rp.generate_radiograph(5, pneumothorax=False, mimics=rp.MIMICS, rows=512, cols=512)
    assert r.truth.mimics == rp.MIMICS and not r.truth.has_pneumothorax and not r.pleural_air.any()
    with pytest.raises(ValueError, match="unknown mimic"):
        rp.generate_radiograph(5, pneumothorax=False, mimics=("bullet",), rows=512, cols=512)


def test_cli_writes_studies_and_ground_truth(tmp_path, capsys):
    assert rp.main(["--out", str(tmp_path), "--studies", "2", "--seed", "3"]) == 0
    truth = json.loads((tmp_path / "ground_truth.json").read_text())["studies"]
    assert [t["has_pneumothorax"] for t in truth] == [False, True]
    for entry in truth:
        ds = pydicom.dcmread(tmp_path / entry["folder"] / entry["file"])
        assert ds.StudyInstanceUID == entry["study_instance_uid"]
        assert str(ds.PatientName).startswith("PHANTOM^")
