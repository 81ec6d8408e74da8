"""The evidence a use case's reader feedback gives: the hook ``GET /api/v1/usecases/{name}/evidence`` calls.

Today: reviewed results and verdict counts per model version, from the results store. The statistics (sensitivity,
specificity, PPV, NPV with Wilson intervals) plug in as another :data:`EvidenceFunction` passed to
:func:`pacsflow_api.app.create_app`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pacsflow_router.results.store import ResultsStore

EvidenceFunction = Callable[[ResultsStore, str], dict[str, Any]]
"""(store, use case name) -> a JSON object with at least ``use_case`` and ``versions`` (a list per model version)."""


def verdict_counts(store: ResultsStore, use_case: str) -> dict[str, Any]:
    """The default evidence: reviewed count and accept/modify/reject counts per model version."""
    return store.verdict_counts(use_case)
