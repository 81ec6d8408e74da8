"""The evidence a use case's reader feedback gives: the hook ``GET /api/v1/usecases/{name}/evidence`` calls.

Per model version, from the results store (:mod:`pacsflow_router.results.evidence`): reviewed results, verdict
counts, TP/FP/TN/FN against the truth (a ground-truth label, else the latest reader verdict), sensitivity, specificity,
PPV and NPV with Wilson 95 % intervals, and the positive rate per day against the first week. Another
:data:`EvidenceFunction` can be passed to :func:`pacsflow_api.app.create_app`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pacsflow_router.results.evidence import use_case_evidence
from pacsflow_router.results.store import ResultsStore

EvidenceFunction = Callable[[ResultsStore, str], dict[str, Any]]
"""(store, use case name) -> a JSON object with at least ``use_case`` and ``versions`` (a list per model version)."""


def verdict_counts(store: ResultsStore, use_case: str) -> dict[str, Any]:
    """The default evidence: per model version the verdict counts (accept, modify, reject) and the statistics
    (:func:`pacsflow_router.results.evidence.use_case_evidence`)."""
    return use_case_evidence(store, use_case)
