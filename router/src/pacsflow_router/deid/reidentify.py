"""Re-identification of results an external AI returns about pseudonymous studies (pure apart from the map)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .annex_e import DeidentificationError
from .pseudonyms import PseudonymStore, StudyIdentity

#: Attributes that say an instance was de-identified: they go when the result is re-identified (PS3.3 C.7.1.1).
_DEIDENTIFICATION_MARKS = ("PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
                           "LongitudinalTemporalInformationModified")


class UnknownPseudonymError(DeidentificationError):
    """A returned result refers to a study this router never sent out (or sent with another key)."""


def _map_uids(ds: Dataset, store: PseudonymStore) -> int:
    mapped = 0
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                mapped += _map_uids(item, store)
        elif elem.VR == "UI" and elem.value:
            values = list(elem.value) if elem.VM > 1 else [elem.value]
            originals = [store.original_uid(str(v)) for v in values]
            if any(o is not None for o in originals):
                new = [o if o is not None else str(v) for o, v in zip(originals, values, strict=True)]
                elem.value = new if elem.VM > 1 else new[0]
                mapped += sum(o is not None for o in originals)
    return mapped


def reidentify(ds: Dataset, store: PseudonymStore) -> tuple[Dataset, StudyIdentity]:
    """Map a result about a pseudonymous study back to the original study and patient, in place.

    Every UID the de-identification issued is replaced by its original anywhere in the tree (the study, series and
    instances the SR references); the patient and study attributes are restored from the pseudonym map; the
    de-identification marks are removed. The result's own UIDs (its SOP Instance and Series) stay as the external
    AI made them.

    Returns
    -------
    (Dataset, StudyIdentity)
        ``ds``, re-identified, and the study it belongs to (with the use case that sent it out).

    Raises
    ------
    UnknownPseudonymError
        The Study Instance UID is not one this router issued.
    PseudonymMapError
        The map does not decrypt with this key.
    """
    pseudonym = str(ds.get("StudyInstanceUID", "") or "")
    study = store.study(pseudonym) if pseudonym else None
    if study is None:
        raise UnknownPseudonymError(
            "the result's Study Instance UID is not a pseudonym this router issued (a study never sent out, or "
            "sent with another externalAi.keyFile); it was kept, not forwarded")
    _map_uids(ds, store)
    for elem in study.identity:
        ds[elem.tag] = elem
    for keyword in _DEIDENTIFICATION_MARKS:
        if keyword in ds:
            delattr(ds, keyword)
    # A sequence of Other Patient IDs the original did not have is not left behind with a pseudonym in it.
    if "OtherPatientIDsSequence" in ds and "OtherPatientIDsSequence" not in study.identity:
        ds.OtherPatientIDsSequence = Sequence()
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds, study
