"""Which series of a study a use case applies to at all (pure; DICOM attributes only).

Applicability is the coarse filter: modality and series description. A study with no applicable series is "not
applicable" to the use case (no audit record). Whether an applicable series is good enough to analyse is decided by
the acceptance criteria (:mod:`.acceptance`), which also check Body Part Examined and the rest of the model's input
requirements and say why a study is "not analysed".
"""

from __future__ import annotations

import re
from collections.abc import Set

from ..config import Match
from ..domain import Order, Series, Study


def is_candidate(series: Series, modalities: Set[str] | None, description_pattern: str | None) -> bool:
    """Whether ``series`` is one the use case applies to.

    Parameters
    ----------
    series : Series
        A loaded series.
    modalities : set of str or None
        Accepted Modality values, upper case; None = any (an empty set admits nothing).
    description_pattern : str or None
        Regular expression searched in Series Description (0008,103E); None = any.
    """
    if modalities is not None and series.modality.strip().upper() not in modalities:
        return False
    return description_pattern is None or re.search(description_pattern, series.description) is not None


def series_matches(match: Match, series: Series) -> bool:
    """Whether ``series`` satisfies every non-empty criterion of ``match`` (case-insensitive codes).

    Body Part Examined is compared as stated (no description fallback); the pipeline uses the acceptance criteria
    instead (:func:`.acceptance.select_series`), which fall back to descriptions and say why a series fails.
    """
    modalities = {m.upper() for m in match.modalities} or None
    if not is_candidate(series, modalities, match.series_description_pattern):
        return False
    return not match.body_parts_examined or series.body_part.upper() in {b.upper() for b in match.body_parts_examined}


def select_series(match: Match, study: Study) -> Series | None:
    """The matching series with the most images (ties: first received), without acceptance criteria.

    For tools and benchmarks that run a model on a known-good study; the router itself chooses with
    :func:`.acceptance.select_series`.
    """
    candidates = [s for s in study.series if s.slices and series_matches(match, s)]
    if not candidates:
        return None
    return max(candidates, key=lambda s: len(s.slices))


def order_mismatch(match: Match, order: Order | None) -> str | None:
    """Why the study's order keeps a use case from applying (None: it applies).

    Only a use case with order criteria (:meth:`~pacsflow_router.config.Match.has_order_criteria`) looks at the
    order; for it, a study without an order does not apply ("triage for a subset of studies or a reading pool").
    Codes are compared case-insensitively. The explanation names the criterion, never the order's values beyond
    the codes the use case itself lists.
    """
    if not match.has_order_criteria():
        return None
    if order is None:
        return "the use case selects studies by their order, and this study has no order"
    checks = (
        ("patient class", match.patient_classes, order.patient_class),
        ("order priority", match.order_priorities, order.priority),
        ("procedure code", match.procedure_codes, order.procedure_code),
    )
    for label, wanted, value in checks:
        if wanted and value.strip().upper() not in {w.strip().upper() for w in wanted}:
            return f"the order's {label} is not one of {sorted(wanted)}"
    pattern = match.ordering_location_pattern
    if pattern is not None and re.search(pattern, order.location) is None:
        return "the order's patient location does not match orderingLocationPattern"
    return None
