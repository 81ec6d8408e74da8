"""The committed ich_detector (version 2) on held-out phantoms, per hemorrhage type and per hard negative.

Path: phantom datasets -> domain.Series -> preprocess (DALI, CPU, the version's three-window spec) ->
EmbeddedOnnxBackend -> findings.summarize, as in the router (in memory: the file path is covered elsewhere).

Seeds 900000+ are never used in training (scripts/train_ich_detector.py trains on 2000000+ and validates on
2500000+). Phantoms are ``varied``: field of view 200-320 mm, slice thickness 0.625-5 mm, gantry tilt 0-25
degrees, noise 2.5-14 HU, matrices 256 and 384; 8 slices each. Per type :data:`PER_TYPE` studies; a hemorrhage study
counts only when a slice shows the blood (ground truth), the next seed is taken otherwise. A study is called
positive when its most likely slice reaches the model's decision threshold (model.json operatingPoint).

Run ``pytest tests/unit/pacsflow_router/test_model_quality.py -s`` to see the per-type table (in the model card).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pacsflow_router import domain
from pacsflow_router.analysis import findings, preprocess
from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.analysis.manifest import load_manifest
from pacsflow_router.config import ModelRef
from pacsflow_router.models import phantom

REPO = Path(__file__).resolve().parents[3] / "model_repository"
MODEL = ModelRef(name="ich_detector", version=2)
SEED0 = 900_000
PER_TYPE = 20
SLICES = 8
MATRICES = (256, 256, 256, 384)
MIN_SENSITIVITY = 0.95
MIN_SPECIFICITY = 0.95
CRITICAL = 0.85
# The reported point must lie inside the hemorrhage, allowing this much beyond its extent.
LOCATION_SLACK_MM = 5.0
NEGATIVE_TYPES = ("normal", *phantom.MIMIC_TYPES)


def _series(datasets: list) -> domain.Series:
    return domain.Series(str(datasets[0].SeriesInstanceUID), "CT", "HEAD", "Head non-con",
                         [domain.Slice(header=d, pixels=d.pixel_array) for d in datasets])


@pytest.fixture(scope="module")
def model():
    backend = EmbeddedOnnxBackend(REPO)
    spec = preprocess.load_spec(REPO, MODEL)
    manifest = load_manifest(REPO, MODEL)
    threshold = manifest.operating_point.decision_threshold

    def run(series: domain.Series) -> domain.Finding:
        batch = preprocess.preprocess_series(series, spec, "dali", device="cpu")
        return findings.summarize(series, backend.infer(MODEL, batch), critical_threshold=CRITICAL,
                                  slice_weights=manifest.output.slice_weights)

    return run, threshold


@pytest.fixture(scope="module")
def results(model):
    run, _ = model
    out: dict[str, list[tuple[phantom.GroundTruth, domain.Finding]]] = {}
    for j, kind in enumerate((*phantom.HEMORRHAGE_TYPES, *NEGATIVE_TYPES)):
        lesion = kind in phantom.HEMORRHAGE_TYPES
        rows: list[tuple[phantom.GroundTruth, domain.Finding]] = []
        seed = SEED0 + 1000 * j
        while len(rows) < PER_TYPE:
            size = MATRICES[seed % len(MATRICES)]
            datasets, truth = phantom.generate_study(
                seed, lesion=lesion, slices=SLICES, rows=size, cols=size, varied=True,
                hemorrhage=kind if lesion else None, mimics=[kind] if kind in phantom.MIMIC_TYPES else [])
            seed += 1
            if lesion and not truth.has_lesion:
                continue  # the slab missed the blood: not a hemorrhage study
            rows.append((truth, run(_series(datasets))))
        out[kind] = rows
    return out


# Known gap, measured and documented in docs/model-card-ich_detector.md: the model misses intraparenchymal clots
# under about 0.2 ml (4-6 mm) -- 16/20 here, 14/20 on the validation seeds. Strict: this fails once the model
# reaches the bar, so the mark must then go.
_KNOWN_GAPS = {"intraparenchymal": "misses clots under ~0.2 ml (model card: known failure modes)"}


def test_report_per_type(results, model):
    """The table of the model card (run with -s); asserts that every type was measured."""
    _, threshold = model
    lines = [f"{'type':<18} {'called':>8} {'rate':>6} {'min p':>7} {'max p':>7}"]
    for kind, rows in results.items():
        lesion = kind in phantom.HEMORRHAGE_TYPES
        probs = [f.probability for _, f in rows]
        rate = sum((p >= threshold) == lesion for p in probs) / len(rows)
        lines.append(f"{kind:<18} {sum(p >= threshold for p in probs):>4}/{len(rows):<3} {rate:>6.2f} "
                     f"{min(probs):>7.3f} {max(probs):>7.3f}  ({'sensitivity' if lesion else 'specificity'})")
    print("\n" + "\n".join(lines))
    assert set(results) == {*phantom.HEMORRHAGE_TYPES, *NEGATIVE_TYPES}
    assert all(len(rows) == PER_TYPE for rows in results.values())


@pytest.mark.parametrize("kind", [
    pytest.param(k, marks=pytest.mark.xfail(reason=_KNOWN_GAPS[k], strict=True)) if k in _KNOWN_GAPS else k
    for k in (*phantom.HEMORRHAGE_TYPES, *NEGATIVE_TYPES)
])
def test_sensitivity_and_specificity_per_type(results, model, kind):
    _, threshold = model
    lesion = kind in phantom.HEMORRHAGE_TYPES
    probs = [f.probability for _, f in results[kind]]
    rate = sum((p >= threshold) == lesion for p in probs) / len(probs)
    assert rate >= (MIN_SENSITIVITY if lesion else MIN_SPECIFICITY), \
        f"{kind}: {'sensitivity' if lesion else 'specificity'} {rate:.2f}, probabilities {sorted(probs)}"


@pytest.mark.parametrize("kind", ["bone_only", "calcifications"])
def test_bone_only_and_calcification_only_heads_are_never_critical(results, kind):
    worst = max(f.probability for _, f in results[kind])
    # Triage flags a study whose probability reaches the critical threshold (the mode gate's rule).
    assert worst < CRITICAL, f"{kind}: highest probability {worst:.3f}"


@pytest.mark.parametrize("hu", [1000.0, 0.0], ids=["bone-density-block", "water"])
def test_uniform_volumes_are_not_positive(model, hu):
    run, threshold = model
    datasets, _ = phantom.generate_study(SEED0 - 1, lesion=False, slices=4, rows=256, cols=256)
    for ds in datasets:
        ds.PixelData = np.full((256, 256), hu + 1024, dtype=np.int16).tobytes()
    finding = run(_series(datasets))
    assert finding.probability < threshold, f"uniform {hu} HU: {finding.probability:.3f}"


def test_true_positives_point_into_the_hemorrhage(results, model):
    _, threshold = model
    distances = []
    for kind in phantom.HEMORRHAGE_TYPES:
        for truth, finding in results[kind]:
            if finding.probability < threshold:
                continue
            assert finding.patient_point is not None
            point = finding.patient_point
            # The nearest hemorrhage, on a slice that shows it or its neighbour (blood below the visibility
            # floor of the ground truth partial-volumes into the next slice), the point within its extent.
            best = min(truth.lesions, key=lambda les: math.dist(point, les.centre_mm))
            assert min(abs(finding.slice_index - k) for k in best.slice_indices) <= 1, f"{kind} seed {truth.seed}"
            d = math.dist(point, best.centre_mm)
            distances.append(d)
            assert d <= best.radius_mm + LOCATION_SLACK_MM, f"{kind} seed {truth.seed}: {d:.1f} mm from the centre"
    print(f"\nlocation: distance to the hemorrhage's centre median {float(np.median(distances)):.1f} mm, "
          f"max {max(distances):.1f} mm over {len(distances)} true positives")
    assert distances


# Whole studies as a scanner sends them (24 slices, the demo's and e2e tests' default phantom) rather than 8-slice
# slabs: a study is called positive when its most likely slice is, so every extra slice is another chance of a false
# positive. Measured with version 2 on these seeds: hemorrhage 16/16, normal heads 11/16 (0.69; three of them at
# 0.87-0.94, above the critical threshold). Strict: this fails once a model reaches the bar, so the mark must go.
FULL_SEED0 = 960_000
FULL_PER_CLASS = 16
FULL_SLICES = 24


@pytest.fixture(scope="module")
def full_length(model):
    run, _ = model
    out: dict[bool, list[float]] = {True: [], False: []}
    for lesion in (True, False):
        seed = FULL_SEED0 + (0 if lesion else 10_000)
        while len(out[lesion]) < FULL_PER_CLASS:
            datasets, truth = phantom.generate_study(seed, lesion=lesion, slices=FULL_SLICES)
            seed += 1
            if lesion and not truth.has_lesion:
                continue
            out[lesion].append(run(_series(datasets)).probability)
    return out


@pytest.mark.parametrize("lesion", [
    True,
    pytest.param(False, marks=pytest.mark.xfail(
        strict=True, reason="normal 24-slice heads: specificity below 0.95 (model card: known failure modes)")),
], ids=["sensitivity", "specificity"])
def test_full_length_studies(full_length, model, lesion):
    _, threshold = model
    probs = full_length[lesion]
    rate = sum((p >= threshold) == lesion for p in probs) / len(probs)
    print(f"\nfull-length {'hemorrhage' if lesion else 'normal'}: {rate:.2f}, probabilities {sorted(round(p, 3) for p in probs)}")
    assert rate >= (MIN_SENSITIVITY if lesion else MIN_SPECIFICITY)
