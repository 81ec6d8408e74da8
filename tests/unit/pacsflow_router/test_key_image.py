"""The key slice the reviewer panel shows: rescaled, windowed, scaled down, grayscale PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from pacsflow_router.domain import Slice
from pacsflow_router.results.review import key_image_png


def _slice(pixels: np.ndarray, slope: float = 1.0, intercept: float = -1024.0) -> Slice:
    header = Dataset()
    header.RescaleSlope, header.RescaleIntercept = slope, intercept
    return Slice(header=header, pixels=pixels)


def _decoded(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.mode == "L"
    return np.asarray(image)


def test_ct_is_shown_in_the_brain_window_after_rescale():
    # Stored values 0 (air, -1024 HU), 1064 (40 HU: window centre) and 1124 (100 HU: above the window).
    stored = np.zeros((64, 96), dtype=np.uint16)
    stored[:, 32:64], stored[:, 64:] = 1064, 1124
    shown = _decoded(key_image_png(_slice(stored), "CT"))
    assert shown.shape == (64, 96)
    assert shown[0, 0] == 0 and abs(int(shown[0, 48]) - 127) <= 1 and shown[0, 90] == 255


def test_a_large_or_colour_image_is_scaled_down_to_a_grey_thumbnail():
    rgb = np.random.default_rng(3).integers(0, 255, (512, 384, 3)).astype(np.uint8)
    shown = _decoded(key_image_png(_slice(rgb, intercept=0.0), "XA"))
    assert shown.shape == (256, 192) and shown.min() < shown.max()
