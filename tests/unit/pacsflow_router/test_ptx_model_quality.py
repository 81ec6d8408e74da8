"""The committed ptx_detector on held-out synthetic radiographs, through the router's own path.

files on disk -> volume.load_study -> preprocess (DALI, CPU; the model's preprocess.json) -> EmbeddedOnnxBackend
-> findings.summarize. Nothing here names the model's internals: the same path serves any model of the repository.

Seeds 950000-950079 are never used in training (scripts/train_ptx_detector.py trains on 2000000+ and validates on
2500000+). 40 radiographs with a pneumothorax (20 apical, 20 lateral) and 40 without: 8 plain and 8 per hard
negative (skin fold, scapula border, device line, ECG leads). Storage variants (DX/CR, MONOCHROME1/2, 8-16 bits,
VOI window or none, matrices 512 to 2048) are the generator's own draws. An image is called positive at the
manifest's decision threshold (0.5).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from pacsflow_router import domain
from pacsflow_router.analysis import findings, preprocess, volume
from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.analysis.manifest import load_manifest
from pacsflow_router.config import ModelRef
from pacsflow_router.models import radiograph_phantom as rp
from tests.peers.dicomfiles import scanner_file

REPO = Path(__file__).resolve().parents[3] / "model_repository"
MODEL = ModelRef(name="ptx_detector", version=1)
SEED = 950_000
MIN_SENSITIVITY = 0.95
MIN_SPECIFICITY = 0.95
# The reported point must lie in the pleural air's bounding box, widened by this fraction of the image size.
LOCATION_SLACK = 0.06


def _cases() -> list[tuple[str, dict]]:
    cases: list[tuple[str, dict]] = []
    for kind in ("apical", "lateral"):
        cases += [(kind, {"pneumothorax": True, "kind": kind})] * 20
    cases += [("plain", {"pneumothorax": False, "mimics": ()})] * 8
    for mimic in rp.MIMICS:
        cases += [(mimic, {"pneumothorax": False, "mimics": (mimic,)})] * 8
    return cases


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    backend = EmbeddedOnnxBackend(REPO)
    spec = preprocess.load_spec(REPO, MODEL)
    threshold = load_manifest(REPO, MODEL).operating_point.decision_threshold
    out = []
    for i, (group, kwargs) in enumerate(_cases()):
        path, truth = rp.write_radiograph(tmp_path_factory.mktemp(f"cxr{i}"), SEED + i, **kwargs)
        study = volume.load_study(domain.StudyRef(truth.study_instance_uid, f"k{i}", (str(path),), 0.0))
        (series,) = study.series
        batch = preprocess.preprocess_series(series, spec, "dali", device="cpu")
        finding = findings.summarize(series, backend.infer(MODEL, batch), critical_threshold=0.85)
        out.append((group, truth, finding, finding.probability >= threshold))
    return out


def test_sensitivity_and_specificity_per_type(results):
    called: dict[str, list[bool]] = defaultdict(list)
    for group, _truth, _finding, positive in results:
        called[group].append(positive)
    lines = []
    for group, calls in called.items():
        rate = np.mean(calls) if group in ("apical", "lateral") else 1 - np.mean(calls)
        lines.append(f"{group}: {'sensitivity' if group in ('apical', 'lateral') else 'specificity'} "
                     f"{rate:.3f} ({sum(calls) if group in ('apical', 'lateral') else len(calls) - sum(calls)}"
                     f"/{len(calls)})")
    print("\n".join(lines))
    positives = [p for g, t, _, p in results if t.has_pneumothorax]
    negatives = [not p for g, t, _, p in results if not t.has_pneumothorax]
    sensitivity, specificity = np.mean(positives), np.mean(negatives)
    print(f"overall: sensitivity {sensitivity:.3f} ({sum(positives)}/{len(positives)}), "
          f"specificity {specificity:.3f} ({sum(negatives)}/{len(negatives)})")
    assert len(positives) == len(negatives) == 40
    assert sensitivity >= MIN_SENSITIVITY
    assert specificity >= MIN_SPECIFICITY
    # No hard-negative type may carry the false positives alone: at most one per type of 8.
    for mimic in ("plain", *rp.MIMICS):
        assert sum(called[mimic]) <= 1, f"{mimic}: {sum(called[mimic])} of 8 called positive"


def test_true_positives_point_into_the_pleural_air(results):
    for _group, truth, finding, positive in results:
        if not (truth.has_pneumothorax and positive):
            continue
        assert truth.pneumothorax is not None
        r0, c0, r1, c1 = truth.pneumothorax.pixel_box
        column, row = finding.pixel_point
        slack_r, slack_c = LOCATION_SLACK * truth.rows, LOCATION_SLACK * truth.cols
        assert r0 - slack_r <= row - 0.5 <= r1 + slack_r and c0 - slack_c <= column - 0.5 <= c1 + slack_c, (
            f"seed {truth.seed}: point ({row:.0f}, {column:.0f}) outside the pleural air {truth.pneumothorax.pixel_box}")


def test_a_radiograph_finding_is_one_image_without_a_patient_point(results):
    """A projection radiograph has no patient coordinates: the finding is a point on the one image (SCOORD only)."""
    for _group, truth, finding, _positive in results:
        assert finding.slice_index == 0 and finding.patient_point is None
        assert finding.sop_instance_uid == truth.sop_instance_uid
        column, row = finding.pixel_point
        assert 0 <= column <= truth.cols and 0 <= row <= truth.rows


def test_real_chest_radiograph_gets_a_probability():
    """pydicom-data's real PA chest CR (RG1) runs through the model; its score is reported, not asserted:
    a model trained on synthetic radiographs has no claim on real ones (docs/model-card-ptx_detector.md)."""
    path = scanner_file("RG1_UNCI.dcm")
    study = volume.load_study(domain.StudyRef("1.2.3", "rg1", (str(path),), 0.0))
    (series,) = study.series
    batch = preprocess.preprocess_series(series, preprocess.load_spec(REPO, MODEL), "dali", device="cpu")
    output = EmbeddedOnnxBackend(REPO).infer(MODEL, batch)
    finding = findings.summarize(series, output, critical_threshold=None)
    print(f"RG1 (real PA chest CR): p = {finding.probability:.3f}")
    assert 0.0 <= finding.probability <= 1.0
