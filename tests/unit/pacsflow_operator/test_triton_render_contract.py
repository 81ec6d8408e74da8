"""Contract with the router's model-repository renderer: the Triton init container's command works.

The operator never reads the model repository; it writes the pinned versions into the arguments of
``pacsflow model-repository render`` run by the Triton pod's init container. This runs exactly those
arguments (paths moved to the test's folders) with the real ``pacsflow`` command on the committed source
repository, so a change of the CLI on either side breaks here, not in a cluster.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pacsflow_operator.reconcile import triton as triton_rc
from pacsflow_operator.resources.v1alpha1 import AIUseCaseSpec, TritonClusterSpec

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO / "model_repository"
PACSFLOW = Path(sys.executable).with_name("pacsflow")


def _init_command(versions: dict[str, int], gpus: int, out: Path) -> list[str]:
    ucs = {f"uc{i}": AIUseCaseSpec.model_validate({"router": "r", "model": {"name": m, "version": v}})
           for i, (m, v) in enumerate(versions.items())}
    spec = TritonClusterSpec.model_validate({"image": "triton", "gpusPerReplica": gpus,
                                             "modelRepository": {"persistentVolumeClaim": "repo"}})
    plan = triton_rc.render_triton("t", spec, ucs, render_image="router")
    [init] = next(c for c in plan.children if c["kind"] == "Deployment")["spec"]["template"]["spec"]["initContainers"]
    moved = {triton_rc.REPO_MOUNT: str(SOURCE), triton_rc.MODELS_DIR: str(out)}
    return [str(PACSFLOW), *(moved.get(a, a) for a in init["args"])]


@pytest.mark.skipif(not (SOURCE / "ich_detector" / "1").is_dir(), reason="no committed model version to render")
@pytest.mark.parametrize("gpus", [0, 1])
def test_init_container_renders_the_pinned_versions(tmp_path: Path, gpus: int):
    out = tmp_path / "models"
    done = subprocess.run(_init_command({"ich_detector": 1}, gpus, out), capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert (out / "ich_detector_v1" / "config.pbtxt").is_file()
    check = subprocess.run([str(PACSFLOW), "model-repository", "check", str(out)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.skipif(not shutil.which(str(PACSFLOW)), reason="pacsflow console script not installed")
def test_a_pinned_version_that_does_not_exist_fails_the_init_container(tmp_path: Path):
    # Triton must not start serving without a version a use case pins: the pod stays in Init:Error,
    # which the platform team sees, instead of the router failing every study later.
    done = subprocess.run(_init_command({"ich_detector": 99}, 0, tmp_path / "models"), capture_output=True,
                          text=True, check=False)
    assert done.returncode != 0
    assert "pinned version 99" in done.stderr
