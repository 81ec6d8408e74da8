"""AI results as DICOM: one TID 1500 Measurement Report (Comprehensive 3D SR) per study and use case.

Shape of the content tree (PS3.16 TID 1500, built with highdicom so the objects are valid once constructed)::

    CONTAINER "Imaging Measurement Report" (TID 1500)
      HAS CONCEPT MOD  Language of Content (TID 1204)
      HAS OBS CONTEXT  Device observer (TID 1004): device UID, name, manufacturer "pacsflow", model name
      HAS CONCEPT MOD  Procedure Reported
      CONTAINS         Image Library (TID 1600): the source image the finding points at
      CONTAINS         Imaging Measurements
        CONTAINS       Measurement Group (TID 1501)
          Tracking Identifier / Tracking Unique Identifier (deterministic per study + use case + model version)
          Finding = <coded finding type>               e.g. SCT 1386000 "Intracranial hemorrhage"
          Algorithm Name / Algorithm Version (TID 4019, IHE AIR algorithm identification)
          NUM "Probability" (DCM 122157), unit UCUM "1" (no units)                     (TID 300)
            INFERRED FROM SCOORD   POINT (column, row) on the source image              [positive only]
            INFERRED FROM SCOORD3D POINT (x, y, z) mm in the frame of reference         [positive only]
          CODE "Presence of property" (DCM 121052) = "Present" (121053) | "Absent" (121054)

Negative studies get a report of the same shape (a reader, and an auditor, must be able to tell "the AI looked
and found nothing" from "the AI never ran"): the finding type is stated, presence is "Absent", the probability is
the model's study-level probability, and no location is given, because the most suspicious slice of a negative
study is not a finding and a point on it would be drawn by viewers as if it were one. This is the TID 1501 "no
region" group rather than TID 1410: the location is a property of the measurement (TID 300 "INFERRED FROM"
coordinates, the form OHIF itself writes and renders), which lets one group carry both the 2D image point and
the 3D patient point.

The SR's Series and SOP Instance UIDs are derived from (study, use case, model name, model version), so
regenerating the report for the same study (after a crash, a retry) yields the same instance, which the outbox
and the PACS treat as the same object. The Device UID (observer context and Contributing Equipment) is derived
from (model name, model version) so it changes exactly when the model does (IHE AIR).
"""

from __future__ import annotations

from typing import TypeGuard

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from ..config import UseCase
from ..domain import Series, Study, StudyResult

MANUFACTURER = "pacsflow"

# SNOMED CT 1386000 |Intracranial hemorrhage (disorder)| (SNOMED CT International edition). The model is
# trained to detect hyperdense intracranial blood of any compartment, which is this concept, not a child of it.
INTRACRANIAL_HEMORRHAGE = Code("1386000", "SCT", "Intracranial hemorrhage")
# DCM 122157 "Probability" (PS3.16 Annex D); the unit is UCUM "1" ("no units", CID 7181) because a
# probability is a dimensionless ratio in [0, 1].
PROBABILITY = codes.DCM.Probability
NO_UNITS = codes.UCUM.NoUnits
# DCM 121052 "Presence of property" with DCM 121053 "Present" / 121054 "Absent" (PS3.16 Annex D).
PRESENCE = codes.DCM.PresenceOfProperty
PRESENT = codes.DCM.Present
ABSENT = codes.DCM.Absent
# Procedure Reported (TID 1500 row 3, CID 100 is extensible): SCT 303653007 "Computed tomography of head",
# SCT 77477000 "Computed tomography", SCT 363679005 "Imaging".
CT_HEAD = Code("303653007", "SCT", "Computed tomography of head")
CT = Code("77477000", "SCT", "Computed tomography")
IMAGING = Code("363679005", "SCT", "Imaging")

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
    return header is not None and all(header.get(k) not in (None, "") for k in _LIBRARY_GEOMETRY)


def sr_uids(study_uid: str, use_case: str, model_name: str, model_version: int) -> tuple[str, str]:
    """Deterministic (SeriesInstanceUID, SOPInstanceUID) of the SR for one study, use case and model version.

    The same inputs always give the same UIDs, so a regenerated report is the same DICOM instance.
    """
    parts = [study_uid, use_case, model_name, str(model_version)]
    return (generate_uid(entropy_srcs=["pacsflow-sr-series", *parts]),
            generate_uid(entropy_srcs=["pacsflow-sr-instance", *parts]))


def device_uid(model_name: str, model_version: int) -> str:
    """Device UID of the AI algorithm: changes with the model version, stable otherwise (IHE AIR)."""
    return generate_uid(entropy_srcs=["pacsflow-device", model_name, str(model_version)])


