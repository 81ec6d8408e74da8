"""Preprocessing: DALI (CPU here) and the numpy reference compute the same tensor from the spec.

Both the single-window spec of ich_detector 1 ([N, 1, 256, 256]) and the three-window spec of version 2
(brain, subdural, bone as channels: [N, 3, 256, 256]) are exercised.

Tolerance: 1e-5 absolute on values in [0, 1]. Both resize with bilinear interpolation at half-pixel
centres without antialiasing, so the only differences are float32 rounding (measured max 0.0-1e-7).
"""

import json
from pathlib import Path

import numpy as np
import pytest

from pacsflow_router import domain
from pacsflow_router.analysis import preprocess
from pacsflow_router.config import ModelRef
from pacsflow_router.errors import ConfigError, InferenceError
from pacsflow_router.models import phantom

REPO = Path(__file__).resolve().parents[3] / "model_repository"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def spec():
    return preprocess.load_spec(REPO, ModelRef(name="ich_detector", version=1))


@pytest.fixture(scope="module")
def spec_v2():
    return preprocess.load_spec(REPO, ModelRef(name="ich_detector", version=2))


def _series(seed, rows, cols, slices=3, lesion=True) -> domain.Series:
    datasets, _ = phantom.generate_study(seed, lesion=lesion, slices=slices, rows=rows, cols=cols)
    return domain.Series("1.2", "CT", "HEAD", "Head non-con",
                         [domain.Slice(header=d, pixels=d.pixel_array) for d in datasets])


def test_the_committed_spec_is_the_brain_window_at_256(spec):
    assert (spec.window.center, spec.window.width) == (40.0, 80.0)
    assert spec.size == (256, 256)


def test_version_2_takes_brain_subdural_and_bone_windows_as_channels(spec_v2):
    assert spec_v2.channels == 3
    assert [(w.name, w.center, w.width) for w in spec_v2.channel_windows] == [
        ("brain", 40.0, 80.0), ("subdural", 75.0, 215.0), ("bone", 600.0, 2800.0)]
    assert spec_v2.size == (256, 256)


@pytest.mark.parametrize("rows,cols", [(512, 512), (384, 320), (128, 128), (700, 600)])
@pytest.mark.parametrize("tilted", [False, True])
def test_multi_window_dali_and_numpy_agree(spec_v2, rows, cols, tilted):
    datasets, _ = phantom.generate_study(34, lesion=True, slices=3, rows=rows, cols=cols, varied=tilted)
    series = domain.Series("1.2", "CT", "HEAD", "Head non-con",
                           [domain.Slice(header=d, pixels=d.pixel_array) for d in datasets])
    dali = preprocess.preprocess_series(series, spec_v2, "dali", device="cpu")
    ref = preprocess.preprocess_series(series, spec_v2, "numpy")
    assert dali.shape == ref.shape == (3, 3, 256, 256)
    assert float(np.abs(dali - ref).max()) <= TOLERANCE


def test_multi_window_channels_separate_blood_from_bone_and_calcification(spec_v2):
    # Blood (70 HU) is near-white in the brain window, calcification (300 HU) and bone (1500 HU) saturate it;
    # the subdural window tells blood from calcification and bone, the bone window calcification from bone.
    hu = np.array([[70, 300, 1500, 0]], dtype=np.float32).repeat(64, 0).repeat(64, 1)
    stored = (hu + 1024).astype(np.int16)
    for out in (preprocess.preprocess_dali([stored], [(1.0, -1024.0)], spec_v2, device="cpu"),
                preprocess.preprocess_numpy([stored], [(1.0, -1024.0)], spec_v2)):
        blood, calc, bone, water = (out[0, :, 128, c] for c in (32, 96, 160, 224))
        assert blood[0] == pytest.approx(70 / 80, abs=1e-5) and calc[0] == bone[0] == pytest.approx(1.0)
        assert blood[1] == pytest.approx((70 + 32.5) / 215, abs=1e-5) and calc[1] == bone[1] == pytest.approx(1.0)
        assert calc[2] == pytest.approx((300 + 800) / 2800, abs=1e-5) and bone[2] == pytest.approx(2300 / 2800, abs=1e-5)
        assert water[0] == pytest.approx(0.0) and water[1] == pytest.approx(32.5 / 215, abs=1e-5)


def test_multi_window_long_mixed_series_and_empty(spec_v2):
    rng = np.random.default_rng(2)
    n = preprocess.MAX_BATCH + 3
    images = [rng.integers(0, 3000, size=(40 + i % 5, 30)).astype(np.int16 if i % 2 else np.uint16) for i in range(n)]
    rescale = [(1.0, -1024.0) if i % 3 else (2.0, -2048.0) for i in range(n)]
    dali = preprocess.preprocess_dali(images, rescale, spec_v2, device="cpu")
    assert dali.shape == (n, 3, 256, 256)
    assert float(np.abs(dali - preprocess.preprocess_numpy(images, rescale, spec_v2)).max()) <= TOLERANCE
    assert preprocess.preprocess_dali([], [], spec_v2, device="cpu").shape == (0, 3, 256, 256)


def test_a_spec_with_both_window_and_windows_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "preprocess.json").write_text(json.dumps(
        {"window": {"center": 40, "width": 80}, "windows": [{"center": 40, "width": 80}]}))
    with pytest.raises(ConfigError, match="either 'window'"):
        preprocess.load_spec(tmp_path, "m")
    (tmp_path / "m" / "preprocess.json").write_text(json.dumps({"windows": []}))
    with pytest.raises(ConfigError, match="windows"):
        preprocess.load_spec(tmp_path, "m")


