"""MPPS against real peers: dcmtk storescu sends the images, dcmjs-dimse (Node.js) plays the modality's MPPS SCU.

The receiver's stable window is 600 s, so within a test only an MPPS can make a study due; the stable-window
fallback is checked by asking :meth:`StudyTracker.due` about a time past the window.
"""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from pacsflow_router import metrics
from pacsflow_router.config import parse_config
from pacsflow_router.ingest.completion import MppsStore
from pacsflow_router.ingest.scp import DicomReceiver
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.ingest.studies import StudyTracker
from pacsflow_router.models import phantom
from pacsflow_router.workflow.mpps import mpps_service
from tests.peers import modality
from tests.peers.dcmtk import storescu

# dcmtk (storescu) is required, not optional: make system-deps installs it and a missing tool fails.

WINDOW = 600.0
MODALITY_AE = "CT_ED_1"


class Router:
    """A DicomReceiver with the MPPS service on one port, its spool and tracker (restartable on the same dir)."""

    def __init__(self, spool_dir: Path, by_modality: dict[str, float] | None = None) -> None:
        self.spool_dir = spool_dir
        self.by_modality = by_modality or {}
        self.start()

    def start(self) -> None:
        self.spool = Spool(self.spool_dir, 0.999)
        self.tracker = StudyTracker(self.spool, WINDOW, by_modality=self.by_modality)
        config = parse_config({"aeTitle": "PACSFLOW", "allowedCallingAETitles": ["STORESCU", MODALITY_AE],
                               "spoolDir": str(self.spool_dir)})
        self.receiver = DicomReceiver(config, self.spool, port=0, acse_timeout=5, network_timeout=10,
                                      services=[mpps_service(self.tracker)])
        self.receiver.start()

    def stop(self) -> None:
        self.receiver.stop()
        self.spool.close()

    @property
    def port(self) -> int:
        return self.receiver.port

    def due(self, now: float | None = None) -> list[str]:
        return [r.study_uid for r in self.tracker.due(now)]


@pytest.fixture
def router(tmp_path):
    r = Router(tmp_path / "spool")
    yield r
    r.stop()


