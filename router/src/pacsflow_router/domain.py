"""Plain data that flows along the router's one data path (no I/O here).

spool -> studies (:class:`StudyRef`) -> volume loading (:class:`Study`) -> preprocess (float32 batch)
-> inference (:class:`ModelOutput`) -> findings (:class:`StudyResult`) -> reports / audit / export.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset


def study_key(study_instance_uid: str) -> str:
    """A non-identifying key for a study, safe for logs, file names and audit joins.

    UIDs can carry institution roots and dates; logs must not, so everything outside DEBUG uses this.
    """
    return hashlib.sha256(study_instance_uid.encode("ascii", "replace")).hexdigest()[:16]


@dataclass(frozen=True)
class StudyRef:
    """A complete study waiting to be processed: its key and the spooled instance files."""

    study_uid: str
    key: str
    paths: tuple[str, ...]
    last_received: float


@dataclass
class Slice:
    """One image of a study: header (no pixel data) and raw stored pixel values."""

    header: Dataset
    pixels: np.ndarray  # (rows, cols), stored values before rescale


@dataclass
class Series:
    """Images of one series, sorted along the slice normal (or by InstanceNumber)."""

    series_uid: str
    modality: str
    body_part: str
    description: str
    slices: list[Slice] = field(default_factory=list)


@dataclass
class Study:
    """A loaded study: its series and the header of its first instance (patient/study module source)."""

    ref: StudyRef
    first_header: Dataset
    series: list[Series]


@dataclass(frozen=True)
class ModelOutput:
    """Raw per-slice model output after postprocessing.

    ``probability``: (N,) lesion probability per slice; ``location``: (N, 2) lesion centre per slice as
    (row, column) fractions of the image in [0, 1].
    """

    probability: np.ndarray
    location: np.ndarray


@dataclass(frozen=True)
class Finding:
    """The study-level finding of one use case: where and how likely."""

    probability: float
    series_uid: str
    slice_index: int
    sop_class_uid: str
    sop_instance_uid: str
    frame_of_reference_uid: str | None
    pixel_point: tuple[float, float]  # (column, row) in the image, DICOM SCOORD convention
    patient_point: tuple[float, float, float] | None  # (x, y, z) mm in the patient coordinate system


@dataclass(frozen=True)
class StudyResult:
    """What one use case concluded about one study."""

    use_case: str
    model_name: str
    model_version: int
    finding: Finding
    critical: bool
    timings: dict[str, float]
