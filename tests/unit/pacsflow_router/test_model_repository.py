"""Rendering and statically checking the deployable Triton model repository (no server needed here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pacsflow_router.models import repository
from tests.peers.triton import make_source_repository, make_test_onnx

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "model_repository"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_source_repository(tmp_path / "src", {1: 1, 2: 2})


@pytest.mark.parametrize("target", repository.TARGETS)
def test_committed_repository_renders_and_checks_clean(tmp_path: Path, target: str):
    """Every config in the committed repository, rendered for both Triton targets, passes the static check."""
    assert repository.check_repository(COMMITTED) == []
    plan = repository.render_repository(COMMITTED, tmp_path / target, target)
    assert plan.problems == []
    assert "ich_detector_v1" in plan.models and "ich_detector_v2" in plan.models
    assert repository.check_repository(tmp_path / target) == []
    # Versions take different inputs (v1: brain window; v2: brain, subdural, bone): each rendered version, and the
    # ensemble the router calls, declares its own model's dims.
    for version, channels in ((1, 1), (2, 3)):
        for model in (f"ich_detector_v{version}_onnx", f"ich_detector_v{version}"):
            config = repository.parse_config((tmp_path / target / model / "config.pbtxt").read_text())
            assert list(config.input[0].dims) == [channels, 256, 256], model


@pytest.mark.parametrize("target", repository.TARGETS)
def test_render_layout_per_target(source: Path, tmp_path: Path, target: str):
    out = tmp_path / "out"
    plan = repository.render_repository(source, out, target)
    assert plan.models == ["ich_detector_postprocess", "ich_detector_v1_onnx", "ich_detector_v1",
                           "ich_detector_v2_onnx", "ich_detector_v2"]
    assert repository.check_repository(out) == []
    onnx = repository.parse_config((out / "ich_detector_v1_onnx" / "config.pbtxt").read_text())
    assert list(onnx.version_policy.specific.versions) == [1]
    if target == "gpu":
        assert onnx.backend == "onnxruntime" and onnx.instance_group[0].kind == onnx.instance_group[0].KIND_GPU
        assert not (out / "ich_detector_v1_onnx" / "1" / "model.py").exists()
    else:
        assert onnx.backend == "python" and (out / "ich_detector_v1_onnx" / "1" / "model.py").is_file()
    assert (out / "ich_detector_v2_onnx" / "2" / "model.onnx").read_bytes() == \
        (source / "ich_detector" / "2" / "model.onnx").read_bytes()
    db = onnx.dynamic_batching
    assert (db.priority_levels, db.default_priority_level) == (repository.PRIORITY_LEVELS, repository.PRIORITY_LEVELS)
    assert db.default_queue_policy.max_queue_size == repository.MAX_QUEUE_SIZE
    # The postprocess step is the router's own function, byte for byte.
    from pacsflow_router.analysis import postprocess
    assert (out / "ich_detector_postprocess" / "1" / "postprocess.py").read_bytes() == \
        Path(postprocess.__file__).read_bytes()


def test_each_ensemble_version_pins_its_onnx_version(source: Path, tmp_path: Path):
    repository.render_repository(source, tmp_path / "out", "cpu-python")
    for version in (1, 2):
        name = repository.ensemble_name("ich_detector", version)
        cfg = repository.parse_config((tmp_path / "out" / name / "config.pbtxt").read_text())
        assert list(cfg.version_policy.specific.versions) == [version]
        assert (tmp_path / "out" / name / str(version)).is_dir()
        steps = {s.model_name: s.model_version for s in cfg.ensemble_scheduling.step}
        assert steps == {f"ich_detector_v{version}_onnx": version, "ich_detector_postprocess": 1}
        assert repository.version_models("ich_detector", version) == [
            "ich_detector_postprocess", f"ich_detector_v{version}_onnx", name]


def test_pinned_versions_render_only_those(source: Path, tmp_path: Path):
    plan = repository.render_repository(source, tmp_path / "out", "gpu", {"ich_detector": [2]})
    assert plan.models == ["ich_detector_postprocess", "ich_detector_v2_onnx", "ich_detector_v2"]
    assert not (tmp_path / "out" / "ich_detector_v1_onnx").exists()
    assert repository.check_repository(tmp_path / "out") == []


def test_pinning_a_missing_version_is_reported(source: Path, tmp_path: Path):
    plan = repository.render_repository(source, tmp_path / "out", "cpu-python", {"*": [1, 7]})
    assert any("pinned version 7" in p for p in plan.problems)
    assert "ich_detector_v1" in plan.models


def test_version_drop_in_only_adds_files(source: Path, tmp_path: Path):
    """Re-rendering after a new version lands writes the new version folders and leaves every served file alone."""
    shutil.rmtree(source / "ich_detector" / "2")
    out = tmp_path / "out"
    repository.render_repository(source, out, "cpu-python")
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}
    make_test_onnx(source / "ich_detector" / "2" / "model.onnx", seed=2)
    changed = repository.write_repository(repository.plan_repository(source, "cpu-python"), out)
    assert sorted(changed) == ["ich_detector_v2", "ich_detector_v2_onnx"]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert repository.check_repository(out) == []
    # Nothing was staged inside the repository Triton reads.
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.is_dir()]


def test_removed_version_is_removed_from_output(source: Path, tmp_path: Path):
    out = tmp_path / "out"
    repository.render_repository(source, out, "cpu-python")
    (out / "not_ours").mkdir()
    repository.render_repository(source, out, "cpu-python", {"*": [2]})
    assert not (out / "ich_detector_v1_onnx").exists() and not (out / "ich_detector_v1").exists()
    assert (out / "not_ours").is_dir()


def test_malformed_source_is_reported_and_good_versions_still_render(source: Path, tmp_path: Path):
    (source / "ich_detector" / "3").mkdir()  # a version folder whose model.onnx never arrived
    bad = source / "broken"
    (bad / "1").mkdir(parents=True)
    (bad / "config.pbtxt").write_text('name: "broken"\nplatform: onnxruntime_onnx\ninput [ { name: "image" ')
    plan = repository.render_repository(source, tmp_path / "out", "cpu-python")
    assert "ich_detector/3: missing or empty model.onnx; version skipped" in plan.problems
    assert any(p.startswith("broken/config.pbtxt: not a valid Triton model config") for p in plan.problems)
    assert plan.models == ["ich_detector_postprocess", "ich_detector_v1_onnx", "ich_detector_v1",
                           "ich_detector_v2_onnx", "ich_detector_v2"]
    assert repository.check_repository(tmp_path / "out") == []


def test_check_reports_broken_rendered_repository(source: Path, tmp_path: Path):
    out = tmp_path / "out"
    repository.render_repository(source, out, "cpu-python")
    (out / "ich_detector_v2_onnx" / "2" / "model.py").unlink()
    (out / "ich_detector_v1_onnx" / "1" / "model.onnx").unlink()
    (out / "garbage").mkdir()
    (out / "garbage" / "config.pbtxt").write_text("max_batch_size: lots\n")
    ens = out / "ich_detector_v1" / "config.pbtxt"
    ens.write_text(ens.read_text().replace('key: "logit"\n      value: "raw_logit"', 'key: "logits"\n      value: "raw_logit"', 1))
    renamed = out / "ich_detector_v2" / "config.pbtxt"
    renamed.write_text(renamed.read_text().replace('name: "ich_detector_v2"', 'name: "ich_detector_v9"'))
    problems = repository.check_repository(out)
    assert "ich_detector_v2_onnx/2: missing model.py" in problems
    assert "ich_detector_v1_onnx/1: missing model.onnx" in problems
    assert any(p.startswith("garbage/config.pbtxt: not a valid Triton model config") for p in problems)
    assert any("output_map key 'logits' is not an output of ich_detector_v1_onnx" in p for p in problems)
    assert "ich_detector_v2/config.pbtxt: name 'ich_detector_v9' does not match folder 'ich_detector_v2'" in problems


def test_check_reports_step_on_missing_model_and_version(source: Path, tmp_path: Path):
    out = tmp_path / "out"
    repository.render_repository(source, out, "gpu")
    shutil.rmtree(out / "ich_detector_postprocess")
    shutil.rmtree(out / "ich_detector_v2_onnx" / "2")
    problems = repository.check_repository(out)
    assert "ich_detector_v1: step 1 (ich_detector_postprocess): no model 'ich_detector_postprocess' in the repository" \
        in problems
    assert "ich_detector_v2: step 0 (ich_detector_v2_onnx): version 2 is not served by ich_detector_v2_onnx" \
        in problems
    assert "ich_detector_v2_onnx: no numbered version folder" in problems


def test_cli_render_and_check(source: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert repository.main(["render", "--target", "gpu", "--source", str(source), "--out", str(out),
                           "--versions", "ich_detector:1"]) == 0
    assert "ich_detector_v1" in capsys.readouterr().out
    assert repository.main(["check", str(out)]) == 0
    (out / "ich_detector_v1" / "config.pbtxt").write_text("nonsense {")
    assert repository.main(["check", str(out)]) == 1
    assert "ich_detector_v1/config.pbtxt: not a valid Triton model config" in capsys.readouterr().out
    assert repository.main(["render", "--target", "gpu", "--source", str(tmp_path / "nowhere"), "--out", str(out)]) == 1


def test_ensemble_name_is_what_the_router_asks_for():
    assert repository.ensemble_name("ich_detector", 2) == "ich_detector_v2"


def test_each_ensemble_carries_its_versions_manifest(tmp_path: Path):
    """The router's side of every version (model.json, preprocess.json: the version's own, else the model's; the
    ONNX file's algorithm version) travels in the ensemble's parameters; a version without them carries none."""
    from pacsflow_router.analysis.manifest import algorithm_version
    from pacsflow_router.config import ModelRef

    plan = repository.render_repository(COMMITTED, tmp_path / "out", "cpu-python")
    assert plan.problems == []
    keys = repository.MANIFEST_PARAMETERS
    for version, preprocess in ((1, COMMITTED / "ich_detector" / "preprocess.json"),
                                (2, COMMITTED / "ich_detector" / "2" / "preprocess.json")):
        config = repository.parse_config((tmp_path / "out" / f"ich_detector_v{version}" / "config.pbtxt").read_text())
        parameters = {k: v.string_value for k, v in config.parameters.items()}
        assert parameters[keys["model.json"]] == (COMMITTED / "ich_detector" / "model.json").read_text()
        assert parameters[keys["preprocess.json"]] == preprocess.read_text()
        stated = algorithm_version(COMMITTED, ModelRef(name="ich_detector", version=version))
        # Version 1's graph states no version string (the router reports "1"); version 2's does.
        assert parameters.get(keys["algorithm_version.txt"]) == (None if version == 1 else stated)
    assert stated.startswith("ich_detector 2.")
    # Test models have neither manifest files nor a version string in their graphs.
    bare = make_source_repository(tmp_path / "bare", {1: 1})
    repository.render_repository(bare, tmp_path / "bare-out", "cpu-python")
    config = repository.parse_config((tmp_path / "bare-out" / "ich_detector_v1" / "config.pbtxt").read_text())
    assert dict(config.parameters) == {}
