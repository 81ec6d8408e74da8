"""Evidence of a use case from the results store: what its model versions' results were, against the truth.

The truth about one analysed result (its latest revision) is, in this order:

1. **a ground-truth label** (``ground_truth``: an imported CSV or a final-report ORU^R01) for the result's accession
   that names the use case and/or the result's finding code; the most specific one wins (use case and finding, then
   use case, then finding). A label wins over reader verdicts because it is the reference standard: the final report
   is written with the whole work-up, and a reader's verdict on the AI result is exposed to the AI (automation bias);
2. otherwise **the latest reader verdict** on the result (one truth per result, however many readers looked):

   - ``accept``: the AI was right, truth = the AI's call (present or absent);
   - ``reject``: the AI was wrong, truth = the opposite of its call;
   - ``modify``: the reader corrected the finding's type or location, which says a finding *is* there: truth =
     present. So a modified positive counts as a true positive (the AI found the right study; where it pointed is
     not what sensitivity measures) and a modified negative as a false negative (the reader added what it missed);

3. otherwise the result is not reviewed and counts only towards the positive rate.

The positive rate per day (UTC) of each model version is compared with its baseline: the rate over the version's first
seven days of results. The arithmetic (Wilson intervals) is :mod:`pacsflow_router.evidence`.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from ..evidence import DIGITS, Counts, proportion, timestamp
from .schema import FEEDBACK, GROUND_TRUTH, REVIEW_RESULTS, VERDICTS
from .store import ResultsStore

BASELINE_DAYS = 7
"""The positive rate's baseline: a model version's first week of results."""


@dataclass
class _Version:
    """What one model version's results add up to."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    labelled: int = 0
    verdicts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    per_day: dict[dt.date, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))

    def add(self, called: bool, truth: bool) -> None:
        if called:
            self.tp, self.fp = self.tp + truth, self.fp + (not truth)
        else:
            self.fn, self.tn = self.fn + truth, self.tn + (not truth)

    @property
    def counts(self) -> Counts:
        return Counts(true_positive=self.tp, false_positive=self.fp, true_negative=self.tn, false_negative=self.fn)


def _latest_results(store: ResultsStore, use_case: str, model_version: int | None) -> list[Any]:
    r = REVIEW_RESULTS.c
    query = select(r.tracking_uid, r.revision, r.result_key, r.accession, r.model_version, r.finding_code, r.present,
                   r.created_at).where(r.use_case == use_case)
    if model_version is not None:
        query = query.where(r.model_version == model_version)
    latest: dict[str, Any] = {}
    with store.engine.connect() as conn:
        for row in conn.execute(query.order_by(r.tracking_uid, r.revision)):
            latest[row.tracking_uid] = row
    return list(latest.values())


def _verdicts(store: ResultsStore, use_case: str) -> dict[str, list[str]]:
    """result key -> the verdicts on it, oldest first (the last one is the result's truth)."""
    keys = select(REVIEW_RESULTS.c.result_key).where(REVIEW_RESULTS.c.use_case == use_case)
    query = select(FEEDBACK.c.result_key, FEEDBACK.c.verdict).where(FEEDBACK.c.result_key.in_(keys)).order_by(
        FEEDBACK.c.created_at, FEEDBACK.c.id)
    verdicts: dict[str, list[str]] = defaultdict(list)
    with store.engine.connect() as conn:
        for row in conn.execute(query):
            verdicts[row.result_key].append(row.verdict)
    return verdicts


def _labels(store: ResultsStore, use_case: str) -> dict[tuple[str, str, str], bool]:
    """(accession, use case or "", finding code or "") -> present, for the use case's accessions."""
    g = GROUND_TRUTH.c
    accessions = select(REVIEW_RESULTS.c.accession).where(REVIEW_RESULTS.c.use_case == use_case)
    query = select(g.accession, g.use_case, g.finding_code, g.present).where(
        g.accession.in_(accessions), g.use_case.in_([use_case, ""]))
    with store.engine.connect() as conn:
        return {(row.accession, row.use_case, row.finding_code): row.present for row in conn.execute(query)}


def _label_of(labels: dict[tuple[str, str, str], bool], accession: str, use_case: str, finding: str) -> bool | None:
    for key in ((accession, use_case, finding), (accession, use_case, ""), (accession, "", finding)):
        if key in labels:
            return labels[key]
    return None


