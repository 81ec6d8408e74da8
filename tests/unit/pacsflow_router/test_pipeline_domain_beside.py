"""The input-domain check runs beside preprocessing (issue 11 section 2), and the model is asked only after it passed.

Through the real pipeline with the committed ich_detector (embedded ONNX Runtime): the check is the real
``check_chosen``, observed (thread, end time), not replaced. test_pipeline_not_analysed.py shows the other half: an
out-of-domain series never reaches the model.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pacsflow_router import pipeline as pipeline_module
from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.domain import study_key
from tests.peers.dicomfiles import part10
from tests.peers.inprocess import MODEL_REPOSITORY, in_process_router
from tests.unit.pacsflow_router.synthetic_ct import datasets


class _Watched(EmbeddedOnnxBackend):
    """The real backend, noting when the model is asked."""

    asked: list[float]

    def infer(self, model: object, batch: np.ndarray, *, priority: int = 0) -> object:
        self.asked.append(time.monotonic())
        return super().infer(model, batch, priority=priority)  # type: ignore[arg-type]


@pytest.fixture
def watched(monkeypatch):
    checks: list[tuple[str, float]] = []
    real = pipeline_module.check_chosen

    def check_chosen(*args, **kwargs):
        selection = real(*args, **kwargs)
        checks.append((threading.current_thread().name, time.monotonic()))
        return selection

    monkeypatch.setattr(pipeline_module, "check_chosen", check_chosen)
    return checks


def test_the_domain_check_runs_beside_preprocessing_and_before_the_model(tmp_path, watched):
    backend = _Watched(MODEL_REPOSITORY)
    backend.asked = []
    use_case = {"name": "ich", "model": {"name": "ich_detector", "version": 1}, "mode": "assistive",
                "match": {"modalities": ["CT"]}, "outputs": {"structuredReport": {"destination": "pacs"}}}
    with in_process_router(tmp_path, [use_case], backend) as r:
        study = datasets(31, slices=16, rows=256)
        for ds in study:
            r.spool.store(part10(ds))
        assert r.process_due() == 1
        (record,) = r.audit.records(study_key=study_key(str(study[0].StudyInstanceUID)))
        queued = r.queued()

    assert record["outcome"] == "reported", record["outcome"]
    assert len(queued) == 1  # the SR
    ((thread, checked_at),) = watched
    assert thread.startswith("pacsflow-domain-check"), thread  # not the pipeline thread: beside preprocessing
    (asked_at,) = backend.asked
    assert checked_at <= asked_at  # the model was asked only after the check passed
    assert {"acceptance", "domain", "preprocess", "inference"} <= record["timings"].keys()
