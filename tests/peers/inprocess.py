"""The router's data path in one process on a tmp folder: spool -> tracker -> pipeline -> outbox (not started) -> audit.

For tests that drive :meth:`pacsflow_router.pipeline.Pipeline.process` themselves and read what would be delivered
from the outbox's queued files; the e2e tests run the router process instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom

from pacsflow_router.analysis.inference import InferenceBackend
from pacsflow_router.config import parse_config
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.ingest.studies import StudyTracker
from pacsflow_router.pipeline import Pipeline
from pacsflow_router.results.audit import AuditLog
from pacsflow_router.results.export import Outbox

MODEL_REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


@dataclass
class InProcessRouter:
    """The parts a test drives or reads."""

    spool: Spool
    tracker: StudyTracker
    pipeline: Pipeline
    outbox: Outbox
    audit: AuditLog

    def queued(self) -> list[pydicom.Dataset]:
        """The SRs the outbox holds: first results before amendments (SRs with Predecessor Documents)."""
        return sorted((pydicom.dcmread(p) for p in (self.outbox.directory / "items").glob("*.dcm")),
                      key=lambda ds: ds.get("PredecessorDocumentsSequence") is not None)

    def process_due(self) -> int:
        """Process every study that is due now (all received ones: the tracker waits 0 s); how many there were."""
        due = self.tracker.due(time.time() + 1, 0)
        for ref in due:
            assert self.pipeline.process(ref)
        return len(due)


def _never_sent(name: str) -> Any:
    raise AssertionError("the outbox is not started in these tests")


@contextmanager
def in_process_router(tmp_path: Path, use_cases: Sequence[dict[str, Any]], backend: InferenceBackend,
                      extra_config: dict[str, Any] | None = None) -> Iterator[InProcessRouter]:
    """A router on ``tmp_path`` with ``use_cases`` (config dicts; destination ``pacs``) and ``backend``.

    ``extra_config`` adds routing config keys (e.g. ``hl7Destinations``, ``webhooks``).

    The outbox queues SRs but never sends them, so what a test reads from it is exactly what would be delivered.
    """
    config = parse_config({
        "spoolDir": str(tmp_path / "spool"),
        "destinations": [{"name": "pacs", "aeTitle": "PACS", "host": "127.0.0.1", "port": 104}],
        "inference": {"backend": "embedded", "modelRepository": str(MODEL_REPOSITORY)},
        "useCases": list(use_cases),
        **(extra_config or {}),
    })
    spool = Spool(tmp_path / "spool", 0.999)
    tracker = StudyTracker(spool, stable_seconds=0)
    audit = AuditLog(f"sqlite:///{tmp_path / 'audit.db'}")
    outbox = Outbox(tmp_path / "outbox", _never_sent)
    pipeline = Pipeline(config, tracker, backend, outbox, audit, preprocess_backend="numpy")
    try:
        yield InProcessRouter(spool, tracker, pipeline, outbox, audit)
    finally:
        outbox.close()
        audit.close()
        spool.close()
