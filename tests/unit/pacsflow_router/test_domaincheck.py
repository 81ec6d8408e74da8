"""The input-domain check on pixel values: every phantom head in domain; constant, water, chest and neck not."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from pacsflow_router.analysis.acceptance import screen
from pacsflow_router.analysis.domaincheck import _fill_holes, central_indices, check_domain
from pacsflow_router.analysis.manifest import load_manifest
from pacsflow_router.analysis.volume import load_study
from pacsflow_router.config import Match, ModelRef
from pacsflow_router.domain import Series, StudyRef
from pacsflow_router.models.phantom import HEMORRHAGE_TYPES, MIMIC_TYPES, generate_study
from tests.peers.dicomfiles import scanner_file
from tests.unit.pacsflow_router.synthetic_ct import (
    chest_hu,
    constant_hu,
    datasets,
    neck_hu,
    series_of,
    study_of,
    water_hu,
)

REPO = Path(__file__).resolve().parents[3] / "model_repository"
ICH = load_manifest(REPO, ModelRef(name="ich_detector", version=1))


def test_central_indices_cover_the_middle_half():
    assert central_indices(1) == [0]
    assert central_indices(4) == [1, 2]
    assert central_indices(100) == [25, 37, 50, 62, 74]
    assert central_indices(8, first=10) == [12, 13, 14, 15]


def test_hole_filling_is_scipys():
    rng = np.random.default_rng(3)
    for density in (0.3, 0.5, 0.6):
        mask = rng.random((64, 80)) < density
        assert (_fill_holes(mask) == ndimage.binary_fill_holes(mask)).all()


# Every kind of phantom the model is trained and tested on: each hemorrhage type, each hard negative, varied
# matrices, fields of view, slice thickness, tilt and dose.
PHANTOMS = [
    pytest.param(seed, kind, mimics, rows, slices, id=f"{seed}-{kind or 'none'}-{'+'.join(mimics) or 'plain'}")
    for seed, kind, mimics, rows, slices in [
        (2000 + i, HEMORRHAGE_TYPES[i % len(HEMORRHAGE_TYPES)] if i % 3 else None,
         (MIMIC_TYPES[i % len(MIMIC_TYPES)],) if i % 2 else (), (512, 320, 256, 384)[i % 4], (16, 20, 24)[i % 3])
        for i in range(10)
    ]
]


@pytest.mark.parametrize(("seed", "kind", "mimics", "rows", "slices"), PHANTOMS)
def test_every_phantom_is_in_domain(seed, kind, mimics, rows, slices):
    dss, _ = generate_study(seed, lesion=kind is not None, hemorrhage=kind, mimics=mimics, varied=True,
                            slices=slices, rows=rows, cols=rows)
    result = check_domain(series_of(dss), ICH.domain)
    assert result.in_domain, (result.message, result.fractions)


@pytest.mark.parametrize(("make", "band", "message"), [
    (constant_hu(1000), "bone", r"out of domain \(bone\): 100% of the central slices' pixels, the model expects "
                                r"1%-35%"),
    (water_hu, "bone", r"out of domain \(bone\): 0% of the central slices' pixels, the model expects 1%-35%"),
    # The spinal canal is soft tissue enclosed by bone too, but a fraction of a percent of the slice.
    (chest_hu, "enclosed", r"out of domain \(enclosed region\): 0\.\d+% of a central slice is soft_tissue enclosed "
                           r"by bone, the model expects at least 5%"),
    (neck_hu, "enclosed", r"out of domain \(enclosed region\): 0\.\d+% of a central slice is soft_tissue enclosed "
                          r"by bone, the model expects at least 5%"),
], ids=["constant-1000HU", "water", "chest", "neck"])
def test_what_is_not_a_head_is_out_of_domain(make, band, message):
    result = check_domain(series_of(datasets(11, make, slices=16, rows=256)), ICH.domain)
    assert result.band == band
    assert result.message is not None and re.fullmatch(message, result.message), result.message


def test_out_of_domain_is_not_analysed_never_a_result():
    # Headers of a perfect head CT, pixels of a chest: the acceptance criteria pass, the domain check does not.
    chest = series_of(datasets(11, chest_hu, slices=16, rows=256))
    timings: dict[str, float] = {}
    selection = screen(ICH, Match(), study_of(chest), timings=timings)
    assert selection.series is None and selection.failure is not None
    assert selection.failure.code == "out-of-domain"
    assert selection.failure.message.startswith("out of domain (enclosed region)")
    assert selection.explanation.startswith("chose series 1 of 1; the chosen series is out of domain")
    assert set(timings) == {"acceptance", "domain"}


def test_a_stack_that_runs_past_the_head_is_judged_on_the_head():
    # 16 head slices then 16 of air (a scan range set too long): the middle of the stack is air.
    head = datasets(11, slices=16, rows=256)
    air = datasets(12, constant_hu(-1000), slices=16, rows=256)
    for k, ds in enumerate(air):
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                                   float(head[-1].ImagePositionPatient[2]) + 5.0 * (k + 1)]
    assert check_domain(series_of(head + air), ICH.domain).in_domain


def _real_series(name: str) -> Series:
    path = scanner_file(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = load_study(StudyRef(study_uid="1.2.3", key="0" * 16, paths=(str(path),), last_received=0.0))
    return study.series[0]


@pytest.mark.parametrize(("name", "in_domain"), [
    ("J2K_pixelrep_mismatch.dcm", True),  # a real head slice: skull around brain
    ("bad_sequence.dcm", False),          # a real neck slice
    ("explicit_VR-UN.dcm", False),        # a real abdomen slice (BodyPartExamined PANCREAS)
])
def test_real_scanner_slices(name, in_domain):
    result = check_domain(_real_series(name), ICH.domain)
    assert result.in_domain is in_domain, (result.message, result.fractions)


def test_enhanced_ct_values_go_through_the_functional_groups_rescale():
    # eCT_Supplemental: a 2-frame Enhanced CT whose rescale lives in the functional groups; the check runs on it.
    series = _real_series("eCT_Supplemental.dcm")
    result = check_domain(series, ICH.domain)
    assert not result.in_domain and set(result.fractions) == {"bone", "soft_tissue", "air", "enclosed"}
