"""The pacsflow-api process as the evidence's server: its metrics port carries the evidence gauges Prometheus
scrapes, and its evidence endpoint is what the operator's evidence source reads for ``status.evidence``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pacsflow_operator.apievidence import api_evidence_source
from pacsflow_operator.evidence import Counts
from pacsflow_router.results.store import ResultsStore
from tests.integration.test_evidence_store import result_row
from tests.peers.net import eventually, free_port, stop_process, wait_port


def _seeded(tmp_path: Path) -> str:
    """A store with 4 positive calls of ich v1: one accepted, three rejected (TP 1, FP 3)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = ResultsStore(url)
    for n in range(4):
        store.record_result(result_row(n, present=True))
        store.record_feedback(result_key=f"ich-{n:04d}", reader="r1", verdict="accept" if n == 0 else "reject")
    store.close()
    return url


@contextmanager
def api_process(tmp_path: Path, url: str, **env: str) -> Iterator[int]:
    """pacsflow-api on a loopback port (yielded), stopped by PID."""
    port = free_port()
    log = open(tmp_path / "api.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "pacsflow_api", "--host", "127.0.0.1", "--port", str(port)],
                            env={**os.environ, "PACSFLOW_STORE_URL": url, **env}, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        wait_port(port, 60, proc)
        yield port
    finally:
        stop_process(proc)
        log.close()


def test_the_api_process_serves_the_evidence_gauges_with_the_configured_ppv_floor(tmp_path):
    metrics_port = free_port()
    with api_process(tmp_path, _seeded(tmp_path), PACSFLOW_API_METRICS_PORT=str(metrics_port),
                     PACSFLOW_API_PPV_FLOORS=json.dumps({"ich": 0.5})):
        def scraped() -> str | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                text = response.read().decode()
            return text if "pacsflow_evidence_reviewed" in text else None

        text = eventually(scraped, "the evidence gauges on /metrics", timeout=30)
    assert 'pacsflow_evidence_reviewed{model_version="1",use_case="ich"} 4.0' in text
    assert 'pacsflow_evidence_ppv{bound="value",model_version="1",use_case="ich"} 0.25' in text
    assert 'pacsflow_evidence_ppv_floor{use_case="ich"} 0.5' in text
    assert "ACC0000" not in text


def test_the_operators_evidence_source_reads_the_counts_from_the_api(tmp_path):
    url = _seeded(tmp_path)
    store = ResultsStore(url)
    _, integration = store.create_api_key("integration")
    _, reader = store.create_api_key("reader")
    store.close()
    with api_process(tmp_path, url) as port:
        base = f"http://127.0.0.1:{port}"
        assert api_evidence_source(base, integration)("ns", "ich", 1) == Counts(1, 3, 0, 0)
        assert api_evidence_source(base, integration)("ns", "ich", 2) is None  # nothing for that version
        assert api_evidence_source(base, integration)("ns", "other", 1) is None
        assert api_evidence_source(base, reader)("ns", "ich", 1) is None  # readers may not read evidence: 403
    assert api_evidence_source(base, integration, timeout=2)("ns", "ich", 1) is None  # the API is gone
