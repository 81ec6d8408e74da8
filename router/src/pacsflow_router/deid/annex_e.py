"""PS3.15 Annex E Basic Application Level Confidentiality Profile, with the options a use case selects (pure).

:func:`deidentify` applies Table E.1-1 (:mod:`.annex_e_table`, generated from machine-readable copies of the
standard) at every nesting level of a data set. Choices where the standard leaves one open:

* compound actions: ``X/D``, ``Z/D``, ``X/Z/D`` -> D (a dummy, so Type 1 attributes stay valid); ``X/Z`` -> Z;
  ``X/Z/U*`` and D on a sequence -> the sequence is kept and its items are de-identified in turn;
* U (and any other UID that is not a registered DICOM UID) -> ``2.25.<uuid>`` where the UUID is a keyed HMAC of the
  original, so the same study gets the same pseudonymous UIDs every time (:class:`PseudonymKeys`);
* Patient's Name and Patient ID (Z) -> one keyed pseudonym per patient, so the external AI can still tell its
  patients apart (a dummy value is allowed by Z);
* Retain Longitudinal Temporal Information with Modified Dates: every DA/DT value the table lists is shifted by a
  whole number of days, keyed per patient (times of day stay);
* Clean Descriptors: the text is kept with the instance's own identifiers (name parts, IDs, accession, birth
  date) taken out; no free-text recognition beyond that;
* private attributes: removed, except those on the Retain Safe Private list (and their Private Creator);
* images that may carry burned-in text are refused (:class:`BurnedInAnnotationError`) unless allowed: pacsflow
  does not clean pixel data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from pydicom._uid_dict import UID_dictionary  # the registry of well-known UIDs (PS3.6 Annex A)
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from ..config import Deidentification
from ..errors import PacsflowError
from .annex_e_table import MASKED, TABLE

#: Modalities whose images commonly carry burned-in text (PS3.3 C.7.6.1.1.3 discussion; IHE profiles).
BURNS_TEXT_IN = frozenset({"US", "XA", "RF", "SC", "ES", "XC", "GM", "OT", "DOC", "SM"})
#: Secondary Capture SOP classes (always suspected of burned-in text when the attribute is absent).
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

#: Top-level attributes remembered for re-identification (patient and study modules, PS3.3 C.7.1.1, C.7.2.1).
REIDENTIFY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "OtherPatientIDsSequence", "AccessionNumber", "StudyID", "StudyDate",
    "StudyTime", "ReferringPhysicianName", "StudyDescription", "InstitutionName",
)

#: Attributes with a UI VR that name a code system or a template, never an instance: not remapped.
_KEEP_UIDS = frozenset({0x0008010C, 0x00080117, 0x00080118, 0x0040DB0C, 0x0040DB0D, 0x00020010, 0x00020002,
                        0x00080016, 0x00081150, 0x0008115A, 0x00081197, 0x00041510, 0x00041512})

_DUMMY: dict[str, object] = {
    "PN": "ANONYMOUS", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED", "ST": "ANONYMIZED",
    "UT": "ANONYMIZED", "UC": "ANONYMIZED", "CS": "ANONYMIZED", "AE": "ANONYMIZED", "UR": "ANONYMIZED",
    "DA": "19000101", "TM": "000000.00", "DT": "19000101000000.000000", "AS": "000Y", "IS": "0", "DS": "0",
    "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0, "FL": 0.0, "FD": 0.0, "AT": 0,
}
_BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})

# Option name (annex_e_table) -> the CID 7050 code of the option (PS3.16), for DeidentificationMethodCodeSequence.
_OPTION_CODES = {
    "retain-longitudinal-modified-dates": codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption,
    "retain-longitudinal-full-dates": codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption,
    "retain-patient-characteristics": codes.DCM.RetainPatientCharacteristicsOption,
    "retain-device-identity": codes.DCM.RetainDeviceIdentityOption,
    "retain-institution-identity": codes.DCM.RetainInstitutionIdentityOption,
    "clean-descriptors": codes.DCM.CleanDescriptorsOption,
    "retain-safe-private": codes.DCM.RetainSafePrivateOption,
}


class DeidentificationError(PacsflowError):
    """An instance cannot be de-identified as configured (nothing is sent)."""


class BurnedInAnnotationError(DeidentificationError):
    """The image may show identifying text in its pixels and the use case does not allow such images."""


@dataclass(frozen=True)
class PseudonymKeys:
    """Keyed (HMAC-SHA256) pseudonyms: the same input and key always give the same output.

    Parameters
    ----------
    key
        At least 32 secret bytes (derived from the mounted key file).
    """

    key: bytes

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.key, f"{purpose}\0{value}".encode("utf-8", "surrogateescape"), hashlib.sha256).digest()

    def uid(self, original: str) -> str:
        """``2.25.<uuid>`` (PS3.5 B.2) whose 122 free bits are a keyed HMAC of ``original`` (an RFC 9562 v8 UUID)."""
        value = int.from_bytes(self._mac("uid", original)[:16], "big")
        value = (value & ~(0xF << 76)) | (0x8 << 76)  # version 8: custom
        value = (value & ~(0x3 << 62)) | (0x2 << 62)  # variant RFC 9562
        return f"2.25.{value}"

    def patient(self, patient_id: str, issuer: str = "") -> str:
        """A patient pseudonym (16 characters, valid as LO and PN)."""
        return "PF" + base64.b32encode(self._mac("patient", f"{issuer}\0{patient_id}")[:10]).decode()[:14]

    def date_offset_days(self, patient_id: str, issuer: str = "") -> int:
        """Days (-3650 .. -30) every date of this patient moves by under the modified-dates option."""
        return -(30 + int.from_bytes(self._mac("dates", f"{issuer}\0{patient_id}")[:4], "big") % 3621)


@dataclass
class Deidentified:
    """The outcome of :func:`deidentify`: the new data set and what re-identification needs."""

    dataset: Dataset
    study_pseudonym: str
    """Pseudonymous Study Instance UID."""
    original_study_uid: str
    uids: dict[str, str] = field(default_factory=dict)
    """Pseudonymous UID -> original, every UID remapped in the tree."""
    identity: Dataset = field(default_factory=Dataset)
    """The original top-level patient and study attributes (:data:`REIDENTIFY_KEYWORDS`)."""
    date_offset_days: int = 0


def _options(options: Deidentification) -> list[str]:
    selected = []
    if options.retain_longitudinal_temporal_information == "modified-dates":
        selected.append("retain-longitudinal-modified-dates")
    elif options.retain_longitudinal_temporal_information == "full-dates":
        selected.append("retain-longitudinal-full-dates")
    for flag, name in ((options.retain_patient_characteristics, "retain-patient-characteristics"),
                       (options.retain_device_identity, "retain-device-identity"),
                       (options.retain_institution_identity, "retain-institution-identity"),
                       (options.clean_descriptors, "clean-descriptors"),
                       (bool(options.safe_private), "retain-safe-private")):
        if flag:
            selected.append(name)
    return selected


def basic_action(tag: int) -> str | None:
    """Table E.1-1's Basic Profile action for ``tag`` (None: not listed, kept)."""
    row = TABLE.get(tag)
    if row is not None:
        return row[1]
    for value, mask, action, _name in MASKED:
        if tag & mask == value:
            return action
    return None


