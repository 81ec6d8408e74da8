"""status.evidence end to end on the real kube-apiserver: reader verdicts in the results store -> pacsflow-api ->
the operator's evidence source -> AIUseCase status.evidence, refreshed as new verdicts arrive (no edit of the use
case needed)."""

from __future__ import annotations

import pytest

from pacsflow_router.results.store import ResultsStore
from tests.integration.test_evidence_metrics_api import api_process
from tests.integration.test_evidence_store import result_row
from tests.integration.test_operator import (  # noqa: F401 - pytest fixtures shared with the operator tests
    Cluster,
    admin,
    cluster,
    crds,
    example,
    run_operator,
)
from tests.peers.net import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

UC = example("AIUseCase")["metadata"]["name"]
PINNED = example("AIUseCase")["spec"]["model"]["version"]


def test_status_evidence_follows_the_verdicts_in_the_store(cluster: Cluster, run_operator, tmp_path,  # noqa: F811
                                                           monkeypatch: pytest.MonkeyPatch):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = ResultsStore(url)
    for n in range(6):
        store.record_result(result_row(n, present=n < 3, version=PINNED, use_case=UC))
    for n, verdict in ((0, "accept"), (1, "accept"), (2, "reject"), (3, "accept")):  # TP 2, FP 1, TN 1
        store.record_feedback(result_key=f"{UC}-{n:04d}", reader="r1", verdict=verdict)
    _, token = store.create_api_key("integration")
    with api_process(tmp_path, url) as port:
        monkeypatch.setenv("PACSFLOW_OPERATOR_EVIDENCE_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("PACSFLOW_OPERATOR_EVIDENCE_API_KEY", token)
        monkeypatch.setenv("PACSFLOW_OPERATOR_EVIDENCE_REFRESH_SECONDS", "1")
        run_operator()
        cluster.create(example("DicomRouter"))
        cluster.create(example("AIUseCase"))

        def evidence() -> dict | None:
            return (cluster.get("AIUseCase", UC).get("status") or {}).get("evidence")

        first = eventually(evidence, "status.evidence written from pacsflow-api")
        assert first["modelVersion"] == PINNED and first["reviewed"] == 4
        assert first["ppv"]["numerator"] == 2 and first["ppv"]["denominator"] == 3
        # New verdicts arrive; the use case is not edited.
        store.record_feedback(result_key=f"{UC}-0004", reader="r1", verdict="reject")  # AI-, reader: present (FN)
        later = eventually(lambda: (e := evidence()) and e["reviewed"] == 5 and e, "status.evidence refreshed")
        assert later["sensitivity"]["numerator"] == 2 and later["sensitivity"]["denominator"] == 3
    store.close()
