"""Fixtures for end-to-end runs: a real Orthanc, the real router process, phantom studies, polling helpers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pacsflow_router.domain import study_key
from pacsflow_router.models import phantom
from pacsflow_router.results.audit import AuditLog
from tests.peers.net import eventually
from tests.peers.orthanc import Orthanc
from tests.peers.router import RouterProcess, free_port, router_config


def wait_for(condition: Callable[[], object], timeout: float, what: str, router: RouterProcess | None = None):
    """:func:`tests.peers.net.eventually` with the router's log tail in the failure message."""
    return eventually(condition, what, timeout,
                      context=(lambda: "--- router log ---\n" + "\n".join(router.log().splitlines()[-40:]))
                      if router else None)


@pytest.fixture
def pacs(tmp_path):
    """A real Orthanc as the PACS (stopped at the end of the test)."""
    orthanc = Orthanc(tmp_path / "orthanc", config={"DicomScpTimeout": 5}).start()
    yield orthanc
    orthanc.stop()


@pytest.fixture
def make_router(tmp_path):
    """Builds router processes on free ports; every one started is stopped at the end of the test."""
    started: list[RouterProcess] = []

    def make(use_cases: list[dict], *, pacs_port: int | None, stable_seconds: float = 1.0,
             name: str = "router", **kwargs) -> RouterProcess:
        workdir = tmp_path / name
        cfg = router_config(workdir=workdir, port=free_port(), metrics_port=free_port(), pacs_port=pacs_port,
                            use_cases=use_cases, stable_seconds=stable_seconds, **kwargs)
        router = RouterProcess(workdir, cfg)
        started.append(router)
        return router

    yield make
    for router in started:
        router.stop()


@pytest.fixture(scope="session")
def studies(tmp_path_factory) -> Callable[..., tuple[list[Path], phantom.GroundTruth]]:
    """Phantom studies written once per session: ``studies(seed, lesion=..., slices=...)``."""
    root = tmp_path_factory.mktemp("phantoms")
    cache: dict[tuple, tuple[list[Path], phantom.GroundTruth]] = {}

    def get(seed: int, *, lesion: bool, slices: int = 16, rows: int = 512, cols: int = 512):
        key = (seed, lesion, slices, rows, cols)
        if key not in cache:
            cache[key] = phantom.write_study(root / "-".join(map(str, key)), seed, lesion=lesion, slices=slices,
                                             rows=rows, cols=cols)
        return cache[key]

    return get


def audit_records(router: RouterProcess, truth: phantom.GroundTruth) -> list[dict]:
    """The router's audit records of one study (opened fresh: the router writes from its own process)."""
    audit = AuditLog(router.config["audit"]["url"])
    try:
        return audit.records(study_key=study_key(truth.study_instance_uid))
    finally:
        audit.close()


def metric_value(router: RouterProcess, name: str, **labels: str) -> float:
    """One sample of the router's /metrics (0.0 when absent)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(router.metrics_url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
