"""CT volumes that are not heads, for the acceptance and domain-check tests (generated in code, no patient data).

Each takes a head phantom study (:func:`pacsflow_router.models.phantom.generate_study`) for its headers and
replaces the pixels: a constant volume, water, a chest and a neck. The anatomy is coarse but carries what the
domain check looks at: the air/soft-tissue/bone proportions, and bone that does or does not enclose soft tissue
(ribs are separate arcs; a vertebra encloses only the small spinal canal).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import numpy as np
from pydicom.dataset import Dataset

from pacsflow_router.domain import Series, Slice, Study, StudyRef
from pacsflow_router.models.phantom import generate_study

_INTERCEPT = -1024.0


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0


def _grid(ds: Dataset) -> tuple[np.ndarray, np.ndarray]:
    spacing = float(ds.PixelSpacing[0])
    rows, cols = int(ds.Rows), int(ds.Columns)
    x = (np.arange(cols) - (cols - 1) / 2) * spacing
    y = (np.arange(rows) - (rows - 1) / 2) * spacing
    return np.meshgrid(x, y)


def _vertebra(x: np.ndarray, y: np.ndarray, hu: np.ndarray, cy: float) -> None:
    """Vertebral body, a closed neural arch and the spinal canal (CSF) it encloses."""
    hu[_ellipse(x, y, 0, cy, 20, 16)] = 350.0
    arch = _ellipse(x, y, 0, cy + 28, 13, 13)
    hu[arch] = 700.0
    hu[_ellipse(x, y, 0, cy + 28, 8, 8)] = 10.0


def chest_hu(ds: Dataset, rng: np.random.Generator) -> np.ndarray:
    """An axial chest slice: body, fat, lungs, mediastinum, separate rib arcs, sternum and a vertebra."""
    x, y = _grid(ds)
    hu = np.full(x.shape, -1000.0)
    hu[_ellipse(x, y, 0, 0, 165, 115)] = -100.0  # subcutaneous fat
    hu[_ellipse(x, y, 0, 0, 150, 102)] = 40.0  # muscle / mediastinum
    for side in (-1, 1):
        hu[_ellipse(x, y, side * 72, -5, 58, 80)] = -850.0  # lungs
    hu[_ellipse(x, y, 12, -20, 45, 40)] = 45.0  # heart
    for angle in np.linspace(0.25, np.pi - 0.25, 9):  # ribs: short separate arcs, never a closed ring
        for side in (-1, 1):
            rx, ry = side * 140 * np.cos(angle), -97 * np.sin(angle) + 10
            hu[_ellipse(x, y, rx, ry, 7, 5)] = 700.0
    hu[_ellipse(x, y, 0, -100, 14, 6)] = 500.0  # sternum
    _vertebra(x, y, hu, 60)
    return hu + rng.normal(0, 8, size=hu.shape)


def neck_hu(ds: Dataset, rng: np.random.Generator) -> np.ndarray:
    """An axial neck slice: soft tissue, airway, a vertebra with its canal and an open mandibular arc."""
    x, y = _grid(ds)
    hu = np.full(x.shape, -1000.0)
    hu[_ellipse(x, y, 0, 0, 62, 58)] = -80.0
    hu[_ellipse(x, y, 0, 0, 56, 52)] = 45.0
    hu[_ellipse(x, y, 0, -25, 9, 7)] = -950.0  # airway
    _vertebra(x, y, hu, 5)
    arc = _ellipse(x, y, 0, -20, 48, 38) & ~_ellipse(x, y, 0, -20, 42, 32) & (y < -30)
    hu[arc] = 1200.0
    return hu + rng.normal(0, 8, size=hu.shape)


def constant_hu(value: float) -> Callable[[Dataset, np.random.Generator], np.ndarray]:
    """A slice of one value everywhere (a constant volume: 1000 HU fooled the first model)."""
    def make(ds: Dataset, rng: np.random.Generator) -> np.ndarray:
        return np.full((int(ds.Rows), int(ds.Columns)), value) + rng.normal(0, 3, size=(int(ds.Rows), int(ds.Columns)))
    return make


def water_hu(ds: Dataset, rng: np.random.Generator) -> np.ndarray:
    """A water cylinder phantom (0 HU in air), the scanner's daily QA object."""
    x, y = _grid(ds)
    hu = np.where(_ellipse(x, y, 0, 0, 100, 100), 0.0, -1000.0)
    hu[_ellipse(x, y, 0, 0, 100, 100) & ~_ellipse(x, y, 0, 0, 97, 97)] = 120.0  # acrylic wall
    return hu + rng.normal(0, 5, size=hu.shape)


@functools.cache
def _head_study(seed: int, slices: int, rows: int) -> list[Dataset]:
    # Generating an anatomical phantom takes seconds; tests copy one instead of generating it again.
    return generate_study(seed, lesion=False, slices=slices, rows=rows, cols=rows)[0]


def datasets(seed: int, make: Callable[[Dataset, np.random.Generator], np.ndarray] | None = None, *,
             slices: int = 24, rows: int = 512, **headers: object) -> list[Dataset]:
    """A phantom study's datasets, with pixels from ``make`` (None: the head) and header overrides."""
    dss = copy.deepcopy(_head_study(seed, slices, rows))
    rng = np.random.default_rng(seed)
    for ds in dss:
        if make is not None:
            stored = np.clip(np.rint(make(ds, rng) - _INTERCEPT), -32768, 32767).astype(np.int16)
            ds.PixelData = stored.tobytes()
        for keyword, value in headers.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return dss


def series_of(dss: list[Dataset], description: str | None = None) -> Series:
    """A loaded series (as :func:`pacsflow_router.analysis.volume.load_study` builds it) from datasets in order."""
    first = dss[0]
    return Series(
        series_uid=str(first.get("SeriesInstanceUID", "")), modality=str(first.get("Modality", "") or ""),
        body_part=str(first.get("BodyPartExamined", "") or ""),
        description=description if description is not None else str(first.get("SeriesDescription", "") or ""),
        slices=[Slice(header=ds, pixels=ds.pixel_array) for ds in dss],
    )


def study_of(*series: Series) -> Study:
    """A loaded study of the given series."""
    first = series[0].slices[0].header
    ref = StudyRef(study_uid=str(first.StudyInstanceUID), key="0" * 16, paths=(), last_received=0.0)
    return Study(ref=ref, first_header=first, series=list(series))
