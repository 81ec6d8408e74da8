"""AI results as DICOM: one TID 1500 Measurement Report (Comprehensive 3D SR) per study and use case.

Nothing here names a model: the finding type, finding site, procedure reported and the plain-language statements
come from the model's manifest (``model.json``) through :class:`ReportSpec`, which the pipeline builds.

Shape of the content tree (PS3.16 TID 1500, built with highdicom so the objects are valid once constructed)::

    CONTAINER "Imaging Measurement Report" (TID 1500)
      HAS CONCEPT MOD  Language of Content (TID 1204)
      HAS OBS CONTEXT  Device observer (TID 1004): device UID, name, manufacturer "pacsflow", model name
      HAS CONCEPT MOD  Procedure Reported                         (manifest finding.procedure)
      CONTAINS         Image Library (TID 1600): the source image the finding points at
      CONTAINS         Imaging Measurements
        CONTAINS       Measurement Group (TID 1501)
          Tracking Identifier / Tracking Unique Identifier (stable per study + use case + model: kept by amendments)
          Finding = <coded finding type>                          (manifest finding.type)
          Finding Site = <coded anatomic location>                (manifest finding.site, when declared)
          Algorithm Name / Algorithm Version (TID 4019, IHE AIR): the model's own version string
          NUM "Probability" (DCM 122157), unit UCUM "1" (no units)                     (TID 300)
            INFERRED FROM SCOORD   POINT (column, row) on the source image              [positive only]
            INFERRED FROM SCOORD3D POINT (x, y, z) mm in the frame of reference         [positive, volume only]
          CODE "Presence of property" (DCM 121052) = "Present" (121053) | "Absent" (121054)
          CODE "Priority" (SCT 260870009) = "ACR Category 1 Actionable Finding" (RADLEX RID49480)  [critical only]
          TEXT "Impression" (DCM 121073) = the manifest's plain-language statement (positive or negative)

Decision and critical flag
--------------------------
"Present" means probability >= the use case's decision threshold (``UseCase.decisionThreshold``, else the
manifest's ``operatingPoint.decisionThreshold``). A critical result is stated in the SR itself, so a reader of the SR
and the worklist see the same thing: the qualitative evaluation "Priority" = RADLEX RID49480 "ACR Category 1
Actionable Finding", the first value of PS3.16 CID 7035 "Actionable Finding Classification" (ACR category 1: needs
attention within minutes, the ACR's "critical result"; IHE Results Distribution uses the same codes). PS3.16 binds
CID 7035 to no concept name inside TID 1501, whose qualitative evaluations take any coded name, so the name is SCT
260870009 "Priority". Critical implies Present: a critical result is never reported "Absent" (:func:`build_sr`
refuses, and the pipeline flags critical only at or above both thresholds).

Negative studies get a report of the same shape (a reader, and an auditor, must be able to tell "the AI looked
and found nothing" from "the AI never ran"): the finding type is stated, presence is "Absent", the probability is
the model's study-level probability, and no location is given, because the most suspicious slice of a negative
study is not a finding and a point on it would be drawn by viewers as if it were one. This is the TID 1501 "no
region" group rather than TID 1410: the location is a property of the measurement (TID 300 "INFERRED FROM"
coordinates, the form OHIF itself writes and renders), which lets one group carry both the 2D image point and
the 3D patient point. A model whose manifest declares ``output.geometry: image`` (one 2D radiograph) gets SCOORD
only; so does any source image without a frame of reference.

UIDs and amendments
-------------------
The SR's Series and SOP Instance UIDs are derived from everything that determines its content (:func:`sr_uids`:
study, use case, model name and version, decision threshold, critical threshold, mode, and the set of analysed
instances), so regenerating the report for the same input (after a crash, a retry) yields the same instance, which
the outbox and the PACS treat as the same object, while a changed threshold or a late instance gives a new one. An
amended SR (the series changed after the first result) names the first in the Predecessor Documents Sequence and
keeps its Tracking Unique Identifier. The Device UID (observer context and Contributing Equipment) is derived
from (model name, model version) so it changes exactly when the model does (IHE AIR).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeGuard

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import DT

from ..config import UseCase
from ..domain import Finding, Series, Study, StudyResult
from .patient_modules import (
    UTF8,
    fitting_character_set,
    prepare_first_evidence,
    set_character_set,
    sr_character_set,
)
from .preencode import Preencoded, preencode, ready_to_write

MANUFACTURER = "pacsflow"

# DCM 122157 "Probability" (PS3.16 Annex D); the unit is UCUM "1" ("no units", CID 7181) because a
# probability is a dimensionless ratio in [0, 1].
PROBABILITY = codes.DCM.Probability
NO_UNITS = codes.UCUM.NoUnits
# DCM 121052 "Presence of property" with DCM 121053 "Present" / 121054 "Absent" (PS3.16 Annex D).
PRESENCE = codes.DCM.PresenceOfProperty
PRESENT = codes.DCM.Present
ABSENT = codes.DCM.Absent
# The critical-result statement (module docstring): SCT 260870009 "Priority" = RADLEX RID49480 "ACR Category 1
# Actionable Finding" (PS3.16 CID 7035 "Actionable Finding Classification").
PRIORITY = Code("260870009", "SCT", "Priority")
CRITICAL_FINDING = Code("RID49480", "RADLEX", "ACR Category 1 Actionable Finding")
# DCM 121073 "Impression": the plain-language statement a viewer shows next to the coded result.
IMPRESSION = codes.DCM.Impression
CRITICAL_SENTENCE = "Critical result: flagged for immediate attention (triage threshold reached)."

SR_SERIES_NUMBER = 9001
# Type 2 attributes of the Patient / General Study modules that highdicom reads from the first evidence dataset;
# sources that omit them still get a valid SR (the attribute present, empty).
_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
    "StudyTime", "ReferringPhysicianName",
)


# What highdicom's Image Library entry (TID 1602) reads from a cross-sectional image; it raises when one is missing.
_LIBRARY_GEOMETRY = ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness")


def _describable(header: Dataset | None) -> TypeGuard[Dataset]:
    """Whether the source image can get an Image Library entry (TID 1600).

    Senders do omit Type 2 geometry (an empty or absent SliceThickness is common on reformats); the report must
    still be written, so such an image is referenced only by the finding's coordinates and the evidence sequence.
    """
    # A frame of a multi-frame image is not described by the instance-level entry highdicom writes (its
    # descriptors would give one frame's position for the whole instance): the SCOORD names the frame instead.
    return (header is not None and all(header.get(k) not in (None, "") for k in _LIBRARY_GEOMETRY)
            and "NumberOfFrames" not in header)


@dataclass(frozen=True)
class ReportSpec:
    """What the SR says about one use case's result, taken from the model's manifest by the pipeline.

    Nothing in this module names a model; every coded concept and sentence a reader sees comes from here.
    """

    finding_type: Code
    """Finding (TID 1501), e.g. the manifest's ``finding.type``."""
    procedure: Code
    """Procedure Reported (TID 1500)."""
    present_statement: str
    """Plain-language statement of a positive result (TEXT "Impression")."""
    absent_statement: str
    """Plain-language statement of a negative result."""
    finding_site: Code | None = None
    """Finding Site (TID 1501), when the manifest declares one."""
    algorithm_version: str = ""
    """The model's own version string (TID 4019 Algorithm Version); empty: the pinned version number."""
    decision_threshold: float = 0.5
    """Probability at or above which the finding is "Present"."""
    critical_threshold: float | None = None
    """Probability at or above which a triage use case flags the result critical; None outside triage mode."""
    image_only: bool = False
    """The model reports on one 2D image (manifest ``output.geometry: image``): SCOORD only, never SCOORD3D."""


