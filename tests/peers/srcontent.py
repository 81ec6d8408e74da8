"""What an SR says, read with pydicom: its content tree, tracking UID and evidence (for asserts in any test suite)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pydicom

#: DCM 112040 "Tracking Unique Identifier" (TID 4108): the same across an SR and its amendments.
TRACKING_UID = "112040"


def walk(items: Sequence[pydicom.Dataset]) -> Iterator[pydicom.Dataset]:
    """Every content item of an SR content tree, depth first."""
    for item in items:
        yield item
        yield from walk(item.get("ContentSequence", []))


def tracking_uid(sr: pydicom.Dataset) -> str:
    """The SR's Tracking Unique Identifier."""
    return next(str(i.UID) for i in walk(sr.ContentSequence)
                if i.ValueType == "UIDREF" and i.ConceptNameCodeSequence[0].CodeValue == TRACKING_UID)


def evidence_uids(sr: pydicom.Dataset) -> set[str]:
    """Every SOP Instance UID the SR lists as evidence (Current Requested Procedure / Pertinent Other Evidence)."""
    uids: set[str] = set()
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in sr.get(keyword, []):
            for series in study.get("ReferencedSeriesSequence", []):
                uids.update(str(item.ReferencedSOPInstanceUID) for item in series.get("ReferencedSOPSequence", []))
    return uids
