"""The ConfigMap watcher without an API server: it never crashes the router, and is off without credentials."""

from __future__ import annotations

import time
from pathlib import Path

import kubernetes
import pytest

from pacsflow_router.config import ConfigMapRef
from pacsflow_router.configwatch import ConfigMapWatcher, default_api_client
from tests.peers.net import free_port

REF = ConfigMapRef(namespace="radiology", name="ed-router-config")


def test_without_credentials_the_watcher_stays_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert default_api_client() is None
    watcher = ConfigMapWatcher(REF, lambda config, digest: None)
    assert watcher.start() is False


def test_an_unreachable_api_server_is_retried_with_backoff_and_never_raises():
    configuration = kubernetes.client.Configuration()
    configuration.host = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    configuration.retries = 0
    seen = []
    watcher = ConfigMapWatcher(REF, lambda config, digest: seen.append(digest),
                               api_client=kubernetes.client.ApiClient(configuration), min_backoff=0.05,
                               max_backoff=0.2)
    assert watcher.start() is True
    time.sleep(1.0)
    assert watcher._thread is not None and watcher._thread.is_alive()
    assert not watcher.connected.is_set() and seen == []
    t0 = time.monotonic()
    watcher.stop()
    assert not watcher._thread.is_alive() and time.monotonic() - t0 < 2.0
