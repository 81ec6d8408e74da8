"""The pacsflow-api process serves the evidence gauges on its metrics port, as Prometheus scrapes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request

from pacsflow_router.results.store import ResultsStore
from tests.integration.test_evidence_store import result_row
from tests.peers.net import eventually, free_port, stop_process, wait_port


def test_the_api_process_serves_the_evidence_gauges_with_the_configured_ppv_floor(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = ResultsStore(url)
    for n in range(4):
        store.record_result(result_row(n, present=True))
        store.record_feedback(result_key=f"ich-{n:04d}", reader="r1", verdict="accept" if n == 0 else "reject")
    store.close()
    port, metrics_port = free_port(), free_port()
    env = {**os.environ, "PACSFLOW_STORE_URL": url, "PACSFLOW_API_METRICS_PORT": str(metrics_port),
           "PACSFLOW_API_PPV_FLOORS": json.dumps({"ich": 0.5})}
    log = open(tmp_path / "api.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "pacsflow_api", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(metrics_port, 60, proc)

        def scraped() -> str | None:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
                text = response.read().decode()
            return text if "pacsflow_evidence_reviewed" in text else None

        text = eventually(scraped, "the evidence gauges on /metrics", timeout=30)
    finally:
        stop_process(proc)
        log.close()
    assert 'pacsflow_evidence_reviewed{model_version="1",use_case="ich"} 4.0' in text
    assert 'pacsflow_evidence_ppv{bound="value",model_version="1",use_case="ich"} 0.25' in text
    assert 'pacsflow_evidence_ppv_floor{use_case="ich"} 0.5' in text
    assert "ACC0000" not in text
