"""Radiograph preprocessing (ptx_detector's spec): normalisation per image, DALI == numpy, real CR files.

Projection radiographs have no absolute unit: the same anatomy arrives as MONOCHROME1 or MONOCHROME2, at 8 to 16
bits, with or without a vendor window. The model must see the same tensor in every case; these tests hold the
preprocessing to that, with the synthetic generator's storage variants and with the real scanner CR files that
pydicom and pydicom-data ship.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacsflow_router import domain
from pacsflow_router.analysis import preprocess, volume
from pacsflow_router.config import ModelRef
from pacsflow_router.models import radiograph_phantom as rp
from tests.peers.dicomfiles import scanner_file

REPO = Path(__file__).resolve().parents[3] / "model_repository"
MODEL = ModelRef(name="ptx_detector", version=1)
TOLERANCE = 1e-5
# Real computed radiographs shipped by pydicom-data: a PA chest (15 bits) and an AP extremity (10 bits), each
# uncompressed and JPEG 2000 (lossless and lossy), all MONOCHROME1.
REAL_CR = ["RG1_UNCI.dcm", "RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm",
           "RG3_UNCI.dcm", "RG3_UNCR.dcm", "RG3_J2KR.dcm", "RG3_J2KI.dcm"]


@pytest.fixture(scope="module")
def spec() -> preprocess.PreprocessSpec:
    return preprocess.load_spec(REPO, MODEL)


def _series(datasets: list[pydicom.Dataset]) -> domain.Series:
    return domain.Series("1.2", str(datasets[0].Modality), "CHEST", "Chest PA",
                         [domain.Slice(header=d, pixels=d.pixel_array) for d in datasets])


def _tensor(spec: preprocess.PreprocessSpec, ds: pydicom.Dataset, backend: preprocess.Backend = "numpy") -> np.ndarray:
    return preprocess.preprocess_series(_series([ds]), spec, backend, device="cpu")[0, 0]


def test_the_committed_spec_normalises_radiographs_at_256(spec):
    assert spec.radiograph is not None and spec.radiograph.source == "percentile"
    assert spec.radiograph.invert_monochrome1
    assert spec.size == (256, 256) and spec.channels == 1


def test_monochrome1_and_monochrome2_of_one_radiograph_give_one_tensor(spec):
    """The same anatomy stored inverted (MONOCHROME1: air bright) reaches the model identically."""
    kwargs = dict(pneumothorax=True, rows=512, cols=512, bits=(16, 12), voi_window=False, modality="DX")
    m1 = rp.generate_radiograph(7, photometric_interpretation="MONOCHROME1", **kwargs).dataset
    m2 = rp.generate_radiograph(7, photometric_interpretation="MONOCHROME2", **kwargs).dataset
    a1, a2 = m1.pixel_array.astype(float), m2.pixel_array.astype(float)
    assert np.corrcoef(a1.ravel(), a2.ravel())[0, 1] < -0.99, "the stored images are inverses of each other"
    t1, t2 = _tensor(spec, m1), _tensor(spec, m2)
    assert float(np.abs(t1 - t2).max()) < 0.02
    # Dense is bright in both: the mediastinum (centre column) is brighter than the lungs beside it.
    assert t1[100:160, 118:138].mean() > t1[100:160, 40:80].mean() + 0.2


@pytest.mark.parametrize("bits", [(8, 8), (16, 10), (16, 14), (16, 16)])
def test_bit_depth_does_not_change_what_the_model_sees(spec, bits):
    base = rp.generate_radiograph(11, pneumothorax=False, rows=512, cols=512, bits=(16, 12), voi_window=False,
                                  photometric_interpretation="MONOCHROME2").dataset
    other = rp.generate_radiograph(11, pneumothorax=False, rows=512, cols=512, bits=bits, voi_window=False,
                                   photometric_interpretation="MONOCHROME2").dataset
    # 8 bits quantise the 0-1 range in 256 steps: a few steps of difference at most.
    assert float(np.abs(_tensor(spec, base) - _tensor(spec, other)).mean()) < 0.01


@pytest.mark.parametrize("seed", range(6))
def test_dali_and_numpy_agree_on_every_storage_variant(spec, seed):
    """Generator defaults draw modality, matrix (up to 2048), bit depth, photometric interpretation and VOI."""
    ds = rp.generate_radiograph(100 + seed, pneumothorax=seed % 2 == 0).dataset
    dali = _tensor(spec, ds, "dali")
    ref = _tensor(spec, ds, "numpy")
    assert float(np.abs(dali - ref).max()) <= TOLERANCE
    assert 0.0 <= float(ref.min()) and float(ref.max()) <= 1.0


@pytest.mark.parametrize("bits", [(8, 8), (16, 12), (16, 16)])
def test_dali_and_numpy_agree_at_every_bit_depth(spec, bits):
    ds = rp.generate_radiograph(21, pneumothorax=True, rows=640, cols=512, bits=bits).dataset
    assert float(np.abs(_tensor(spec, ds, "dali") - _tensor(spec, ds, "numpy")).max()) <= TOLERANCE


def test_percentiles_and_voi_window_sources(spec):
    ds = rp.generate_radiograph(3, pneumothorax=False, rows=512, cols=512, voi_window=True, bits=(16, 12),
                                photometric_interpretation="MONOCHROME2").dataset
    pixels = ds.pixel_array
    percentile = preprocess.Radiograph(source="percentile")
    a, b = preprocess.radiograph_rescale(pixels, ds, percentile)
    low, high = np.percentile(pixels.astype(float), [1.0, 99.0])
    assert a * low + b == pytest.approx(0.0, abs=0.01) and a * high + b == pytest.approx(1.0, abs=0.01)
    voi = preprocess.Radiograph(source="voi")
    a, b = preprocess.radiograph_rescale(pixels, ds, voi)
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    assert a * (centre - 0.5) + b == pytest.approx(0.5, abs=1e-6)  # PS3.3 C.11.2.1.2.1: c - 0.5 is the middle
    assert a * (width - 1) == pytest.approx(1.0, abs=1e-6)
    del ds.WindowCenter, ds.WindowWidth
    assert preprocess.radiograph_rescale(pixels, ds, voi) == preprocess.radiograph_rescale(pixels, ds, percentile)


def test_a_flat_image_gives_finite_values(spec):
    ds = rp.generate_radiograph(5, pneumothorax=False, rows=512, cols=512, bits=(16, 12)).dataset
    flat = np.full((512, 512), 1000, dtype=np.uint16)
    out = preprocess.preprocess_numpy([flat], [preprocess.radiograph_rescale(flat, ds, spec.radiograph)], spec)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", REAL_CR)
def test_real_computed_radiographs_load_and_preprocess(spec, name, tmp_path):
    """Every real CR file available offline: loaded by the router's loader, preprocessed by DALI and numpy."""
    path = scanner_file(name)
    ref = domain.StudyRef("1.2.3", "k", (str(path),), 0.0)
    study = volume.load_study(ref)
    (series,) = study.series
    assert len(series.slices) == 1 and series.modality == "CR"
    header = series.slices[0].header
    assert header.PhotometricInterpretation == "MONOCHROME1"
    dali = preprocess.preprocess_series(series, spec, "dali", device="cpu")
    ref_out = preprocess.preprocess_series(series, spec, "numpy")
    assert dali.shape == (1, 1, 256, 256)
    assert float(np.abs(dali - ref_out).max()) <= TOLERANCE
    assert 0.0 <= float(ref_out.min()) and float(ref_out.max()) <= 1.0
    # Normalisation spreads the image over the range whatever its bit depth (15 bits for RG1, 10 for RG3).
    assert float(ref_out.std()) > 0.15
    if name.startswith("RG1"):
        # The chest film, after MONOCHROME1 inversion: the mediastinum is brighter than the lungs beside it.
        image = ref_out[0, 0]
        centre = image[90:170, 118:138].mean()
        lungs = (image[90:170, 60:90].mean() + image[90:170, 166:196].mean()) / 2
        assert centre > lungs, (centre, lungs)