@dataclass(frozen=True)
class Predecessor:
    """The SR an amended SR replaces (PS3.3 C.17.2 Predecessor Documents Sequence); our own UIDs, no patient data."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str

    def as_dataset(self) -> Dataset:
        """The four attributes highdicom's ``previous_versions`` reads."""
        ds = Dataset()
        ds.StudyInstanceUID = self.study_uid
        ds.SeriesInstanceUID = self.series_uid
        ds.SOPClassUID = self.sop_class_uid
        ds.SOPInstanceUID = self.sop_instance_uid
        return ds


def analysed_digest(sop_instance_uids: Iterable[str]) -> str:
    """Order-independent digest of the set of analysed instances (what a late instance changes)."""
    return hashlib.sha256("\n".join(sorted(set(sop_instance_uids))).encode("ascii", "replace")).hexdigest()


def report_uids(study_uid: str, use_case: UseCase, spec: ReportSpec, analysed: Iterable[str]) -> tuple[str, str]:
    """The (SeriesInstanceUID, SOPInstanceUID) :func:`build_sr` gives the use case's SR on ``analysed`` instances, known
    before the SR is built (the triage alerts name it and go out first)."""
    model = use_case.model
    return sr_uids(study_uid, use_case.name, model.name, model.version, decision_threshold=spec.decision_threshold,
                   critical_threshold=spec.critical_threshold, mode=use_case.mode,
                   analysed=analysed_digest(list(analysed)))


