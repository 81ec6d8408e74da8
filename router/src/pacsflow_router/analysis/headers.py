"""Attribute access that works for classic (one frame per instance) and enhanced (multi-frame) images (pure).

Enhanced images (Enhanced CT/MR, Legacy Converted Enhanced) carry geometry, pixel measures and rescale in their
Shared and Per-frame Functional Groups (PS3.3 C.7.6.16) instead of the top level.
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from ..domain import Series

__all__ = ["frame_indices", "functional_group_value"]


def frame_indices(series: Series) -> list[int]:
    """Per slice, its frame index (0-based) within its instance: ``frame_number - 1``, 0 for a single frame.

    The loader already gives each frame a header view with the frame's own geometry and rescale at the top level
    (:func:`~.volume.frame_headers`); the functional groups are the fallback for headers built any other way.
    """
    return [s.frame_number - 1 if s.frame_number else 0 for s in series.slices]


def functional_group_value(header: Dataset, frame: int, sequence: str, keyword: str) -> Any:
    """``keyword`` from a functional group macro (PS3.3 C.7.6.16): per-frame first, then shared; None if absent."""
    per_frame = header.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        group = per_frame[frame].get(sequence)
        if group and keyword in group[0]:
            return group[0].get(keyword)
    shared = header.get("SharedFunctionalGroupsSequence")
    if shared:
        group = shared[0].get(sequence)
        if group and keyword in group[0]:
            return group[0].get(keyword)
    return None
