"""ManifestMirror: a router on Triton reads each pinned version's manifest as Triton serves it (a stand-in for
Triton's answer here; tests/integration/test_triton.py asks a real tritonserver)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pacsflow_router import metrics
from pacsflow_router.analysis.manifest import algorithm_version, load_manifest
from pacsflow_router.analysis.manifestmirror import ManifestMirror
from pacsflow_router.analysis.preprocess import load_spec
from pacsflow_router.config import ModelRef
from pacsflow_router.errors import InferenceUnavailableError, ModelNotFoundError

COMMITTED = Path(__file__).resolve().parents[3] / "model_repository"
V2 = ModelRef(name="ich_detector", version=2)
V7 = ModelRef(name="ich_detector", version=7)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Triton:
    """What Triton's ensembles carry, per version; ``down`` makes every question fail as an outage does."""

    def __init__(self, served: dict[int, dict[str, str] | None]) -> None:
        self.served = served
        self.asked = 0
        self.down = False

    def __call__(self, model: ModelRef) -> dict[str, str] | None:
        self.asked += 1
        if self.down:
            raise InferenceUnavailableError("Triton at 127.0.0.1:1 is unreachable")
        if model.version not in self.served:
            raise ModelNotFoundError(f"model {model.name} version {model.version} is not in Triton's repository")
        return self.served[model.version]


def _refreshes(outcome: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "pacsflow_manifest_refreshes_total", {"model": "ich_detector", "outcome": outcome}) or 0.0


def _v7_files(threshold_comment: str = "") -> dict[str, str]:
    # Version 7 exists only in Triton: version 2's preprocessing with a model.json of its own.
    model_json = (COMMITTED / "ich_detector" / "model.json").read_text()
    return {"model.json": model_json + threshold_comment,
            "preprocess.json": (COMMITTED / "ich_detector" / "2" / "preprocess.json").read_text(),
            "algorithm_version.txt": "ich_detector 7.0.0 (dropped into Triton only)"}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    # The router image's repository: versions 1 and 2 only.
    shutil.copytree(COMMITTED / "ich_detector", tmp_path / "image" / "ich_detector")
    return tmp_path / "image"


def test_a_version_only_triton_serves_is_mirrored_and_read_like_a_repository(tmp_path: Path, image: Path):
    triton = Triton({7: _v7_files()})
    mirror = ManifestMirror(tmp_path / "mirror", image, triton)
    root = mirror.repository(V7)
    assert root == tmp_path / "mirror"
    assert load_manifest(root, V7) == load_manifest(COMMITTED, V2)
    assert load_spec(root, V7) == load_spec(COMMITTED, V2)
    assert algorithm_version(root, V7) == "ich_detector 7.0.0 (dropped into Triton only)"
    # Without the mirror the router would fall back to the image's model-wide files: version 1's one-window
    # preprocessing for a version that takes three channels (Triton would reject every study's batch).
    assert (load_spec(image, V7).channels, load_spec(root, V7).channels) == (1, 3)
    assert not [p for p in (root / "ich_detector" / "7").iterdir() if p.name.startswith(".")]  # no temp files left


def test_asked_again_after_max_age_and_rewritten_only_when_changed(tmp_path: Path, image: Path):
    clock = Clock()
    triton = Triton({7: _v7_files()})
    mirror = ManifestMirror(tmp_path / "mirror", image, triton, max_age=60, clock=clock)
    mirror.repository(V7)
    model_json = tmp_path / "mirror" / "ich_detector" / "7" / "model.json"
    first = model_json.stat().st_mtime_ns
    for _ in range(5):
        mirror.repository(V7)
    assert triton.asked == 1  # within max_age: no request per study
    clock.now += 61
    mirror.repository(V7)
    assert triton.asked == 2 and model_json.stat().st_mtime_ns == first  # same text: not rewritten
    triton.served[7] = {k: v for k, v in _v7_files("\n").items() if k != "algorithm_version.txt"}
    clock.now += 61
    mirror.repository(V7)
    assert model_json.read_text().endswith("\n\n")
    # A file the new render no longer carries is gone: the version number stands in again.
    assert algorithm_version(tmp_path / "mirror", V7) == "7"


def test_an_older_render_without_manifests_means_the_images_repository(tmp_path: Path, image: Path):
    mirror = ManifestMirror(tmp_path / "mirror", image, Triton({2: None}))
    before = _refreshes("image")
    assert mirror.repository(V2) == image
    assert _refreshes("image") == before + 1


def test_triton_down_uses_the_last_copy_then_the_image_else_the_study_waits(tmp_path: Path, image: Path):
    triton = Triton({2: None, 7: _v7_files()})
    mirror = ManifestMirror(tmp_path / "mirror", image, triton, max_age=0)
    before = {outcome: _refreshes(outcome) for outcome in metrics.MANIFEST_OUTCOMES}
    mirror.repository(V7)
    triton.down = True
    assert mirror.repository(V7) == tmp_path / "mirror"  # the copy on disk
    assert mirror.repository(V2) == image  # the image has version 2
    with pytest.raises(InferenceUnavailableError):
        mirror.repository(ModelRef(name="ich_detector", version=8))  # nobody has it: the study waits for Triton
    # What an SRE sees: one mirrored, two read from a copy while Triton was down, one with no copy at all.
    assert {o: _refreshes(o) - before[o] for o in metrics.MANIFEST_OUTCOMES} == {
        "mirrored": 1, "image": 0, "last-copy": 2, "none": 1}
    triton.down = False
    with pytest.raises(ModelNotFoundError):
        mirror.repository(ModelRef(name="ich_detector", version=8))  # Triton says it does not exist: permanent