def action_for(tag: int, vr: str, selected: Iterable[str]) -> str | None:
    """The action for ``tag`` with the ``selected`` options (an option's column overrides the Basic Profile).

    Under the modified-dates option, DA and DT attributes the table lists without an option column are shifted too
    (the option's intent, E.3.6; the 2020 columns predate attributes added since).
    """
    basic = basic_action(tag)
    if basic is None:
        return None
    columns = TABLE[tag][2] if tag in TABLE else {}
    chosen = [columns[o] for o in selected if o in columns]
    if chosen:
        # K wins over C (full dates keep), C over the basic action.
        return "K" if "K" in chosen else "C"
    if vr in ("DA", "DT") and "retain-longitudinal-modified-dates" in selected:
        return "C"
    if vr in ("DA", "DT", "TM") and "retain-longitudinal-full-dates" in selected:
        return "K"
    return basic


def burned_in_refusal(ds: Dataset) -> str | None:
    """Why ``ds`` may show identifying text in its pixels (None: it says it does not, or has no pixels)."""
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        return None
    burned = str(ds.get("BurnedInAnnotation", "") or "").upper()
    if burned == "YES":
        return "Burned In Annotation is YES"
    if burned == "NO":
        return None
    modality = str(ds.get("Modality", "") or "")
    if modality in BURNS_TEXT_IN or str(ds.get("SOPClassUID", "")).startswith(_SECONDARY_CAPTURE):
        return f"Burned In Annotation is absent and modality {modality or '(none)'} often burns text in"
    return None


