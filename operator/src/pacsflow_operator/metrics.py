"""Operator metrics (Prometheus): reconciliations by kind and outcome, their duration, API requests."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from prometheus_client import Counter, Gauge, Histogram

RECONCILIATIONS = Counter(
    "pacsflow_operator_reconciliations_total",
    "Reconciliations by kind and outcome (success, invalid, retry, error).",
    ["kind", "outcome"],
)
RECONCILE_DURATION = Histogram(
    "pacsflow_operator_reconcile_duration_seconds",
    "Wall time of one reconciliation, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_REQUESTS = Counter(
    "pacsflow_operator_api_requests_total",
    "Kubernetes API requests made by the operator's reconcilers (kopf's own watches excluded), by verb.",
    ["verb"],
)
BUILD_INFO = Gauge("pacsflow_build_info", "pacsflow build information.", ["component", "version"])


def _version() -> str:
    try:
        return version("pacsflow")
    except PackageNotFoundError:
        return "unknown"


BUILD_INFO.labels(component="operator", version=_version()).set(1)
