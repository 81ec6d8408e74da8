"""dcmtk storescu -> pacsflow-router (Triton backend) -> real tritonserver -> SR in Orthanc.

The Triton here is the real ``tritonserver`` 2.51 from the nvidia-pytriton wheel (CPU, python backend, ensembles),
serving a repository rendered from a copy of the committed ``model_repository`` plus a second, different model
version. One router run covers: SR validity, same answer as the embedded path, pin switch 1 -> 2 (results, AIR
algorithm version and device UID change), a pin to a version Triton lacks (audited error, no crash), and Triton
stopped mid-run (the study waits durably, counted in a metric, and completes when Triton is back).

The router's own repository is the committed one, as in its image: its version 2 is the real three-window model,
while Triton serves a different, one-window version 2. The router preprocesses and reports with what Triton serves
(``inference.manifestMirror``): with its image's manifests every version-2 batch would have the wrong channel count.
"""

from __future__ import annotations

import shutil
from io import BytesIO
from pathlib import Path

import pydicom
import pytest

from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.analysis.matching import select_series
from pacsflow_router.analysis.volume import load_study
from pacsflow_router.config import Match, UseCase
from pacsflow_router.domain import StudyRef, study_key
from pacsflow_router.pipeline import analyse
from pacsflow_router.results.reports import device_uid
from tests.e2e.conftest import audit_records, metric_value, wait_for
from tests.e2e.delivery import assert_delivered_once, sr_requests, stop_when_idle
from tests.peers.dcmtk import storescu
from tests.peers.router import REPO, use_case
from tests.peers.srcheck import check_sr
from tests.peers.triton import make_test_onnx, serve

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.triton]

TIMEOUT = 180
TOLERANCE = 1e-4  # probability; float32 ONNX Runtime in two processes (router venv vs Triton venv)


def _embedded_probability(repository: Path, version: int, paths: list[Path], study_uid: str) -> float:
    """What the embedded path says about the same files (the reference the Triton path must match)."""
    ref = StudyRef(study_uid=study_uid, key=study_key(study_uid), paths=tuple(map(str, paths)), last_received=0)
    study = load_study(ref)
    series = select_series(Match(modalities=["CT"]), study)
    uc = UseCase.model_validate(use_case("ich", "triage", threshold=0.5, version=version))
    return analyse(series, uc, EmbeddedOnnxBackend(repository), repository).probability


def _sr_of(pacs, truth) -> pydicom.Dataset | None:
    ids = pacs.instances(modality="SR", study_uid=truth.study_instance_uid)
    return pydicom.dcmread(BytesIO(pacs.instance_file(ids[0]))) if ids else None


def _air(sr: pydicom.Dataset) -> tuple[str, str]:
    """(algorithm version from TID 4019, device UID from Contributing Equipment)."""
    versions = []

    def walk(items):
        for item in items:
            name = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if name == "Algorithm Version":
                versions.append(item.TextValue)
            walk(item.get("ContentSequence", []))

    walk(sr.ContentSequence)
    equipment = [e for e in sr.ContributingEquipmentSequence if "DeviceUID" in e]
    return versions[0], equipment[0].DeviceUID