class _Walker:
    def __init__(self, source: Dataset, options: Deidentification, keys: PseudonymKeys) -> None:
        self.options = options
        self.selected = _options(options)
        self.keys = keys
        issuer = str(source.get("IssuerOfPatientID", "") or "")
        patient_id = str(source.get("PatientID", "") or "")
        self.patient = keys.patient(patient_id, issuer)
        self.offset = keys.date_offset_days(patient_id, issuer)
        self.uids: dict[str, str] = {}
        self.safe = {(t.group, t.creator.strip(), t.element) for t in options.safe_private}
        self.identifiers = _identifiers(source)

    # -- values ---------------------------------------------------------------------------------------------------
    def uid(self, value: str) -> str:
        if not value or value in UID_dictionary:
            return value
        new = self.keys.uid(value)
        self.uids[new] = value
        return new

    def shift(self, vr: str, value: str) -> str:
        try:
            if vr == "DA":
                return (datetime.strptime(value.strip()[:8], "%Y%m%d").date()
                        + timedelta(days=self.offset)).strftime("%Y%m%d")
            day = datetime.strptime(value.strip()[:8], "%Y%m%d").date() + timedelta(days=self.offset)
            return day.strftime("%Y%m%d") + value.strip()[8:]
        except ValueError:
            return str(_DUMMY[vr])  # not a date pacsflow can shift: a dummy, never the original

    def clean(self, value: str) -> str:
        for ident in self.identifiers:
            value = re.sub(re.escape(ident), "", value, flags=re.IGNORECASE)
        return " ".join(value.split())

    # -- tree ---------------------------------------------------------------------------------------------------
    def dataset(self, ds: Dataset) -> Dataset:
        out = Dataset()
        kept_creators: set[int] = set()
        for tag in ds.keys():
            if tag.is_private:  # decided on the tag: a private value is never decoded just to be dropped
                if self.safe and self._safe_private(ds, ds[tag]):
                    out.add(self._copy(ds[tag]))
                    kept_creators.add((tag.group << 16) | (tag.element >> 8))
                continue
            new = self.element(ds[tag])
            if new is not None:
                out.add(new)
        for creator in kept_creators:  # the Private Creator of each kept block
            if creator in ds:
                out.add(self._copy(ds[creator]))
        return out

    def _safe_private(self, ds: Dataset, elem: DataElement) -> bool:
        if not self.safe or elem.tag.element < 0x1000:
            return False
        creator_tag = (elem.tag.group << 16) | (elem.tag.element >> 8)
        if creator_tag not in ds:
            return False
        return (elem.tag.group, str(ds[creator_tag].value).strip(), elem.tag.element & 0xFF) in self.safe

    @staticmethod
    def _copy(elem: DataElement) -> DataElement:
        return DataElement(elem.tag, elem.VR, elem.value, is_undefined_length=elem.is_undefined_length)

    def element(self, elem: DataElement) -> DataElement | None:
        tag, vr = int(elem.tag), elem.VR
        action = action_for(tag, vr, self.selected)
        if action is None:  # not in Table E.1-1: kept, but instance UIDs are remapped wherever they are
            if vr == "SQ":
                return DataElement(tag, vr, Sequence([self.dataset(item) for item in elem.value]))
            if vr == "UI" and tag not in _KEEP_UIDS:
                return DataElement(tag, vr, self._map_uids(elem))
            return self._copy(elem)
        if action == "K":
            if vr == "SQ":
                return DataElement(tag, vr, Sequence([self.dataset(item) for item in elem.value]))
            return self._copy(elem)
        if action == "X":
            return None
        if action in ("Z", "X/Z"):
            return self._pseudonym(tag, vr) or DataElement(tag, vr, Sequence() if vr == "SQ" else None)
        if action == "U" or (vr == "UI" and action != "C"):
            return DataElement(tag, vr, self._map_uids(elem)) if vr == "UI" else DataElement(tag, vr, None)
        if action == "C":
            return self._clean(elem)
        # D and compound actions that allow a dummy (X/D, Z/D, X/Z/D), and X/Z/U* on sequences.
        if vr != "SQ" and elem.is_empty:
            return DataElement(tag, vr, None)  # an empty value reveals nothing; a dummy would invent one
        if vr == "SQ":
            return DataElement(tag, vr, Sequence([self.dataset(item) for item in elem.value]))
        pseudonym = self._pseudonym(tag, vr)
        if pseudonym is not None:
            return pseudonym
        if vr in _BINARY_VRS:
            return DataElement(tag, vr, b"\x00\x00")
        return DataElement(tag, vr, _DUMMY.get(vr, "ANONYMIZED"))

    def _pseudonym(self, tag: int, vr: str) -> DataElement | None:
        if tag in (0x00100010, 0x00100020):  # Patient's Name, Patient ID
            return DataElement(tag, vr, self.patient)
        return None

    def _map_uids(self, elem: DataElement) -> object:
        if elem.VM > 1:
            return [self.uid(str(v)) for v in elem.value]
        return self.uid(str(elem.value)) if elem.value else elem.value

    def _clean(self, elem: DataElement) -> DataElement | None:
        tag, vr = int(elem.tag), elem.VR
        if vr == "SQ":
            return DataElement(tag, vr, Sequence([self.dataset(item) for item in elem.value]))
        if vr in ("DA", "DT"):
            if "retain-longitudinal-modified-dates" not in self.selected:
                return DataElement(tag, vr, _DUMMY[vr])
            values = elem.value if elem.VM > 1 else [elem.value]
            shifted = [self.shift(vr, str(v)) for v in values if v]
            return DataElement(tag, vr, shifted if len(shifted) > 1 else (shifted[0] if shifted else None))
        if vr == "TM" or vr in _BINARY_VRS:
            return self._copy(elem)  # whole-day shifts keep the time of day
        if vr in ("LO", "SH", "LT", "ST", "UT", "UC", "PN", "CS"):
            values = elem.value if elem.VM > 1 else [elem.value]
            cleaned = [self.clean(str(v)) for v in values if v is not None]
            return DataElement(tag, vr, cleaned if len(cleaned) > 1 else (cleaned[0] if cleaned else None))
        return self._copy(elem)