def sr_uids(
    study_uid: str,
    use_case: str,
    model_name: str,
    model_version: int,
    *,
    decision_threshold: float,
    critical_threshold: float | None,
    mode: str,
    analysed: str,
) -> tuple[str, str]:
    """Deterministic (SeriesInstanceUID, SOPInstanceUID) of one SR.

    Parameters
    ----------
    study_uid, use_case, model_name, model_version
        Which study, use case and pinned model.
    decision_threshold, critical_threshold, mode
        Everything else that changes what the SR says (Present/Absent, the critical statement).
    analysed : str
        :func:`analysed_digest` of the analysed instances: a late instance that changes the series gives new UIDs.

    Returns
    -------
    tuple of str
        The same inputs always give the same UIDs, so a regenerated report is the same DICOM instance.
    """
    critical = "-" if critical_threshold is None else repr(float(critical_threshold))
    parts = [study_uid, use_case, model_name, str(model_version), repr(float(decision_threshold)), critical, mode,
             analysed]
    return (generate_uid(entropy_srcs=["pacsflow-sr-series", *parts]),
            generate_uid(entropy_srcs=["pacsflow-sr-instance", *parts]))


def tracking_uid(study_uid: str, use_case: str, model_name: str) -> str:
    """Tracking Unique Identifier of a use case's finding on a study: the same across thresholds and amendments."""
    return generate_uid(entropy_srcs=["pacsflow-tracking", study_uid, use_case, model_name])


def device_uid(model_name: str, model_version: int) -> str:
    """Device UID of the AI algorithm: changes with the model version, stable otherwise (IHE AIR)."""
    return generate_uid(entropy_srcs=["pacsflow-device", model_name, str(model_version)])


def _series_of(study: Study, series_uid: str) -> Series:
    for series in study.series:
        if series.series_uid == series_uid:
            return series
    raise ValueError("the finding refers to a series that is not part of the study")


# A partial series says so in the SR: TEXT "Comment" (DCM 121106), how many images were analysed of how many and
# which instances were skipped (their SOP Instance UIDs, which the SR may carry; at most this many are listed).
_MAX_SKIPPED_LISTED = 20