@pytest.mark.parametrize("rows,cols", [(512, 512), (384, 320), (128, 128), (700, 600)])
def test_dali_and_numpy_agree_for_any_matrix(spec, rows, cols):
    series = _series(31, rows, cols)
    dali = preprocess.preprocess_series(series, spec, "dali", device="cpu")
    ref = preprocess.preprocess_series(series, spec, "numpy")
    assert dali.shape == ref.shape == (3, 1, 256, 256)
    assert dali.dtype == ref.dtype == np.float32
    assert float(np.abs(dali - ref).max()) <= TOLERANCE
    assert 0.0 <= float(ref.min()) and float(ref.max()) <= 1.0
    # Not a trivially constant image: brain (mid-grey), skull (1) and air (0) are all there.
    assert float(ref.min()) == 0.0 and float(ref.max()) == 1.0 and 0.2 < float(np.median(ref[1][ref[1] > 0])) < 1.0


@pytest.mark.parametrize("backend", ["dali", "numpy"])
def test_rescale_and_window_follow_the_headers(spec, backend):
    # The same HU stored two ways (slope 1 / intercept -1024 and slope 2 / intercept 0) gives the same input.
    hu = np.array([[-100, 0, 20, 40], [60, 80, 100, 1000]], dtype=np.float32).repeat(64, 0).repeat(64, 1)
    a = (hu + 1024).astype(np.int16)
    b = (hu / 2).astype(np.int16)
    out = preprocess.preprocess_dali([a, b], [(1.0, -1024.0), (2.0, 0.0)], spec, device="cpu") \
        if backend == "dali" else preprocess.preprocess_numpy([a, b], [(1.0, -1024.0), (2.0, 0.0)], spec)
    assert np.allclose(out[0], out[1], atol=TOLERANCE)
    # Window 40/80 -> [0, 80] HU maps to [0, 1]. The 2x4 bands become 128x64 blocks: sample their middles.
    top, bottom = out[0, 0, 64], out[0, 0, 192]
    assert top[32] == pytest.approx(0.0) and top[96] == pytest.approx(0.0)  # -100, 0 HU
    assert top[160] == pytest.approx(0.25, abs=1e-5)  # 20 HU
    assert top[224] == pytest.approx(0.5, abs=1e-5)  # 40 HU
    assert bottom[32] == pytest.approx(0.75, abs=1e-5)  # 60 HU
    assert bottom[96] == pytest.approx(1.0) and bottom[224] == pytest.approx(1.0)  # 80 HU, bone


def test_series_longer_than_one_dali_batch(spec):
    rng = np.random.default_rng(0)
    n = preprocess.MAX_BATCH + 6
    images = [rng.integers(900, 1200, size=(40, 30)).astype(np.int16) for _ in range(n)]
    rescale = [(1.0, -1024.0)] * n
    dali = preprocess.preprocess_dali(images, rescale, spec, device="cpu")
    ref = preprocess.preprocess_numpy(images, rescale, spec)
    assert dali.shape == (n, 1, 256, 256)
    assert float(np.abs(dali - ref).max()) <= TOLERANCE
    assert not np.allclose(dali[0], dali[-1])


def test_unsigned_and_mixed_dtypes(spec):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 2000, size=(64, 64)).astype(np.uint16), rng.integers(-50, 200, size=(50, 70)).astype(np.int16)]
    rescale = [(1.0, -1024.0), (1.0, 0.0)]
    dali = preprocess.preprocess_dali(images, rescale, spec, device="cpu")
    assert float(np.abs(dali - preprocess.preprocess_numpy(images, rescale, spec)).max()) <= TOLERANCE


def test_empty_series_gives_an_empty_batch(spec):
    assert preprocess.preprocess_dali([], [], spec, device="cpu").shape == (0, 1, 256, 256)


def test_gpu_device_without_gpu_is_a_clear_error_and_auto_falls_back(spec):
    series = _series(32, 64, 64, slices=1)
    auto = preprocess.preprocess_series(series, spec, "dali", device="auto")
    assert float(np.abs(auto - preprocess.preprocess_series(series, spec, "numpy")).max()) <= TOLERANCE
    if preprocess.gpu_available():
        gpu = preprocess.preprocess_series(series, spec, "dali", device="gpu")
        assert float(np.abs(gpu - auto).max()) <= TOLERANCE
    else:
        with pytest.raises(InferenceError, match="no CUDA device"):
            preprocess.preprocess_series(series, spec, "dali", device="gpu")


def test_unknown_backend_is_refused(spec):
    with pytest.raises(ValueError, match="unknown preprocessing backend"):
        preprocess.preprocess_series(_series(33, 32, 32, slices=1), spec, "torch")


def test_version_spec_overrides_model_spec_and_bad_specs_name_the_key(tmp_path):
    model = tmp_path / "m"
    (model / "2").mkdir(parents=True)
    (model / "preprocess.json").write_text(json.dumps({"window": {"center": 40, "width": 80}}))
    (model / "2" / "preprocess.json").write_text(json.dumps({"window": {"center": 50, "width": 100}, "size": [128, 128]}))
    assert preprocess.load_spec(tmp_path, ModelRef(name="m", version=1)).window.center == 40
    assert preprocess.load_spec(tmp_path, ModelRef(name="m", version=2)).size == (128, 128)
    (model / "preprocess.json").write_text(json.dumps({"window": {"center": 40, "width": -1}, "colour": 1}))
    with pytest.raises(ConfigError) as err:
        preprocess.load_spec(tmp_path, "m")
    assert "window.width" in str(err.value) and "colour" in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        preprocess.load_spec(tmp_path, "missing")
