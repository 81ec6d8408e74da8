"""Which series of a study a use case runs on (pure; DICOM attributes only)."""

from __future__ import annotations

import re

from ..config import Match
from ..domain import Series, Study


def series_matches(match: Match, series: Series) -> bool:
    """Whether ``series`` satisfies every non-empty criterion of ``match`` (case-insensitive codes)."""
    if match.modalities and series.modality.upper() not in {m.upper() for m in match.modalities}:
        return False
    if match.body_parts_examined and series.body_part.upper() not in {
        b.upper() for b in match.body_parts_examined
    }:
        return False
    if match.series_description_pattern and not re.search(match.series_description_pattern, series.description):
        return False
    return True


def select_series(match: Match, study: Study) -> Series | None:
    """The series a use case runs on: the matching series with the most images (ties: first received).

    Head-CT studies often carry a scout/localiser and thin + thick reconstructions; the largest matching series
    is the volumetric one the model was trained on.
    """
    candidates = [s for s in study.series if s.slices and series_matches(match, s)]
    if not candidates:
        return None
    return max(candidates, key=lambda s: len(s.slices))
