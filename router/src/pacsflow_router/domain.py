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
    frame_number: int | None = None
    """1-based frame of a multi-frame instance (``header`` is then that frame's view: Image Position/Orientation
    (Patient), Pixel Spacing, Slice Thickness, Rescale Slope/Intercept from its functional groups, with the
    instance's SOP Class/Instance UID); None for a single-frame instance."""


@dataclass(frozen=True)
class SkippedInstance:
    """An instance of a series that was received but not analysed, and why (no patient data in ``reason``)."""

    sop_instance_uid: str
    reason: str
    """Short and bounded, e.g. ``"pixel data not decodable"``."""
    images: int = 1
    """Images (frames) the instance holds."""


@dataclass
class Series:
    """Images of one series, sorted along the slice normal (or by InstanceNumber)."""

    series_uid: str
    modality: str
    body_part: str
    description: str
    slices: list[Slice] = field(default_factory=list)
    skipped: list[SkippedInstance] = field(default_factory=list)
    """Instances received for this series whose images are not in ``slices`` (e.g. undecodable pixel data)."""
    missing: int = 0
    """Images never received, inferred from gaps along the slice normal that are whole multiples of the series'
    own spacing (a dropped slice); 0 without geometry."""

    @property
    def expected_images(self) -> int:
        """Images the series should have: analysed + skipped + missing."""
        return len(self.slices) + sum(s.images for s in self.skipped) + self.missing

    @property
    def complete(self) -> bool:
        """Whether every expected image was decoded (nothing skipped, nothing missing)."""
        return not self.skipped and self.missing == 0

    def coverage(self) -> str:
        """One line for an SR or a log: ``"62 of 64 images analysed; not analysed: 1 pixel data not decodable,
        1 missing"`` (counts and reasons only, no identifiers)."""
        text = f"{len(self.slices)} of {self.expected_images} images analysed"
        reasons: dict[str, int] = {}
        for skipped in self.skipped:
            reasons[skipped.reason] = reasons.get(skipped.reason, 0) + skipped.images
        if self.missing:
            reasons["missing"] = reasons.get("missing", 0) + self.missing
        if reasons:
            text += "; not analysed: " + ", ".join(f"{n} {reason}" for reason, n in reasons.items())
        return text

    def inputs(self) -> dict[str, object]:
        """What the audit records about the series' inputs: counts, and each skipped instance by its
        :func:`study_key`-style hash (the audit store holds no UIDs) with its reason."""
        return {
            "analysed": len(self.slices),
            "expected": self.expected_images,
            "missing": self.missing,
            "skipped": [{"instance": study_key(s.sop_instance_uid), "reason": s.reason, "images": s.images}
                        for s in self.skipped],
        }


@dataclass
class Study:
    """A loaded study: its series and the header of its first instance (patient/study module source)."""

    ref: StudyRef
    first_header: Dataset
    series: list[Series]
    unreadable: int = 0
    """Spooled instances that could not be parsed at all (their series is unknown)."""


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
    frame_number: int | None = None  # 1-based frame of a multi-frame source instance (Referenced Frame Number)


@dataclass(frozen=True)
class StudyResult:
    """What one use case concluded about one study."""

    use_case: str
    model_name: str
    model_version: int
    finding: Finding
    critical: bool
    timings: dict[str, float]


@dataclass(frozen=True)
class Order:
    """A scheduled imaging order (from HL7 ORM^O01/OMI^O23 or a polled RIS worklist; workflow/orders.py).

    It carries patient data (the worklist needs it), so it is never logged: log :attr:`key` only.
    Empty string means the sender left the field empty.
    """

    accession: str
    patient_id: str
    placer_order_number: str = ""
    filler_order_number: str = ""
    study_uid: str = ""
    requested_procedure_id: str = ""
    modality: str = ""
    procedure_code: str = ""
    procedure_scheme: str = ""
    procedure_description: str = ""
    priority: str = ""
    """HL7 priority code: S stat, A ASAP, R routine, P pre-op, C callback, T timing critical."""
    patient_class: str = ""
    location: str = ""
    reason: str = ""
    patient_name: str = ""
    """DICOM PN form (``Family^Given``)."""
    patient_birth_date: str = ""
    patient_sex: str = ""
    scheduled_start: str = ""
    """DICOM DT form (YYYYMMDDHHMMSS) or empty."""
    scheduled_station_ae_title: str = ""
    status: str = "scheduled"
    """``scheduled``, ``in-progress``, ``cancelled``, ``discontinued``, ``completed``, ``expired``."""
    source: str = "hl7"
    """``hl7`` or ``mwl``."""

    @property
    def key(self) -> str:
        """A non-identifying key for logs and metrics (accession numbers identify an exam)."""
        return study_key(f"order\0{self.accession}\0{self.patient_id}")