def write_study(directory: Path, seed: int, slices: int = 4, modality_code: str = "CT") -> list[Path]:
    datasets, _ = phantom.generate_study(seed, lesion=False, slices=slices, rows=32, cols=32)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        ds.Modality = modality_code
        path = directory / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def refs(paths: list[Path]) -> list[tuple[str, str, str]]:
    out = []
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        out.append((str(ds.SeriesInstanceUID), str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


def study_uid(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


def send_images(router: Router, paths: list[Path]) -> None:
    result = storescu(router.port, paths)
    assert len(result.acknowledged) == len(paths), result.output[-2000:]


def mpps_count(event: str, status: str) -> float:
    return metrics.REGISTRY.get_sample_value("pacsflow_mpps_total", {"event": event, "status": status}) or 0.0


def test_completed_makes_the_study_due_at_once(router, tmp_path):
    paths = write_study(tmp_path / "study", 1)
    uid, study = generate_uid(), study_uid(paths)
    before = mpps_count("n-set", "completed"), mpps_count("n-create", "in-progress")
    (created,) = modality.send(router.port, [modality.n_create(uid, [study])])  # acquisition starts: no image yet
    assert created.status == 0x0000
    send_images(router, paths)
    assert router.due() == [], "MPPS IN PROGRESS and the 600 s window not passed"
    (completed,) = modality.send(router.port, [modality.n_set(uid, "COMPLETED", refs(paths))])
    assert completed.status == 0x0000
    assert router.due() == [study]
    assert router.tracker.completion_reason(study) == "mpps-completed"
    assert (mpps_count("n-set", "completed"), mpps_count("n-create", "in-progress")) == (before[0] + 1, before[1] + 1)


def test_images_after_completed_complete_the_study_with_the_last_listed_one(router, tmp_path):
    paths = write_study(tmp_path / "study", 2, slices=5)
    uid, study = generate_uid(), study_uid(paths)
    responses = modality.send(router.port, [modality.n_create(uid, [study]),
                                            modality.n_set(uid, "COMPLETED", refs(paths))])
    assert [r.status for r in responses] == [0x0000, 0x0000]
    send_images(router, paths[:-1])
    assert router.due() == []
    send_images(router, paths[-1:])
    assert router.due() == [study]


def test_discontinued_is_due_with_what_arrived_and_noted(router, tmp_path):
    paths = write_study(tmp_path / "study", 3, slices=6)
    uid, study = generate_uid(), study_uid(paths)
    acquired = paths[:2]  # the examination was stopped after two images
    modality.send(router.port, [modality.n_create(uid, [study])])
    send_images(router, acquired)
    (discontinued,) = modality.send(router.port, [modality.n_set(uid, "DISCONTINUED", refs(acquired))])
    assert discontinued.status == 0x0000
    (ref,) = router.tracker.due()
    assert ref.study_uid == study and len(ref.paths) == 2
    assert router.tracker.completion_reason(study) == "mpps-discontinued"


def test_listed_instances_missing_wait_for_the_stable_window(router, tmp_path):
    paths = write_study(tmp_path / "study", 4, slices=5)
    uid, study = generate_uid(), study_uid(paths)
    modality.send(router.port, [modality.n_create(uid, [study])])
    send_images(router, paths[:3])
    modality.send(router.port, [modality.n_set(uid, "COMPLETED", refs(paths))])
    assert router.due() == []
    assert router.due(time.time() + WINDOW + 1) == [study]
    assert router.tracker.completion_reason(study) == "mpps-incomplete: 2 listed instance(s) never arrived"


def test_refusals_as_the_modality_sees_them(router, tmp_path):
    uid, study = generate_uid(), generate_uid()
    refused_before = mpps_count("n-set", "refused")
    responses = modality.send(router.port, [
        modality.n_set(generate_uid(), "COMPLETED"),  # never created
        modality.n_create(uid, [study]),
        modality.n_create(uid, [generate_uid()]),  # the same SOP Instance UID again
        modality.n_set(uid, "FINISHED"),  # not a defined status
        modality.n_create(generate_uid(), [study], status="COMPLETED"),  # a step is created IN PROGRESS
        modality.n_create(generate_uid(), []),  # no Study Instance UID: nothing to complete
        modality.n_set(uid, "COMPLETED", []),
        modality.n_set(uid, "DISCONTINUED"),  # a final step may no longer be updated
    ])
    assert [r.status for r in responses] == [0x0112, 0x0000, 0x0111, 0x0106, 0x0106, 0x0120, 0x0000, 0x0110]
    assert responses[0].error_comment == "No such MPPS SOP Instance"
    assert responses[7].error_id == 0xA710
    assert mpps_count("n-set", "refused") == refused_before + 3
    store = MppsStore(router.spool)
    assert store.status(uid) == "COMPLETED"
    assert router.spool.execute("SELECT study_uid FROM mpps_studies WHERE mpps_uid = ?", (uid,)) == [(study,)]


def test_per_modality_windows(tmp_path):
    router = Router(tmp_path / "spool", by_modality={"CT": 60, "MR": 300})
    try:
        ct = write_study(tmp_path / "ct", 5, slices=2, modality_code="CT")
        mr = write_study(tmp_path / "mr", 6, slices=2, modality_code="MR")
        us = write_study(tmp_path / "us", 7, slices=2, modality_code="US")
        for paths in (ct, mr, us):
            send_images(router, paths)
        now = time.time()
        assert router.due(now + 61) == [study_uid(ct)]
        assert sorted(router.due(now + 301)) == sorted([study_uid(ct), study_uid(mr)])
        assert len(router.due(now + WINDOW + 1)) == 3  # US has no window of its own: the default
    finally:
        router.stop()


def test_mpps_state_survives_a_restart(router, tmp_path):
    paths = write_study(tmp_path / "study", 8, slices=3)
    in_progress, completed, study = generate_uid(), generate_uid(), study_uid(paths)
    other = write_study(tmp_path / "other", 9, slices=2)
    responses = modality.send(router.port, [
        modality.n_create(in_progress, [study]),
        modality.n_create(completed, [study_uid(other)]),
        modality.n_set(completed, "COMPLETED", refs(other)),
    ])
    assert [r.status for r in responses] == [0x0000] * 3
    send_images(router, paths)
    router.stop()  # the receiver goes away; a new Spool opens the same state.db
    router.start()
    responses = modality.send(router.port, [
        modality.n_create(in_progress, [study]),  # still known: a duplicate
        modality.n_set(completed, "DISCONTINUED"),  # still final
        modality.n_set(in_progress, "COMPLETED", refs(paths)),  # still open: completes the study at once
    ])
    assert [r.status for r in responses] == [0x0111, 0x0110, 0x0000]
    assert router.due() == [study]
    send_images(router, other)
    assert sorted(router.due()) == sorted([study, study_uid(other)])
