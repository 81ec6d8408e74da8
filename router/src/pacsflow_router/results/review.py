"""What the reviewer panel (pacsflow-api) needs of one analysed result: a ``review_results`` row.

The API is a separate process with no access to the spool, so the router writes everything the panel shows into the
results store when it makes a result: the study's patient, accession and procedure, the order's priority, the finding,
its location and the key slice as a small windowed grayscale PNG (the marker is drawn by the API, so it can be
toggled).
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import numpy as np
from PIL import Image

from ..domain import Finding, Order, Series, Slice, Study, study_key
from .reports import tracking_uid

BRAIN_WINDOW = (40.0, 80.0)
"""CT brain window (centre, width) in HU: where intracranial haemorrhage is visible."""
KEY_IMAGE_MAX = 256
"""The key image's longer side in pixels: enough for a side panel, small enough to keep in a database row."""


def key_image_png(image: Slice, modality: str) -> bytes:
    """The key slice as an 8-bit grayscale PNG: rescaled (Rescale Slope/Intercept), windowed (the brain window for CT,
    the 1st-99th percentile otherwise) and scaled down to at most :data:`KEY_IMAGE_MAX` pixels on its longer side."""
    header = image.header
    pixels = image.pixels if image.pixels.ndim == 2 else image.pixels.mean(axis=-1)  # colour: its luminance, roughly
    values = pixels.astype(np.float32) * float(getattr(header, "RescaleSlope", 1) or 1) + float(
        getattr(header, "RescaleIntercept", 0) or 0)
    if modality == "CT":
        centre, width = BRAIN_WINDOW
        low, high = centre - width / 2, centre + width / 2
    else:
        low, high = (float(v) for v in np.percentile(values, [1, 99]))
    scaled = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0) * 255.0
    picture = Image.fromarray(scaled.astype(np.uint8), mode="L")
    picture.thumbnail((KEY_IMAGE_MAX, KEY_IMAGE_MAX))
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=True)
    return out.getvalue()


def review_row(study: Study, series: Series, finding: Finding, *, use_case: str, mode: str, model_name: str,
               model_version: int, finding_type: tuple[str, str, str], decision_threshold: float, critical: bool,
               revision: int, sr_sop_uid: str | None, order: Order | None,
               created_at: dt.datetime | None = None) -> dict[str, Any]:
    """The ``review_results`` row of one analysed result (see :meth:`.store.ResultsStore.record_result`).

    Parameters
    ----------
    finding_type : tuple of str
        (code value, coding scheme, code meaning) of what the model detects (the manifest's finding type).
    decision_threshold : float
        At or above it the finding is present (the SR's Present/Absent).
    order : Order or None
        The study's order: its priority, and its procedure and patient where the images leave them empty.
    """
    header = study.first_header
    image = series.slices[finding.slice_index]
    rows, cols = image.pixels.shape[:2]
    column, row = finding.pixel_point
    tracking = tracking_uid(study.ref.study_uid, use_case, model_name)
    procedure = str(header.get("StudyDescription", "") or "") or (order.procedure_description if order else "")
    return {
        "tracking_uid": tracking, "revision": revision, "result_key": study_key(tracking),
        "study_uid": study.ref.study_uid,
        "accession": str(header.get("AccessionNumber", "") or "") or (order.accession if order else ""),
        "patient_id": str(header.get("PatientID", "") or "") or (order.patient_id if order else ""),
        "patient_name": str(header.get("PatientName", "") or "") or (order.patient_name if order else ""),
        "procedure": procedure[:255], "order_priority": (order.priority if order else "")[:1],
        "use_case": use_case, "mode": mode, "model_name": model_name, "model_version": model_version,
        "finding_code": finding_type[0], "finding_scheme": finding_type[1], "finding_meaning": finding_type[2],
        "present": finding.probability >= decision_threshold, "probability": float(finding.probability),
        "critical": critical, "slice_index": finding.slice_index,
        "row_fraction": min(max(row / rows, 0.0), 1.0), "col_fraction": min(max(column / cols, 0.0), 1.0),
        "sr_sop_uid": sr_sop_uid, "created_at": created_at or dt.datetime.now(dt.UTC),
        "key_image_png": key_image_png(image, series.modality),
    }
