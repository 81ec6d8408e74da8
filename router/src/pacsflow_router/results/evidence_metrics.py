"""Evidence as Prometheus metrics, for the drift and PPV alerts (deploy/prometheus-rules.yaml).

The process that serves them (``pacsflow-api``) calls :func:`update_evidence_metrics` every
:data:`REFRESH_SECONDS`; the gauges live in their own :data:`REGISTRY`. Labels are the use case and model version
(configured values), and for a rate the bound (``value``, ``lower``, ``upper``: the Wilson 95 % interval).

The PPV alert compares the PPV's **upper** bound with the use case's floor: it fires when the PPV is below the floor
with 95 % confidence, not when a handful of reviewed cases happen to dip under it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Gauge
from sqlalchemy.exc import SQLAlchemyError

from . import evidence
from .store import ResultsStore

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
REFRESH_SECONDS = 60.0
"""How often the serving process recomputes the evidence (the positive rate moves per day, verdicts per minute)."""
RATES = ("sensitivity", "specificity", "ppv", "npv")
BOUNDS = ("value", "lower", "upper")

_LABELS = ("use_case", "model_version")
REVIEWED = Gauge("pacsflow_evidence_reviewed", "Results with a truth (reader verdict or ground-truth label).",
                 _LABELS, registry=REGISTRY)
RATE_GAUGES = {rate: Gauge(f"pacsflow_evidence_{rate}", f"{rate.upper() if len(rate) == 3 else rate.capitalize()} "
                           "of reviewed results; bound: value or the Wilson 95% lower/upper bound.",
                           (*_LABELS, "bound"), registry=REGISTRY) for rate in RATES}
POSITIVE_RATE = Gauge("pacsflow_evidence_positive_rate", "Share of results called positive on the latest day (UTC).",
                      _LABELS, registry=REGISTRY)
POSITIVE_RATE_BASELINE = Gauge("pacsflow_evidence_positive_rate_baseline",
                               "Share of results called positive in the model version's first 7 days.",
                               _LABELS, registry=REGISTRY)
POSITIVE_RATE_RATIO = Gauge("pacsflow_evidence_positive_rate_ratio",
                            "Latest day's positive rate over the first week's (set once the first week is over).",
                            _LABELS, registry=REGISTRY)
DAY_RESULTS = Gauge("pacsflow_evidence_day_results", "Results on the latest day (UTC) with results.",
                    _LABELS, registry=REGISTRY)
PPV_FLOOR = Gauge("pacsflow_evidence_ppv_floor", "The lowest PPV the use case accepts (the alert's threshold).",
                  ("use_case",), registry=REGISTRY)

_ALL = (REVIEWED, *RATE_GAUGES.values(), POSITIVE_RATE, POSITIVE_RATE_BASELINE, POSITIVE_RATE_RATIO, DAY_RESULTS,
        PPV_FLOOR)


def update_evidence_metrics(store: ResultsStore, ppv_floors: Mapping[str, float] | None = None) -> None:
    """Recompute every use case's evidence from ``store`` into the gauges (series of vanished versions go).

    Parameters
    ----------
    store : ResultsStore
        The results store.
    ppv_floors : mapping, optional
        Use case -> its PPV floor (``pacsflow_evidence_ppv_floor``); a use case without one gets no PPV alert.
    """
    for gauge in _ALL:
        gauge.clear()
    for use_case, floor in (ppv_floors or {}).items():
        PPV_FLOOR.labels(use_case).set(floor)
    for use_case in evidence.use_cases(store):
        for version in evidence.use_case_evidence(store, use_case)["versions"]:
            labels = (use_case, str(version["model_version"]))
            REVIEWED.labels(*labels).set(version["reviewed"])
            for rate in RATES:
                if version[rate] is not None:
                    for bound in BOUNDS:
                        RATE_GAUGES[rate].labels(*labels, bound).set(version[rate][bound])
            positive = version["positive_rate"]
            if positive["days"]:
                latest = positive["days"][-1]
                POSITIVE_RATE.labels(*labels).set(latest["rate"])
                DAY_RESULTS.labels(*labels).set(latest["results"])
                POSITIVE_RATE_BASELINE.labels(*labels).set(positive["baseline"])
                if positive["baseline_complete"] and latest["ratio"] is not None:
                    POSITIVE_RATE_RATIO.labels(*labels).set(latest["ratio"])


def refresh_forever(store: ResultsStore, stop: threading.Event, ppv_floors: Mapping[str, float] | None = None,
                    every: float = REFRESH_SECONDS) -> None:
    """Call :func:`update_evidence_metrics` every ``every`` seconds until ``stop`` is set; a failed refresh is
    logged (the gauges keep their last values) and retried on the next tick."""
    while not stop.is_set():
        try:
            update_evidence_metrics(store, ppv_floors)
        except SQLAlchemyError:  # the store may be briefly unreachable; the next tick retries
            log.exception("evidence metrics: refresh failed; keeping the last values")
        stop.wait(every)