def _coverage_item(series: Series) -> hd.sr.TextContentItem | None:
    """The partial-series statement, or None when every expected image was analysed."""
    if series.complete:
        return None
    text = series.coverage() + "."
    listed = [s.sop_instance_uid for s in series.skipped if s.sop_instance_uid][:_MAX_SKIPPED_LISTED]
    if listed:
        more = len(series.skipped) - len(listed)
        text += " Skipped instances: " + ", ".join(listed) + (f" and {more} more." if more > 0 else ".")
    return hd.sr.TextContentItem(name=codes.DCM.Comment, value=text,
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _source_image(finding: Finding) -> hd.sr.SourceImageForRegion:
    """The image a SCOORD lies on; for a frame of a multi-frame instance, that frame (Referenced Frame Number)."""
    frames = [finding.frame_number] if finding.frame_number is not None else None
    return hd.sr.SourceImageForRegion(finding.sop_class_uid, finding.sop_instance_uid,
                                      referenced_frame_numbers=frames)


def _evidence(study: Study, series: Series) -> list[Dataset]:
    """The source instances, first one carrying complete patient/study modules for highdicom to copy."""
    # One entry per instance: the frames of a multi-frame instance share its SOP Instance UID.
    unique = {str(h.SOPInstanceUID): h for h in (s.header for s in series.slices)}
    headers = list(unique.values()) or [study.first_header]
    first = Dataset()
    first.update(headers[0])
    for keyword in _TYPE2_COPIED:
        if keyword not in first:
            setattr(first, keyword, None)
    # Character set highdicom accepts, de-identification attributes made valid (patient_modules docstring).
    prepare_first_evidence(first)
    return [first, *headers[1:]]


@dataclass
class SrDraft:
    """An SR with everything but the result in it: :func:`draft_sr`'s output, :func:`complete_sr`'s input (once).

    The finding-independent part of the document (patient and study modules copied from the evidence, the evidence
    sequences, UIDs, Contributing Equipment, the predecessor) is most of what building an SR costs, so the pipeline
    drafts it while the model runs and completes it with the result afterwards.
    """

    sr: hd.sr.Comprehensive3DSR
    series_uid: str
    """The analysed series: the finding must be on it."""
    evidence_uids: frozenset[str]
    device_uid: str
    placeholder_tags: tuple[int, ...]
    """Root content attributes of the placeholder content, replaced by the result's."""
    character_set: tuple[str, ...] = ()
    """The Specific Character Set terms the draft's text fits in (the source's, else UTF-8)."""
    preencoded: Preencoded | None = None
    """The draft's attributes already encoded (:mod:`.preencode`)."""


def draft_sr(
    study: Study,
    series: Series,
    use_case: UseCase,
    *,
    software_version: str,
    spec: ReportSpec,
    analysed: Iterable[str] | None = None,
    predecessor: Predecessor | None = None,
) -> SrDraft:
    """The part of a use case's SR that does not depend on the result (first half of :func:`build_sr`).

    Parameters are :func:`build_sr`'s, with ``series`` the series the model analyses (the result's).
    """
    study_uid = study.ref.study_uid
    model = use_case.model
    if analysed is None:
        analysed = [str(s.header.SOPInstanceUID) for s in series.slices]
    series_uid, sop_uid = report_uids(study_uid, use_case, spec, analysed)
    dev_uid = device_uid(model.name, model.version)
    model_label = f"{model.name} v{model.version}"
    algorithm_version = spec.algorithm_version or str(model.version)
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model_label,
        software_versions=[software_version, f"{model.name} {algorithm_version}"],
        contribution_datetime=dt.datetime.now(dt.UTC),  # the result's time, set by complete_sr
        contribution_description=f"AI use case {use_case.name}",
    )
    # Device UID (0018,1002) in the Contributing Equipment item is what IHE AIR uses to tell model versions
    # apart; highdicom has no parameter for it.
    equipment.DeviceUID = dev_uid
    # A root container without children stands in for the result: every reference the result can make is to an
    # instance of the analysed series, which is evidence of the same study, and highdicom sorts evidence into the
    # Current Requested Procedure Evidence by study alone, so the evidence does not depend on the content.
    placeholder = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport, template_id="1500")
    placeholder.ContentSequence = hd.sr.ContentSequence([hd.sr.TextContentItem(  # highdicom wants one child
        name=codes.DCM.Comment, value="-", relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)])
    evidence = _evidence(study, series)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=placeholder,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model_label,
        software_versions=software_version,
        series_description=f"AI result {use_case.name}"[:64],
        is_complete=True,
        previous_versions=[predecessor.as_dataset()] if predecessor is not None else None,
        contributing_equipment=[equipment],
    )
    # The character set the draft's text fits in, then the draft's attributes encoded in it (results/preencode.py):
    # this runs while the model does, so writing the completed SR encodes only the result.
    terms = fitting_character_set(sr, sr_character_set(_charset_source(study, series)))
    set_character_set(sr, terms)
    placeholder_tags = tuple(int(tag) for tag in placeholder.keys())
    return SrDraft(sr=sr, series_uid=series.series_uid, evidence_uids=frozenset(str(e.SOPInstanceUID) for e in evidence),
                   device_uid=dev_uid, placeholder_tags=placeholder_tags, character_set=tuple(terms),
                   preencoded=preencode(sr, changing=placeholder_tags))