def _tally(store: ResultsStore, use_case: str, model_version: int | None = None) -> dict[int, _Version]:
    verdicts, labels = _verdicts(store, use_case), _labels(store, use_case)
    versions: dict[int, _Version] = defaultdict(_Version)
    for row in _latest_results(store, use_case, model_version):
        version = versions[row.model_version]
        day = row.created_at.astimezone(dt.UTC).date() if row.created_at.tzinfo else row.created_at.date()
        version.per_day[day][0] += 1
        version.per_day[day][1] += bool(row.present)
        given = verdicts.get(row.result_key, [])
        for each in set(given):
            version.verdicts[each] += 1
        verdict = given[-1] if given else None
        truth = _label_of(labels, row.accession, use_case, row.finding_code) if row.accession else None
        if truth is not None:
            version.labelled += 1
        elif verdict == "accept":
            truth = bool(row.present)
        elif verdict == "reject":
            truth = not row.present
        elif verdict == "modify":
            truth = True
        if truth is not None:
            version.add(bool(row.present), truth)
    return versions


def positive_rate(per_day: dict[dt.date, list[int]]) -> dict[str, Any]:
    """A model version's positive rate per day against its baseline (its first :data:`BASELINE_DAYS` days).

    Parameters
    ----------
    per_day : dict
        UTC date -> [results, positives].

    Returns
    -------
    dict
        ``baseline`` (rate, or None without results), ``baseline_from``/``baseline_to`` (ISO dates, inclusive),
        ``baseline_complete`` (a full week of days has passed), ``days`` (date, results, positives, rate, ratio to
        the baseline or None when the baseline is 0) and ``latest_ratio`` (the last day's ratio).
    """
    if not per_day:
        return {"baseline": None, "baseline_from": None, "baseline_to": None, "baseline_complete": False,
                "days": [], "latest_ratio": None}
    first = min(per_day)
    end = first + dt.timedelta(days=BASELINE_DAYS)
    base_n = sum(n for d, (n, _) in per_day.items() if d < end)
    base_p = sum(p for d, (_, p) in per_day.items() if d < end)
    baseline = base_p / base_n
    days = []
    for day in sorted(per_day):
        n, p = per_day[day]
        rate = p / n
        days.append({"date": day.isoformat(), "results": n, "positives": p, "rate": round(rate, DIGITS),
                     "ratio": round(rate / baseline, DIGITS) if baseline > 0 else None})
    return {"baseline": round(baseline, DIGITS), "baseline_from": first.isoformat(),
            "baseline_to": (end - dt.timedelta(days=1)).isoformat(), "baseline_complete": max(per_day) >= end,
            "days": days, "latest_ratio": days[-1]["ratio"]}


def counts(store: ResultsStore, use_case: str, model_version: int) -> Counts | None:
    """Reviewed results of one model version by outcome (the operator's evidence source); None when none is
    reviewed."""
    version = _tally(store, use_case, model_version).get(model_version)
    return None if version is None or version.counts.reviewed == 0 else version.counts


def use_case_evidence(store: ResultsStore, use_case: str, now: dt.datetime | None = None) -> dict[str, Any]:
    """The evidence of a use case per model version (what ``GET /api/v1/usecases/{name}/evidence`` answers).

    Returns
    -------
    dict
        ``use_case`` and ``versions``: per model version ``model_version``, ``reviewed`` (results with a truth),
        ``labelled`` (of those, by a ground-truth label), the verdict counts (``accept``, ``modify``, ``reject``: results
        with at least one such verdict),
        ``true_positive`` ... ``false_negative``, ``sensitivity``, ``specificity``, ``ppv``, ``npv`` (value, Wilson
        95 % ``lower``/``upper``, numerator, denominator; None when undefined), ``computed_at`` and
        ``positive_rate`` (:func:`positive_rate`).
    """
    out = []
    for number, version in sorted(_tally(store, use_case).items()):
        c = version.counts
        out.append({
            "model_version": number, "reviewed": c.reviewed, "labelled": version.labelled, **version.verdicts,
            "true_positive": c.true_positive, "false_positive": c.false_positive,
            "true_negative": c.true_negative, "false_negative": c.false_negative,
            "sensitivity": proportion(c.true_positive, c.true_positive + c.false_negative),
            "specificity": proportion(c.true_negative, c.true_negative + c.false_positive),
            "ppv": proportion(c.true_positive, c.true_positive + c.false_positive),
            "npv": proportion(c.true_negative, c.true_negative + c.false_negative),
            "computed_at": timestamp(now), "positive_rate": positive_rate(version.per_day),
        })
    return {"use_case": use_case, "versions": out}


def use_cases(store: ResultsStore) -> list[str]:
    """The use cases with results in the store."""
    with store.engine.connect() as conn:
        return sorted(conn.execute(select(REVIEW_RESULTS.c.use_case).distinct()).scalars())
