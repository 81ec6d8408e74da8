"""An :data:`~.evidence.EvidenceSource` that asks ``pacsflow-api`` (``GET /api/v1/usecases/{name}/evidence``).

The operator never opens the results store itself (import-linter keeps it to the router's config model and the pure
evidence maths): the API is the one process that reads it for others, with an API key of the ``integration`` role.
Set ``PACSFLOW_OPERATOR_EVIDENCE_URL`` (the API's base URL) and ``PACSFLOW_OPERATOR_EVIDENCE_API_KEY``.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

import requests

from .evidence import Counts, EvidenceSource

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 5.0
"""Per request: a slow API must not hold a reconcile (the evidence is then left as it is)."""


def api_evidence_source(base_url: str, api_key: str, *, timeout: float = TIMEOUT_SECONDS) -> EvidenceSource:
    """An evidence source reading pacsflow-api at ``base_url`` with ``api_key``.

    The source returns ``None`` (``status.evidence`` left as it is) when the API cannot be reached, answers an
    error, or has nothing reviewed for that model version; it never raises, so a reconcile goes on without it.
    """
    session = requests.Session()
    session.headers["X-API-Key"] = api_key
    root = base_url.rstrip("/")

    def source(_namespace: str, use_case: str, model_version: int) -> Counts | None:
        try:
            response = session.get(f"{root}/api/v1/usecases/{quote(use_case, safe='')}/evidence", timeout=timeout)
            response.raise_for_status()
            versions = response.json()["versions"]
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            log.warning("evidence of use case %s not read from pacsflow-api: %s", use_case, type(exc).__name__)
            return None
        for version in versions:
            if version.get("model_version") == model_version:
                counts = Counts(true_positive=int(version["true_positive"]),
                                false_positive=int(version["false_positive"]),
                                true_negative=int(version["true_negative"]),
                                false_negative=int(version["false_negative"]))
                return counts if counts.reviewed else None
        return None

    return source