def test_study_through_triton_pin_switch_missing_version_and_outage(pacs, make_router, studies, tmp_path):
    source = tmp_path / "model_repository"
    shutil.copytree(REPO / "model_repository", source)
    make_test_onnx(source / "ich_detector" / "2" / "model.onnx", seed=2)  # a different model as version 2
    # ... taking one channel, as the test model does: the model-level (one-window) preprocessing applies to it.
    (source / "ich_detector" / "2" / "preprocess.json").unlink()
    triton = serve(source, tmp_path / "triton")
    image = tmp_path / "image-model-repository"
    shutil.copytree(REPO / "model_repository", image)
    mirror = tmp_path / "manifests"
    try:
        inference = {"backend": "triton", "url": triton.url, "modelRepository": str(image),
                     "manifestMirror": str(mirror), "sharedMemory": True, "timeoutSeconds": 30}
        router = make_router([use_case("ich", "triage", threshold=0.5, version=1)], pacs_port=pacs.dicom_port,
                             inference=inference).start()

        # 1. Pinned to version 1: SR valid, same answer as the embedded path.
        paths_a, study_a = studies(61, lesion=True)
        assert len(storescu(router.port, paths_a).acknowledged) == len(paths_a)
        sr_a = wait_for(lambda: _sr_of(pacs, study_a), TIMEOUT, "SR via Triton (v1)", router)
        sr_a.save_as(tmp_path / "a.dcm")
        assert check_sr(tmp_path / "a.dcm").errors == []
        record_a = audit_records(router, study_a)[0]
        assert record_a["model_version"] == 1 and record_a["critical"] is True
        reference = _embedded_probability(source, 1, paths_a, study_a.study_instance_uid)
        assert abs(record_a["probability"] - reference) <= TOLERANCE
        assert _air(sr_a) == ("1", device_uid("ich_detector", 1))

        reloads = 0

        def pin(version: int) -> None:
            """Edit the mounted config as the operator does on a pin change; wait for the hot reload."""
            nonlocal reloads
            router.write_config({**router.config, "useCases": [use_case("ich", "triage", threshold=0.5,
                                                                        version=version)]})
            reloads += 1
            wait_for(lambda: metric_value(router, "pacsflow_config_reloads_total", outcome="applied") >= reloads,
                     30, f"reload pinning version {version}", router)

        # 2. Pin switched to 2 (hot reload): different model, AIR version and device UID follow.
        pin(2)
        paths_b, study_b = studies(64, lesion=True)
        assert len(storescu(router.port, paths_b).acknowledged) == len(paths_b)
        sr_b = wait_for(lambda: _sr_of(pacs, study_b), TIMEOUT, "SR via Triton (v2)", router)
        record_b = audit_records(router, study_b)[0]
        assert record_b["model_version"] == 2
        assert abs(record_b["probability"] - _embedded_probability(source, 2, paths_b, study_b.study_instance_uid)) \
            <= TOLERANCE
        assert _air(sr_b) == ("2", device_uid("ich_detector", 2))  # the image's v2 would say "ich_detector 2.0.0"
        assert device_uid("ich_detector", 2) != device_uid("ich_detector", 1)
        # Served by Triton: version 2 without a preprocess.json of its own, so the model-wide one-window file.
        mirrored = (mirror / "ich_detector" / "2" / "preprocess.json").read_text()
        assert mirrored == (source / "ich_detector" / "preprocess.json").read_text()
        assert mirrored != (image / "ich_detector" / "2" / "preprocess.json").read_text()

        # 3. A version Triton does not have: audited error on that study, the router keeps running.
        pin(7)
        paths_c, study_c = studies(62, lesion=False)
        assert len(storescu(router.port, paths_c).acknowledged) == len(paths_c)
        record_c = wait_for(lambda: audit_records(router, study_c), TIMEOUT, "audited error", router)[0]
        assert record_c["outcome"].startswith("error:") and "7" in record_c["outcome"]
        assert router.proc.poll() is None

        # 4. Triton down mid-run: the study waits (durably, counted), completes once Triton is back.
        pin(1)
        triton.stop()
        paths_d, study_d = studies(63, lesion=True)
        assert len(storescu(router.port, paths_d).acknowledged) == len(paths_d)
        wait_for(lambda: metric_value(router, "pacsflow_inference_unavailable_waits_total", use_case="ich") >= 1,
                 TIMEOUT, "the study waiting for Triton", router)
        assert _sr_of(pacs, study_d) is None and audit_records(router, study_d) == []
        triton.start(wait_models=("ich_detector_v1",))
        wait_for(lambda: _sr_of(pacs, study_d), TIMEOUT, "SR after Triton came back", router)
        assert len(audit_records(router, study_d)) == 1

        # Exactly once, counted at the receiver (Orthanc keeps one copy of a re-sent SR, so its stored SRs cannot
        # show a duplicate): once the router is idle and stopped, each reported study's SR went in one C-STORE
        # request, the one that waited for Triton too, and the study pinned to a missing version sent none.
        stop_when_idle(router)
        for study in (study_a, study_b, study_d):
            assert_delivered_once(pacs, study.study_instance_uid)
        assert sr_requests(pacs, study_c.study_instance_uid) == []
    finally:
        triton.stop()
