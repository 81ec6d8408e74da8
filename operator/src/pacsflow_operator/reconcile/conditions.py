"""KEP-1623 conditions and the rollout history, computed without I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]
#: Keep the rollout history bounded so the status object never grows without limit (etcd's 1.5 MiB cap).
MODE_HISTORY_LIMIT = 100


@dataclass(frozen=True)
class Cond:
    """A condition to set: type, status, CamelCase reason and a message that says what to do."""

    type: str
    status: Status
    reason: str
    message: str = ""


def timestamp(now: datetime | None = None) -> str:
    """RFC 3339 UTC timestamp at second precision (what ``metav1.Time`` serialises to)."""
    now = now or datetime.now(UTC)
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(
    current: list[dict[str, Any]] | None, wanted: list[Cond], generation: int | None, now: datetime | None = None
) -> list[dict[str, Any]]:
    """Conditions after applying ``wanted`` to ``current``.

    ``lastTransitionTime`` changes only when a condition's status changes (KEP-1623), so a reconcile that
    finds nothing new leaves the status byte-for-byte unchanged and triggers no write.

    Parameters
    ----------
    current
        ``status.conditions`` as stored (may be ``None``).
    wanted
        The conditions this reconcile computed; others in ``current`` are kept as they are.
    generation
        ``metadata.generation`` the conditions were computed from.
    now
        Time of this reconcile (default: now).

    Returns
    -------
    list of dict
        Conditions sorted by type.
    """
    by_type = {c["type"]: dict(c) for c in current or ()}
    for cond in wanted:
        old = by_type.get(cond.type)
        since = old["lastTransitionTime"] if old and old.get("status") == cond.status else timestamp(now)
        by_type[cond.type] = {
            "type": cond.type,
            "status": cond.status,
            "reason": cond.reason,
            "message": cond.message,
            "lastTransitionTime": since,
            "observedGeneration": generation,
        }
    return [by_type[t] for t in sorted(by_type)]


def ready(conds: list[Cond], ok_message: str) -> Cond:
    """``Ready``: True when no other condition is False; otherwise the first failing one's reason."""
    for cond in conds:
        if cond.status == "False":
            return Cond("Ready", "False", cond.reason, cond.message)
    return Cond("Ready", "True", "Reconciled", ok_message)


def mode_history(
    history: list[dict[str, Any]] | None, mode: str, generation: int | None, now: datetime | None = None,
    facts: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """``status.modeHistory`` with ``mode`` appended when it differs from the last recorded mode.

    ``facts`` (who, override, evidence at the time: camelCase keys of ``ModeChange``) go into the new entry;
    ``None`` values are left out.
    """
    history = [dict(h) for h in history or ()]
    if not history or history[-1].get("mode") != mode:
        entry = {"mode": mode, "since": timestamp(now), "generation": generation}
        entry.update({k: v for k, v in (facts or {}).items() if v is not None})
        history.append(entry)
    return history[-MODE_HISTORY_LIMIT:]
