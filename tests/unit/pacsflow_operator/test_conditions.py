"""KEP-1623 condition bookkeeping and the rollout history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pacsflow_operator.reconcile.conditions import (
    MODE_HISTORY_LIMIT,
    Cond,
    merge_conditions,
    mode_history,
    ready,
)

T0 = datetime(2026, 1, 1, 8, 0, tzinfo=UTC)
T1 = T0 + timedelta(hours=1)


def test_transition_time_moves_only_when_status_changes():
    first = merge_conditions(None, [Cond("Ready", "False", "RouterNotFound", "m")], 1, T0)
    same = merge_conditions(first, [Cond("Ready", "False", "RouterNotFound", "m2")], 2, T1)
    assert same[0]["lastTransitionTime"] == "2026-01-01T08:00:00Z"
    assert same[0]["observedGeneration"] == 2 and same[0]["message"] == "m2"
    flipped = merge_conditions(same, [Cond("Ready", "True", "Reconciled")], 3, T1)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T09:00:00Z"


def test_other_conditions_are_kept_and_sorted():
    current = merge_conditions(None, [Cond("Zeta", "True", "X")], 1, T0)
    out = merge_conditions(current, [Cond("Alpha", "True", "Y")], 1, T0)
    assert [c["type"] for c in out] == ["Alpha", "Zeta"]


def test_ready_takes_the_first_failure():
    r = ready([Cond("A", "True", "Ok"), Cond("B", "False", "Broken", "fix B"), Cond("C", "False", "Other")], "fine")
    assert (r.status, r.reason, r.message) == ("False", "Broken", "fix B")
    assert ready([Cond("A", "Unknown", "Embedded")], "fine").status == "True"


def test_mode_history_records_each_transition_once():
    h = mode_history(None, "silent", 1, T0)
    h = mode_history(h, "silent", 2, T1)
    assert [e["mode"] for e in h] == ["silent"]
    h = mode_history(h, "assistive", 3, T1)
    h = mode_history(h, "silent", 4, T1)
    assert [(e["mode"], e["generation"]) for e in h] == [("silent", 1), ("assistive", 3), ("silent", 4)]
    assert h[1]["since"] == "2026-01-01T09:00:00Z"


def test_mode_history_is_bounded():
    h = None
    for i in range(MODE_HISTORY_LIMIT + 10):
        h = mode_history(h, "silent" if i % 2 else "assistive", i, T0)
    assert len(h) == MODE_HISTORY_LIMIT
    assert h[-1]["generation"] == MODE_HISTORY_LIMIT + 9
