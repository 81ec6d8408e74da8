"""ptx_detector's declared input requirements, evaluated by the router's acceptance criteria (analysis/acceptance.py).

A chest-radiograph model must take frontal chest DX/CR images and nothing else: not a lateral view, not a knee,
not a thumbnail, not a head CT. Real files from pydicom-data are among the inputs.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from pacsflow_router import domain
from pacsflow_router.analysis import acceptance, volume
from pacsflow_router.analysis.manifest import load_manifest
from pacsflow_router.config import Match, ModelRef
from pacsflow_router.models import phantom
from pacsflow_router.models import radiograph_phantom as rp
from tests.peers.dicomfiles import scanner_file

REPO = Path(__file__).resolve().parents[3] / "model_repository"
MANIFEST = load_manifest(REPO, ModelRef(name="ptx_detector", version=1))
MATCH = Match(modalities=["DX", "CR"])


def _series(ds: pydicom.Dataset, uid: str = "1.2.3.1") -> domain.Series:
    return domain.Series(uid, str(ds.Modality), str(ds.get("BodyPartExamined", "")),
                         str(ds.get("SeriesDescription", "")), [domain.Slice(header=ds, pixels=ds.pixel_array)])


def _study(*series: domain.Series) -> domain.Study:
    ref = domain.StudyRef("1.2.3", "k", (), 0.0)
    return domain.Study(ref=ref, first_header=series[0].slices[0].header, series=list(series))


def test_frontal_chest_radiographs_of_every_storage_variant_pass():
    for seed in range(6):
        ds = rp.generate_radiograph(seed, pneumothorax=seed % 2 == 0).dataset
        selection = acceptance.screen(MANIFEST, MATCH, _study(_series(ds)))
        assert selection.series is not None, selection.explanation


def test_the_frontal_view_is_chosen_over_a_lateral_one_received_first():
    lateral = rp.generate_radiograph(1, pneumothorax=False, rows=512, cols=512).dataset
    lateral.ViewPosition = "LL"
    frontal = rp.generate_radiograph(2, pneumothorax=False, rows=512, cols=512).dataset
    only_lateral = acceptance.screen(MANIFEST, MATCH, _study(_series(lateral)))
    assert only_lateral.series is None and only_lateral.failure is not None
    assert only_lateral.failure.code == "view" and "LL" in only_lateral.failure.message
    both = acceptance.screen(MANIFEST, MATCH, _study(_series(lateral, "1.2.3.1"), _series(frontal, "1.2.3.2")))
    assert both.series is not None and both.series.series_uid == "1.2.3.2", both.explanation


@pytest.mark.parametrize(("change", "code"), [
    ({"BodyPartExamined": "KNEE"}, "body-part"),
    ({"ImageType": ["DERIVED", "SECONDARY"]}, "image-type"),
])
def test_wrong_anatomy_and_secondary_captures_are_not_analysed(change, code):
    ds = rp.generate_radiograph(3, pneumothorax=True, rows=512, cols=512).dataset
    for key, value in change.items():
        setattr(ds, key, value)
    selection = acceptance.screen(MANIFEST, MATCH, _study(_series(ds)))
    assert selection.failure is not None and selection.failure.code == code, selection.explanation


def test_a_thumbnail_is_not_analysed():
    ds = rp.generate_radiograph(4, pneumothorax=True, rows=256, cols=256).dataset
    selection = acceptance.screen(MANIFEST, MATCH, _study(_series(ds)))
    assert selection.failure is not None and selection.failure.code == "matrix"


def test_a_head_ct_is_not_a_candidate(tmp_path):
    datasets, _ = phantom.generate_study(1, lesion=False, slices=4, rows=128, cols=128)
    series = domain.Series("1.2.3.9", "CT", "HEAD", "Head", [domain.Slice(header=d, pixels=d.pixel_array)
                                                              for d in datasets])
    selection = acceptance.screen(MANIFEST, MATCH, _study(series))
    assert not selection.applicable


@pytest.mark.parametrize(("name", "passes"), [("RG1_UNCI.dcm", True), ("RG1_J2KR.dcm", True),
                                              ("RG3_UNCI.dcm", False)])
def test_real_computed_radiographs(name, passes):
    """pydicom-data's real CR files: a PA chest (DERIVED\\PRIMARY, 15 bits) passes; an AP extremity does not."""
    path = scanner_file(name)
    study = volume.load_study(domain.StudyRef("1.2.3", "k", (str(path),), 0.0))
    selection = acceptance.screen(MANIFEST, MATCH, study)
    assert (selection.series is not None) == passes, selection.explanation
    if not passes:
        assert selection.failure is not None and selection.failure.code == "body-part"