def _series_of(study: Study, series_uid: str) -> Series:
    for series in study.series:
        if series.series_uid == series_uid:
            return series
    raise ValueError("the finding refers to a series that is not part of the study")


def _procedure(series: Series) -> Code:
    if series.modality == "CT":
        head = series.body_part.upper() in ("HEAD", "BRAIN", "SKULL")
        return CT_HEAD if head else CT
    return IMAGING


def _evidence(study: Study, series: Series) -> list[Dataset]:
    """The source instances, first one carrying complete patient/study modules for highdicom to copy."""
    headers = [s.header for s in series.slices] or [study.first_header]
    first = Dataset()
    first.update(headers[0])
    for keyword in _TYPE2_COPIED:
        if keyword not in first:
            setattr(first, keyword, None)
    return [first, *headers[1:]]


def build_sr(
    study: Study,
    result: StudyResult,
    use_case: UseCase,
    *,
    software_version: str,
    finding_type: Code = INTRACRANIAL_HEMORRHAGE,
    decision_threshold: float = 0.5,
) -> Dataset:
    """Build the TID 1500 Comprehensive 3D SR that reports one use case's result on one study.

    Parameters
    ----------
    study : domain.Study
        The loaded study; patient and study modules are copied from its instances.
    result : domain.StudyResult
        The use case's finding (probability, source instance, 2D and 3D location).
    use_case : config.UseCase
        The use case (name, pinned model) the result belongs to.
    software_version : str
        pacsflow's version, written to Software Versions and Contributing Equipment.
    finding_type : pydicom.sr.coding.Code, optional
        Coded finding type the model detects (default SCT 1386000 "Intracranial hemorrhage").
    decision_threshold : float, optional
        Probability at or above which the finding is reported "Present" with its location; below it the
        report says "Absent" (see the module docstring for the shape of a negative report).

    Returns
    -------
    pydicom.Dataset
        A Comprehensive 3D SR instance with deterministic Series/SOP Instance UIDs.

    Raises
    ------
    ValueError
        The finding references a series that is not in ``study``.
    """
    finding = result.finding
    series = _series_of(study, finding.series_uid)
    study_uid = study.ref.study_uid
    model = use_case.model
    series_uid, sop_uid = sr_uids(study_uid, use_case.name, model.name, model.version)
    dev_uid = device_uid(model.name, model.version)
    model_label = f"{model.name} v{model.version}"
    present = finding.probability >= decision_threshold

    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=str(model.version), manufacturer=MANUFACTURER)
    coordinates: list[hd.sr.CoordinatesForMeasurement | hd.sr.CoordinatesForMeasurement3D] = []
    if present:
        coordinates.append(hd.sr.CoordinatesForMeasurement(
            graphic_type=hd.sr.GraphicTypeValues.POINT,
            graphic_data=np.array([finding.pixel_point], dtype=float),
            source_image=hd.sr.SourceImageForRegion(finding.sop_class_uid, finding.sop_instance_uid),
        ))
        # SCOORD3D needs a frame of reference (dsrdump rejects one without); images without one get only 2D.
        if finding.patient_point is not None and finding.frame_of_reference_uid:
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
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=["pacsflow-tracking", study_uid, use_case.name, model.name,
                                           str(model.version)]),
            identifier=f"{use_case.name} finding",
        ),
        finding_type=finding_type,
        algorithm_id=algorithm,
        measurements=[probability],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(PRESENCE, PRESENT if present else ABSENT)],
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=dev_uid, name=model_label, manufacturer_name=MANUFACTURER, model_name=model.name,
        ),
    )
    source = next((s.header for s in series.slices if s.header.SOPInstanceUID == finding.sop_instance_uid), None)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_procedure(series),
        imaging_measurements=[group],
        referenced_images=[source] if _describable(source) else None,
    )
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model_label,
        software_versions=[software_version, f"{model.name} {model.version}"],
        contribution_description=f"AI use case {use_case.name}",
    )
    # Device UID (0018,1002) in the Contributing Equipment item is what IHE AIR uses to tell model versions
    # apart; highdicom has no parameter for it.
    equipment.DeviceUID = dev_uid
    sr = hd.sr.Comprehensive3DSR(
        evidence=_evidence(study, series),
        content=report,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model_label,
        software_versions=software_version,
        series_description=f"AI result {use_case.name}"[:64],
        is_complete=True,
        contributing_equipment=[equipment],
    )
    return sr