def _charset_source(study: Study, series: Series) -> Dataset:
    """The header whose Specific Character Set the SR follows (:func:`.patient_modules.sr_character_set`)."""
    return series.slices[0].header if series.slices else study.first_header


def complete_sr(
    draft: SrDraft,
    study: Study,
    result: StudyResult,
    use_case: UseCase,
    *,
    spec: ReportSpec,
    contribution_datetime: dt.datetime | None = None,
) -> Dataset:
    """Put the result into a drafted SR (second half of :func:`build_sr`); the draft is used up.

    Raises
    ------
    ValueError
        The finding is not on the drafted series, or it is flagged critical below the decision threshold.
    """
    finding = result.finding
    series = _series_of(study, finding.series_uid)
    if finding.series_uid != draft.series_uid:
        raise ValueError("the finding refers to another series than the one the SR was drafted for")
    model = use_case.model
    present = finding.probability >= spec.decision_threshold
    if result.critical and not present:
        raise ValueError(f"a critical result must be Present: probability {finding.probability:.3f} is below the "
                         f"decision threshold {spec.decision_threshold}; the critical threshold must not be lower")
    if str(finding.sop_instance_uid) not in draft.evidence_uids:
        raise ValueError("the finding's source image is not among the SR's evidence (the analysed series)")
    study_uid = study.ref.study_uid
    model_label = f"{model.name} v{model.version}"
    algorithm_version = spec.algorithm_version or str(model.version)
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=algorithm_version, manufacturer=MANUFACTURER)
    coordinates: list[hd.sr.CoordinatesForMeasurement | hd.sr.CoordinatesForMeasurement3D] = []
    if present:
        coordinates.append(hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POINT,
            graphic_data=np.array([finding.pixel_point], dtype=float),
            source_image=_source_image(finding),
        ))
        # SCOORD3D needs a frame of reference (dsrdump rejects one without); images without one get only 2D, and so
        # does a model that reports on one 2D image (a radiograph's "patient point" has no meaning).
        if not spec.image_only and finding.patient_point is not None and finding.frame_of_reference_uid:
            coordinates.append(hd.sr.CoordinatesForMeasurement3D(
                graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                graphic_data=np.array([finding.patient_point], dtype=float),
                frame_of_reference_uid=finding.frame_of_reference_uid,
            ))
    probability = hd.sr.Measurement(
        name=PROBABILITY,
        value=round(float(finding.probability), 6),
        unit=NO_UNITS,
        algorithm_id=algorithm,
        referenced_coordinates=coordinates or None,
    )
    evaluations = [hd.sr.QualitativeEvaluation(PRESENCE, PRESENT if present else ABSENT)]
    if result.critical:
        evaluations.append(hd.sr.QualitativeEvaluation(PRIORITY, CRITICAL_FINDING))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=tracking_uid(study_uid, use_case.name, model.name),
            identifier=f"{use_case.name} finding",
        ),
        finding_type=spec.finding_type,
        finding_sites=[hd.sr.FindingSite(spec.finding_site)] if spec.finding_site is not None else None,
        algorithm_id=algorithm,
        measurements=[probability],
        qualitative_evaluations=evaluations,
    )
    statement = spec.present_statement if present else spec.absent_statement
    if result.critical:
        statement = f"{statement} {CRITICAL_SENTENCE}"
    # TID 1501 allows TEXT qualitative evaluations; highdicom's class takes only CODE ones, so the item is appended
    # to the group's content. TEXT values are UT (unlimited) but viewers show short sentences best.
    group[0].ContentSequence.append(hd.sr.TextContentItem(
        name=IMPRESSION, value=statement, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    ))
    coverage = _coverage_item(series)
    if coverage is not None:
        group[0].ContentSequence.append(coverage)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=draft.device_uid, name=model_label, manufacturer_name=MANUFACTURER, model_name=model.name,
        ),
    )
    source = next((s.header for s in series.slices if s.header.SOPInstanceUID == finding.sop_instance_uid), None)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=spec.procedure,
        imaging_measurements=[group],
        referenced_images=[source] if _describable(source) else None,
    )
    sr = draft.sr
    # What highdicom's SR constructor does with its content (highdicom 0.28 SR.__init__): the root item's attributes
    # on the data set, in place of the placeholder's, and the content items behind ``sr.content``. highdicom parses a
    # deep copy there, to be safe from a caller changing the content later; this content is built here, already of
    # highdicom's item classes, and never changed again, so it is used as it is (a third of the SR's cost saved).
    content = report[0]
    assert isinstance(content, hd.sr.ContentItem)  # MeasurementReport holds highdicom items
    for tag in draft.placeholder_tags:
        if tag in sr:
            del sr[tag]
    sr._content = hd.sr.ContentSequence([content], is_root=True)  # noqa: SLF001 - where highdicom keeps it
    for tag, value in content.items():
        sr[tag] = value
    when = contribution_datetime or dt.datetime.now(dt.UTC)
    for item in sr.ContributingEquipmentSequence:
        if item.get("DeviceUID") == draft.device_uid:
            item.ContributionDateTime = DT(when)
    # The draft's text fits draft.character_set; the whole SR does when the result's text does too, else UTF-8 (what
    # patient_modules.apply_character_set decides on the whole SR, without reading the pre-encoded draft again).
    terms = fitting_character_set(content, draft.character_set) if draft.character_set != (UTF8,) else [UTF8]
    set_character_set(sr, terms)
    if draft.preencoded is not None:
        ready_to_write(sr, draft.preencoded)
    return sr


