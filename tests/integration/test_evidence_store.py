"""Evidence from the results store, on SQLite and on a real PostgreSQL: reader verdicts and ground-truth labels turned
into TP/FP/TN/FN, Wilson intervals and the positive rate per day against the first week."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest

from pacsflow_router.evidence import wilson_interval
from pacsflow_router.results import evidence
from pacsflow_router.results.store import ResultsStore
from tests.peers.postgres import fresh_database, postgres_server  # noqa: F401  (fixture)

DAY0 = dt.datetime(2026, 11, 2, 9, tzinfo=dt.UTC)
FINDING = "ICH"


@pytest.fixture(params=["sqlite", "postgresql"])
def results(request: pytest.FixtureRequest, tmp_path) -> Iterator[ResultsStore]:
    url = (f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite"
           else fresh_database(request.getfixturevalue("postgres_server")))
    s = ResultsStore(url)
    yield s
    s.close()


def result_row(n: int, *, present: bool, version: int = 1, day: int = 0, use_case: str = "ich",
               revision: int = 0) -> dict:
    """A review_results row as the router writes it (the key image is a stand-in: evidence never reads it)."""
    return {"tracking_uid": f"2.25.{use_case}.{n}", "revision": revision, "result_key": f"{use_case}-{n:04d}",
            "study_uid": f"1.2.3.{n}", "accession": f"ACC{n:04d}", "patient_id": f"P{n}", "patient_name": "Doe^J",
            "procedure": "CT head", "order_priority": "R", "use_case": use_case, "mode": "silent",
            "model_name": "ich_detector", "model_version": version, "finding_code": FINDING, "finding_scheme": "99X",
            "finding_meaning": "Intracranial haemorrhage", "present": present, "probability": 0.9 if present else 0.1,
            "critical": False, "slice_index": 3, "row_fraction": 0.5, "col_fraction": 0.5, "sr_sop_uid": None,
            "created_at": DAY0 + dt.timedelta(days=day), "key_image_png": b"png"}


def _version(report: dict, number: int) -> dict:
    return next(v for v in report["versions"] if v["model_version"] == number)


def test_reader_verdicts_give_the_two_by_two_table_and_wilson_intervals(results):
    # AI positive: 0-9; AI negative: 10-19. accept = AI right, reject = AI wrong, modify = a finding is there.
    for n in range(20):
        results.record_result(result_row(n, present=n < 10))
    verdicts = {**dict.fromkeys(range(0, 7), "accept"), 7: "reject", 8: "reject", 9: "modify",     # TP 8, FP 2
                **dict.fromkeys(range(10, 16), "accept"), 16: "reject", 17: "modify"}              # TN 6, FN 2
    for n, verdict in verdicts.items():
        results.record_feedback(result_key=f"ich-{n:04d}", reader="r1", verdict=verdict)
    # A second reader's later verdict replaces the first as the truth of that result (one truth per result).
    results.record_feedback(result_key="ich-0007", reader="r2", verdict="accept")  # 7 becomes TP: TP 9, FP 1

    v1 = _version(evidence.use_case_evidence(results, "ich"), 1)
    assert (v1["true_positive"], v1["false_positive"], v1["true_negative"], v1["false_negative"]) == (9, 1, 6, 2)
    assert v1["reviewed"] == 18 and v1["labelled"] == 0
    assert (v1["accept"], v1["modify"], v1["reject"]) == (14, 2, 3)  # results with such a verdict
    low, high = wilson_interval(9, 11)
    assert v1["sensitivity"]["value"] == round(9 / 11, 4)
    assert (v1["sensitivity"]["lower"], v1["sensitivity"]["upper"]) == (round(low, 4), round(high, 4))
    assert v1["specificity"]["numerator"] == 6 and v1["specificity"]["denominator"] == 7
    assert v1["ppv"]["value"] == 0.9 and v1["npv"]["value"] == 0.75
    assert evidence.counts(results, "ich", 1).reviewed == 18
    assert evidence.counts(results, "ich", 2) is None


def test_a_ground_truth_label_wins_over_the_reader_and_the_most_specific_label_applies(results):
    results.record_result(result_row(1, present=True))
    results.record_result(result_row(2, present=False))
    results.record_result(result_row(3, present=False))
    results.record_feedback(result_key="ich-0001", reader="r1", verdict="accept")  # reader: TP
    results.record_ground_truth([
        {"accession": "ACC0001", "use_case": "ich", "present": False},         # label: FP, wins over the reader
        {"accession": "ACC0002", "finding_code": FINDING, "present": True},    # a final report's coded finding: FN
        {"accession": "ACC0002", "use_case": "ich", "finding_code": FINDING, "present": False},  # more specific: TN
        {"accession": "ACC0003", "finding_code": "OTHER", "present": True},    # another finding: not this result's
    ], "csv")
    v1 = _version(evidence.use_case_evidence(results, "ich"), 1)
    assert (v1["true_positive"], v1["false_positive"], v1["true_negative"], v1["false_negative"]) == (0, 1, 1, 0)
    assert v1["reviewed"] == 2 and v1["labelled"] == 2 and v1["sensitivity"] is None


def test_evidence_is_per_model_version_and_counts_each_results_latest_revision(results):
    results.record_result(result_row(1, present=False, version=1))
    results.record_result(result_row(1, present=True, version=1, revision=1))  # an amended result: now positive
    results.record_result(result_row(2, present=True, version=2))
    for key in ("ich-0001", "ich-0002"):
        results.record_feedback(result_key=key, reader="r1", verdict="accept")
    report = evidence.use_case_evidence(results, "ich")
    assert [v["model_version"] for v in report["versions"]] == [1, 2]
    assert _version(report, 1)["true_positive"] == 1 and _version(report, 1)["true_negative"] == 0
    assert _version(report, 2)["reviewed"] == 1
    assert evidence.use_case_evidence(results, "other")["versions"] == []


def test_the_positive_rate_per_day_is_compared_with_the_first_weeks_baseline(results):
    n = 0
    for day in range(9):  # week one: 1 positive in 10 a day; day 7 as before; day 8: 3 in 10 (ratio 3)
        for i in range(10):
            results.record_result(result_row(n, present=i < (3 if day == 8 else 1), day=day))
            n += 1
    rate = _version(evidence.use_case_evidence(results, "ich"), 1)["positive_rate"]
    assert rate["baseline"] == 0.1 and rate["baseline_complete"] is True
    assert (rate["baseline_from"], rate["baseline_to"]) == ("2026-11-02", "2026-11-08")
    assert [d["results"] for d in rate["days"]] == [10] * 9
    assert rate["days"][7]["ratio"] == 1.0 and rate["latest_ratio"] == 3.0


def test_labels_are_idempotent_and_a_changed_label_replaces_the_old_one(results):
    labels = [{"accession": "ACC1", "use_case": "ich", "present": True},
              {"accession": "ACC2", "finding_code": FINDING, "present": False}]
    assert results.record_ground_truth(labels, "csv") == {"inserted": 2, "updated": 0, "unchanged": 0}
    assert results.record_ground_truth(labels, "csv") == {"inserted": 0, "updated": 0, "unchanged": 2}
    changed = [{**labels[0], "present": False}]
    assert results.record_ground_truth(changed, "hl7") == {"inserted": 0, "updated": 1, "unchanged": 0}
    rows = {(r["accession"], r["use_case"], r["finding_code"]): (r["present"], r["source"])
            for r in results.ground_truth()}
    assert rows == {("ACC1", "ich", ""): (False, "hl7"), ("ACC2", "", FINDING): (False, "csv")}


def test_the_evidence_gauges_follow_the_store(results):
    from pacsflow_router.results import evidence_metrics as em

    n = 0
    for day in range(8):  # a week at 1 in 10, then a day at 4 in 10
        for i in range(10):
            results.record_result(result_row(n, present=i < (4 if day == 7 else 1), day=day))
            n += 1
    for key in range(70, 74):  # the last day's positives: one right, three wrong
        results.record_feedback(result_key=f"ich-{key:04d}", reader="r1", verdict="accept" if key == 70 else "reject")
    em.update_evidence_metrics(results, {"ich": 0.5})

    def value(name: str, **labels: str) -> float | None:
        return em.REGISTRY.get_sample_value(name, {"use_case": "ich", **labels})

    assert value("pacsflow_evidence_reviewed", model_version="1") == 4
    assert value("pacsflow_evidence_ppv", model_version="1", bound="value") == 0.25
    assert value("pacsflow_evidence_ppv", model_version="1", bound="upper") == round(wilson_interval(1, 4)[1], 4)
    assert value("pacsflow_evidence_sensitivity", model_version="1", bound="value") == 1.0
    assert value("pacsflow_evidence_positive_rate_ratio", model_version="1") == 4.0
    assert value("pacsflow_evidence_day_results", model_version="1") == 10
    assert value("pacsflow_evidence_ppv_floor") == 0.5
    em.update_evidence_metrics(results)  # no floors now: that series goes
    assert value("pacsflow_evidence_ppv_floor") is None
