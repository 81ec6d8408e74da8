"""A reload that changes ``inference`` swaps the pipeline's backend: the next study runs on the new one, the old one
is closed only when the pipeline thread says so, and a backend that fails to close never stops the pipeline."""

from __future__ import annotations

import logging

from pacsflow_router.analysis.inference import EmbeddedOnnxBackend
from pacsflow_router.domain import study_key
from tests.peers.dicomfiles import part10
from tests.peers.inprocess import MODEL_REPOSITORY, in_process_router
from tests.unit.pacsflow_router.synthetic_ct import datasets

USE_CASE = {"name": "ich", "model": {"name": "ich_detector", "version": 1}, "mode": "silent",
            "match": {"modalities": ["CT"]}}


class _Counted(EmbeddedOnnxBackend):
    """The real backend, counting its inferences and closes; ``close_fails`` makes closing raise."""

    def __init__(self, *args: object, close_fails: bool = False) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.inferred = self.closed = 0
        self.close_fails = close_fails

    def infer(self, *args: object, **kwargs: object) -> object:
        self.inferred += 1
        return super().infer(*args, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        self.closed += 1
        if self.close_fails:
            raise RuntimeError("the old endpoint is gone")
        super().close()


def _study(r, seed: int) -> str:
    study = datasets(seed, slices=16, rows=256)
    for ds in study:
        r.spool.store(part10(ds))
    return study_key(str(study[0].StudyInstanceUID))


def test_the_next_study_runs_on_the_new_backend_and_the_old_one_is_closed_on_the_pipelines_word(tmp_path, caplog):
    old = _Counted(MODEL_REPOSITORY, close_fails=True)
    new = _Counted(MODEL_REPOSITORY)
    with in_process_router(tmp_path, [USE_CASE], old) as r:
        _study(r, 41)
        assert r.process_due() == 1 and old.inferred == 1
        r.pipeline.replace_backend(new, lambda model: MODEL_REPOSITORY)
        assert old.closed == 0  # not under an inference it may still be running
        with caplog.at_level(logging.ERROR, logger="pacsflow_router.pipeline"):
            r.pipeline.close_retired()
        assert old.closed == 1 and "could not be closed" in caplog.text  # logged, not raised
        r.pipeline.close_retired()
        assert old.closed == 1  # closed once
        key = _study(r, 42)
        assert r.process_due() == 1
        assert (old.inferred, new.inferred) == (1, 1)
        (record,) = r.audit.records(study_key=key)
        assert record["outcome"] == "logged-silent", record["outcome"]
        r.pipeline.close()
        assert new.closed == 1
