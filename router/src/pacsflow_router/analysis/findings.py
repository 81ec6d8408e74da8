"""Per-slice model output -> the study-level finding: which image, where in it, where in the patient.

Pure functions, no I/O. Coordinates follow the standard:

- ``pixel_point`` is (column, row) in the ORIGINAL image matrix in the SCOORD convention of PS3.3
  C.18.6.1.2 (0.0\\0.0 is the top-left corner of the top-left pixel, so a pixel centre is at +0.5);
- ``patient_point`` is (x, y, z) mm in the patient coordinate system from Image Position/Orientation
  (Patient) and Pixel Spacing (PS3.3 C.7.6.2.1.1), or None when the image lacks them.

The model's location is a (row, column) fraction of the image extent, which the resize to the model's
matrix preserves (half-pixel aligned), so it maps onto any original matrix size.

A frame of a multi-frame image carries its own geometry in its per-frame header view (see
:func:`pacsflow_router.analysis.volume.frame_headers`), so the same arithmetic applies, and the finding names
the frame (``Finding.frame_number``) for the SR's Referenced Frame Number.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from .. import domain
from ..errors import InferenceError

__all__ = ["summarize", "pixel_to_patient"]


def pixel_to_patient(header: Dataset, column: float, row: float) -> tuple[float, float, float] | None:
    """Patient coordinates (mm) of a point given in SCOORD image coordinates (column, row).

    Parameters
    ----------
    header : pydicom.Dataset
        Image header with ImagePositionPatient, ImageOrientationPatient and PixelSpacing.
    column, row : float
        SCOORD coordinates (0.0 = outer edge of the first pixel; pixel centres at +0.5).

    Returns
    -------
    tuple of float or None
        (x, y, z), or None if any of the three attributes is missing or malformed.
    """
    try:
        ipp = np.asarray(header.ImagePositionPatient, dtype=float)
        iop = np.asarray(header.ImageOrientationPatient, dtype=float)
        spacing = np.asarray(header.PixelSpacing, dtype=float)  # (between rows, between columns)
    except (AttributeError, TypeError, ValueError):
        return None
    if ipp.shape != (3,) or iop.shape != (6,) or spacing.shape != (2,):
        return None
    # IPP is the centre of the first pixel, hence the -0.5 from SCOORD to pixel-centre indices.
    point = ipp + iop[:3] * spacing[1] * (column - 0.5) + iop[3:] * spacing[0] * (row - 0.5)
    if not np.all(np.isfinite(point)):
        return None
    return (float(point[0]), float(point[1]), float(point[2]))


def summarize(
    series: domain.Series, output: domain.ModelOutput, *, critical_threshold: float | None,
    slice_weights: Sequence[float] | None = None,
) -> domain.Finding:
    """The finding of one series: the slice with the highest lesion probability and the lesion's location.

    Parameters
    ----------
    series : domain.Series
        The series the model ran on, slices in the order of the model's batch.
    output : domain.ModelOutput
        Per-slice probability ``[N]`` and (row, column) fraction location ``[N, 2]``.
    critical_threshold : float or None
        The use case's triage threshold; checked for range here. Whether the study is critical is the
        mode gate's decision (only triage flags), made on ``Finding.probability``.
    slice_weights : sequence of float, optional
        The model's study-level aggregation (``model.json`` ``output.sliceWeights``): each slice's probability is
        replaced by the weighted mean of it and its neighbours' (centred, odd length, the series' end slices
        repeat; a slice without a finite probability counts as 0) before the most likely slice is taken, so the
        finding's probability is that mean. None: the most likely slice's own probability.

    Returns
    -------
    domain.Finding

    Raises
    ------
    InferenceError
        The output does not match the series (length) or holds no finite probability.
    """
    if critical_threshold is not None and not 0.0 <= critical_threshold <= 1.0:
        raise ValueError(f"critical_threshold must be within [0, 1], got {critical_threshold}")
    probability = np.asarray(output.probability, dtype=float).reshape(-1)
    location = np.asarray(output.location, dtype=float).reshape(-1, 2)
    n = len(series.slices)
    if n == 0 or len(probability) != n or len(location) != n:
        raise InferenceError(
            f"model output has {len(probability)} probabilities and {len(location)} locations "
            f"for a series of {n} slices; the backend must return one per slice"
        )
    finite = np.isfinite(probability)
    if not finite.any():
        raise InferenceError("model output holds no finite probability (NaN/inf for every slice)")
    if slice_weights is not None and len(slice_weights) > 1:
        half = len(slice_weights) // 2
        padded = np.pad(np.where(finite, probability, 0.0), half, mode="edge")
        probability = np.sum([w * padded[j:j + n] for j, w in enumerate(slice_weights)], axis=0)
        finite = np.ones(n, dtype=bool)
    k = int(np.argmax(np.where(finite, probability, -np.inf)))
    image = series.slices[k]
    rows, cols = image.pixels.shape[:2]
    frac_row, frac_col = (float(v) if math.isfinite(v) else 0.5 for v in location[k])
    column = min(max(frac_col, 0.0), 1.0) * cols
    row = min(max(frac_row, 0.0), 1.0) * rows
    header = image.header
    frame_of_reference = header.get("FrameOfReferenceUID")
    return domain.Finding(
        probability=float(probability[k]),
        series_uid=series.series_uid,
        slice_index=k,
        sop_class_uid=str(header.get("SOPClassUID", "")),
        sop_instance_uid=str(header.get("SOPInstanceUID", "")),
        frame_of_reference_uid=str(frame_of_reference) if frame_of_reference else None,
        pixel_point=(column, row),
        patient_point=pixel_to_patient(header, column, row),
        frame_number=image.frame_number,
    )
