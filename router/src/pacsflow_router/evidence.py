"""Evidence of a use case's model version from reviewed cases: the numbers a promotion is judged on.

Pure (no I/O, imports nothing else of pacsflow): counts in, the ``status.evidence`` object out. The operator
(``status.evidence`` and the API server's promotion policy), the results store (:mod:`.results.evidence`: counts
from reader verdicts and imported labels) and the API all use this one module, so they agree on the arithmetic.

Intervals are Wilson score intervals (Wilson 1927; Brown, Cai & DasGupta 2001 recommend them over the
Wald interval, which collapses to zero width at 0 % or 100 % and undercovers at the small counts a
new use case has).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

#: Two-sided 95 %: the 0.975 quantile of the standard normal distribution.
Z_95 = 1.959963984540054
#: Digits kept in status.evidence (enough to compare with a bar such as 0.95; keeps messages readable).
DIGITS = 4


@dataclass(frozen=True)
class Counts:
    """Reviewed cases of one model version, split by the AI's call against the reviewer's truth."""

    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int

    def __post_init__(self) -> None:
        if min(self.true_positive, self.false_positive, self.true_negative, self.false_negative) < 0:
            raise ValueError(f"counts cannot be negative: {self}")

    @property
    def reviewed(self) -> int:
        """Cases with a verdict."""
        return self.true_positive + self.false_positive + self.true_negative + self.false_negative


def timestamp(now: datetime | None = None) -> str:
    """RFC 3339 UTC timestamp at second precision (what ``metav1.Time`` serialises to)."""
    return (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion.

    Parameters
    ----------
    successes, trials
        ``0 <= successes <= trials``, ``trials > 0``.
    z
        Standard normal quantile (default: two-sided 95 %).

    Returns
    -------
    tuple of float
        (lower, upper), within [0, 1].

    Raises
    ------
    ValueError
        ``trials`` is not positive or ``successes`` is outside ``[0, trials]``.
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(successes: int, trials: int) -> dict[str, Any] | None:
    """One rate of ``status.evidence`` (value, Wilson 95 % bounds, numerator, denominator); ``None`` when
    nothing was counted (no positives reviewed yet: the sensitivity is unknown, not 0)."""
    if trials == 0:
        return None
    lower, upper = wilson_interval(successes, trials)
    return {
        "value": round(successes / trials, DIGITS),
        "lower": round(lower, DIGITS),
        "upper": round(upper, DIGITS),
        "numerator": successes,
        "denominator": trials,
    }


def evidence(counts: Counts, model_version: int, now: datetime | None = None) -> dict[str, Any]:
    """``status.evidence`` of one model version (camelCase, ready to patch).

    Parameters
    ----------
    counts
        Reviewed cases by outcome.
    model_version
        The model version the counts are of; a promotion counts only evidence of the pinned version.
    now
        ``computedAt`` (default: now).

    Returns
    -------
    dict
        ``modelVersion``, ``computedAt``, ``reviewed`` and, where defined, ``sensitivity``,
        ``specificity``, ``ppv``, ``npv``.
    """
    c = counts
    rates = {
        "sensitivity": proportion(c.true_positive, c.true_positive + c.false_negative),
        "specificity": proportion(c.true_negative, c.true_negative + c.false_positive),
        "ppv": proportion(c.true_positive, c.true_positive + c.false_positive),
        "npv": proportion(c.true_negative, c.true_negative + c.false_negative),
    }
    out: dict[str, Any] = {"modelVersion": model_version, "computedAt": timestamp(now), "reviewed": c.reviewed}
    out.update({k: v for k, v in rates.items() if v is not None})
    return out

