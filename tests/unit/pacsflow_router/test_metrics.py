"""metrics: names per STYLE.md, served over HTTP from the router's own registry."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pacsflow_router import metrics
from tests.conftest import free_port


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def test_metrics_are_served_with_style_names_and_bounded_labels():
    port = free_port()
    server, _thread = metrics.start_metrics_server("127.0.0.1", port)
    try:
        metrics.BUILD_INFO.info({"version": "0.1.0"})
        metrics.INSTANCES_RECEIVED.inc()
        metrics.BYTES_RECEIVED.inc(524288)
        metrics.SR_EXPORTS.labels("pacs", "delivered").inc()
        metrics.TIME_TO_RESULT.labels("ich-head-ct").observe(3.2)
        metrics.INFERENCE_SECONDS.labels("ich-head-ct", "ich_detector", "1").observe(0.04)
        text = _scrape(port)
    finally:
        server.shutdown()

    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {s.name: s for f in families.values() for s in f.samples}
    assert samples["pacsflow_build_info"].labels == {"version": "0.1.0"}
    assert samples["pacsflow_instances_received_total"].value >= 1
    assert samples["pacsflow_received_bytes_total"].value >= 524288
    assert 'pacsflow_sr_exports_total{destination="pacs",outcome="delivered"}' in text
    assert "pacsflow_study_time_to_result_seconds_bucket" in text
    for family in families.values():
        assert family.name.startswith("pacsflow_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            # Labels are configured names and fixed vocabularies: never UIDs or other DICOM values.
            assert not any(v.count(".") > 3 for v in sample.labels.values()), sample


def test_gauges_for_queue_and_outbox_exist():
    names = {m.name for m in metrics.REGISTRY.collect()}
    assert {"pacsflow_queue_depth_studies", "pacsflow_studies_in_progress", "pacsflow_outbox_pending",
            "pacsflow_associations", "pacsflow_instances_rejected", "pacsflow_critical_findings",
            "pacsflow_inference_unavailable_waits", "pacsflow_preprocess_seconds"} <= names


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian prometheus) not installed")
def test_promtool_accepts_the_exposition():
    from prometheus_client import generate_latest

    metrics.SR_EXPORTS.labels("pacs", "retrying").inc()
    metrics.PREPROCESS_SECONDS.labels("ich-head-ct").observe(0.3)
    proc = subprocess.run(["promtool", "check", "metrics"], input=generate_latest(metrics.REGISTRY),
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
