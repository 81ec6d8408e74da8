"""2.5-D preprocessing (``neighbours`` in preprocess.json): each slice's windows with those of the slices around it.

The per-image steps run in DALI (CPU here) or numpy as for any spec; the neighbours are stacked on the host after
either backend, in the series' sorted order, the end slices repeated. These tests check the channel order, the ends,
a series longer than one DALI batch (the stacking must cross the chunk boundary) and that both backends agree.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from pacsflow_router import domain
from pacsflow_router.analysis import preprocess
from pacsflow_router.errors import ConfigError
from pacsflow_router.models import phantom

REPO = Path(__file__).resolve().parents[3] / "model_repository"
WINDOWS = [{"name": "brain", "center": 40.0, "width": 80.0}, {"name": "subdural", "center": 75.0, "width": 215.0},
           {"name": "bone", "center": 600.0, "width": 2800.0}]


def _spec(neighbours: int) -> preprocess.PreprocessSpec:
    return preprocess.PreprocessSpec.model_validate({"windows": WINDOWS, "size": [64, 64], "neighbours": neighbours})


def _flat_series(hu_values: list[float], size: int = 32) -> domain.Series:
    """Slices of one constant HU each (stored with the usual CT intercept), so every channel names its slice."""
    datasets, _ = phantom.generate_study(5, lesion=False, slices=len(hu_values), rows=size, cols=size)
    for ds, hu in zip(datasets, hu_values, strict=True):
        ds.PixelData = np.full((size, size), hu + 1024, dtype=np.int16).tobytes()
    return domain.Series("1.2", "CT", "HEAD", "Head non-con", [domain.Slice(header=d, pixels=d.pixel_array) for d in datasets])


def test_channels_count_windows_times_slices():
    assert (_spec(0).channels, _spec(1).channels, _spec(2).channels) == (3, 9, 15)
    assert _spec(2).slice_channels == 3


def test_stack_neighbours_orders_slices_and_repeats_the_ends():
    batch = np.arange(5, dtype=np.float32)[:, None, None, None] * 10 + np.arange(2, dtype=np.float32)[None, :, None, None]
    out = preprocess.stack_neighbours(np.broadcast_to(batch, (5, 2, 3, 3)).copy(), 1)
    assert out.shape == (5, 6, 3, 3)
    # slice k: channels of k-1 (both windows), k, k+1; first and last slice repeat themselves past the end.
    assert out[:, :, 0, 0].tolist() == [[0, 1, 0, 1, 10, 11], [0, 1, 10, 11, 20, 21], [10, 11, 20, 21, 30, 31],
                                        [20, 21, 30, 31, 40, 41], [30, 31, 40, 41, 40, 41]]
    assert preprocess.stack_neighbours(batch, 0) is batch
    assert preprocess.stack_neighbours(np.empty((0, 2, 3, 3), np.float32), 1).shape == (0, 6, 3, 3)


@pytest.mark.parametrize("backend", ["dali", "numpy"])
def test_a_series_longer_than_one_dali_batch_stacks_across_the_chunks(backend):
    n = preprocess.MAX_BATCH + 6
    hu = [float(-40 + k) for k in range(n)]  # inside the brain window's lower half: value = (hu + 0) / 80
    out = preprocess.preprocess_series(_flat_series(hu), _spec(1), backend, device="cpu")
    assert out.shape == (n, 9, 64, 64)
    brain = out[:, [0, 3, 6], 10, 10]  # the brain window of slices k-1, k, k+1
    expected = np.clip((np.array(hu) - 0.0) / 80.0, 0, 1)
    index = np.arange(n)
    assert np.allclose(brain[:, 1], expected, atol=1e-5)
    assert np.allclose(brain[:, 0], expected[np.maximum(index - 1, 0)], atol=1e-5)
    assert np.allclose(brain[:, 2], expected[np.minimum(index + 1, n - 1)], atol=1e-5)


def test_dali_and_numpy_agree_on_a_2_5_d_phantom():
    datasets, _ = phantom.generate_study(34, lesion=True, slices=4, rows=384, cols=320, varied=True)
    series = domain.Series("1.2", "CT", "HEAD", "Head non-con",
                           [domain.Slice(header=d, pixels=d.pixel_array) for d in datasets])
    dali = preprocess.preprocess_series(series, _spec(1), "dali", device="cpu")
    ref = preprocess.preprocess_series(series, _spec(1), "numpy")
    assert dali.shape == ref.shape == (4, 9, 64, 64)
    assert float(np.abs(dali - ref).max()) <= 1e-5


def test_a_single_slice_is_its_own_neighbour():
    out = preprocess.preprocess_series(_flat_series([30.0]), _spec(1), "numpy")
    assert out.shape == (1, 9, 64, 64)
    assert np.array_equal(out[0, 0:3], out[0, 3:6]) and np.array_equal(out[0, 3:6], out[0, 6:9])


def test_a_negative_neighbour_count_names_the_key(tmp_path):
    path = tmp_path / "preprocess.json"
    path.write_text(json.dumps({"windows": WINDOWS, "neighbours": -1}))
    with pytest.raises(ConfigError, match=r"neighbours: Input should be greater than or equal to 0"):
        preprocess.read_spec(path)