def _identifiers(ds: Dataset) -> list[str]:
    """The instance's own identifying strings that Clean Descriptors takes out of free text (longest first)."""
    found: set[str] = set()
    for keyword in ("PatientName", "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName",
                    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy"):
        value = ds.get(keyword)
        for name in (value if isinstance(value, list | tuple) else [value]):
            if name:  # the whole name first (longest first), then each part
                found.add(str(name).strip())
                found.update(p for p in re.split(r"[\^= ,]+", str(name)) if len(p) >= 2)
    for keyword in ("PatientID", "AccessionNumber", "StudyID", "PatientBirthDate", "OtherPatientIDs",
                    "RequestedProcedureID", "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator"):
        value = ds.get(keyword)
        for item in (value if isinstance(value, list | tuple) else [value]):
            if item and len(str(item).strip()) >= 2:
                found.add(str(item).strip())
    birth = str(ds.get("PatientBirthDate", "") or "")
    if len(birth) == 8:  # the usual spellings of a birth date in free text
        try:
            born = date(int(birth[:4]), int(birth[4:6]), int(birth[6:]))
            found.update({born.isoformat(), born.strftime("%d.%m.%Y"), born.strftime("%d/%m/%Y"),
                          born.strftime("%m/%d/%Y")})
        except ValueError:
            pass
    return sorted(found, key=len, reverse=True)


def deidentify(ds: Dataset, options: Deidentification, keys: PseudonymKeys) -> Deidentified:
    """De-identify one instance per PS3.15 Annex E with ``options``; ``ds`` itself is not changed.

    Parameters
    ----------
    ds
        The instance as received (with or without file meta).
    options
        The use case's Annex E options.
    keys
        Keyed pseudonyms: the same study always gets the same UIDs, patient pseudonym and date shift.

    Returns
    -------
    Deidentified
        The new data set (with file meta) and the pseudonym -> original UIDs and identity re-identification needs.

    Raises
    ------
    BurnedInAnnotationError
        The image may carry burned-in text and ``options.allowBurnedInAnnotation`` is false.
    DeidentificationError
        The instance has no Study Instance UID.
    """
    if not options.allow_burned_in_annotation:
        reason = burned_in_refusal(ds)
        if reason is not None:
            raise BurnedInAnnotationError(
                f"not sent to the external AI: {reason}; allow it with deidentification.allowBurnedInAnnotation "
                "only if the images are known to carry no identifying text")
    study_uid = str(ds.get("StudyInstanceUID", "") or "")
    if not study_uid:
        raise DeidentificationError("the instance has no Study Instance UID; it cannot be pseudonymised")
    walker = _Walker(ds, options, keys)
    out = walker.dataset(ds)
    selected = walker.selected
    out.PatientIdentityRemoved = "YES"
    method = [codes.DCM.BasicApplicationConfidentialityProfile] + [_OPTION_CODES[o] for o in selected]
    out.DeidentificationMethod = [c.meaning for c in method]  # LO, VM 1-n: one value per profile and option
    out.DeidentificationMethodCodeSequence = Sequence([_code(c) for c in method])
    out.LongitudinalTemporalInformationModified = {
        "modified-dates": "MODIFIED", "full-dates": "UNMODIFIED", "off": "REMOVED"}[
        options.retain_longitudinal_temporal_information]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = out.get("SOPInstanceUID", "")
    source_meta = getattr(ds, "file_meta", None)
    meta.TransferSyntaxUID = UID((source_meta.get("TransferSyntaxUID") if source_meta is not None else None)
                                 or "1.2.840.10008.1.2.1")
    out.file_meta = meta
    identity = Dataset()
    for keyword in REIDENTIFY_KEYWORDS:
        if keyword in ds:
            identity.add(ds[keyword])
    return Deidentified(dataset=out, study_pseudonym=str(out.StudyInstanceUID), original_study_uid=study_uid,
                        uids=walker.uids, identity=identity, date_offset_days=walker.offset)


def _code(code: object) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value  # type: ignore[attr-defined]
    item.CodingSchemeDesignator = code.scheme_designator  # type: ignore[attr-defined]
    item.CodeMeaning = code.meaning  # type: ignore[attr-defined]
    return item