def build_sr(
    study: Study,
    result: StudyResult,
    use_case: UseCase,
    *,
    software_version: str,
    spec: ReportSpec,
    analysed: Iterable[str] | None = None,
    predecessor: Predecessor | None = None,
    contribution_datetime: dt.datetime | None = None,
) -> Dataset:
    """Build the TID 1500 Comprehensive 3D SR that reports one use case's result on one study.

    The same as :func:`draft_sr` then :func:`complete_sr`, which the pipeline calls apart (the draft while the model
    runs).

    Parameters
    ----------
    study : domain.Study
        The loaded study; patient and study modules are copied from its instances.
    result : domain.StudyResult
        The use case's finding (probability, source instance, 2D and 3D location) and critical flag.
    use_case : config.UseCase
        The use case (name, mode, pinned model) the result belongs to.
    software_version : str
        pacsflow's version, written to Software Versions and Contributing Equipment.
    spec : ReportSpec
        Codes, statements, the model's version string and the thresholds (from the model's manifest).
    analysed : iterable of str, optional
        SOP Instance UIDs of the analysed instances (default: every slice of the finding's series); they enter
        the SR's UIDs, so a late instance that changes the series gives a new SR.
    predecessor : Predecessor, optional
        The SR this one amends (Predecessor Documents Sequence); the Tracking UID stays the same.
    contribution_datetime : datetime.datetime, optional
        When the algorithm produced the result (Contributing Equipment); default now.

    Returns
    -------
    pydicom.Dataset
        A Comprehensive 3D SR instance with deterministic Series/SOP Instance UIDs.

    Raises
    ------
    ValueError
        The finding references a series that is not in ``study``, or the result is flagged critical below the
        decision threshold (the SR would say "Absent" while the worklist says critical).
    """
    series = _series_of(study, result.finding.series_uid)
    draft = draft_sr(study, series, use_case, software_version=software_version, spec=spec, analysed=analysed,
                     predecessor=predecessor)
    return complete_sr(draft, study, result, use_case, spec=spec, contribution_datetime=contribution_datetime)
