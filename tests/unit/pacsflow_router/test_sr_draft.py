"""The SR drafted while the model runs and completed with its result is the SR highdicom builds in one go."""

from __future__ import annotations

import dataclasses
import datetime as dt

import highdicom as hd
import pytest
from pydicom.dataset import Dataset

from pacsflow_router.results import reports
from pacsflow_router.results.patient_modules import apply_character_set
from pacsflow_router.results.reports import Predecessor, build_sr, complete_sr, draft_sr
from tests.unit.pacsflow_router.test_reports import SPEC, USE_CASE, phantom_study_and_result

# Stamped with the clock at construction by highdicom; everything else must be equal.
_CLOCK = ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime")
_ROOT = ("ValueType", "ConceptNameCodeSequence", "ContinuityOfContent", "ContentTemplateSequence", "ContentSequence")


def _one_go(study, result, sr: Dataset, when: dt.datetime, predecessor: Predecessor | None) -> hd.sr.Comprehensive3DSR:
    """What the pre-draft build_sr did: one highdicom constructor call with the finished content."""
    series = reports._series_of(study, result.finding.series_uid)
    content = Dataset()
    for keyword in _ROOT:
        if keyword in sr:
            content[keyword] = sr[keyword]
    model = USE_CASE.model
    equipment = hd.ContributingEquipment(
        manufacturer=reports.MANUFACTURER, purpose_of_reference=reports.codes.DCM.ProcessingEquipment,
        manufacturer_model_name=f"{model.name} v{model.version}",
        software_versions=["test", f"{model.name} {SPEC.algorithm_version or model.version}"],
        contribution_datetime=when, contribution_description=f"AI use case {USE_CASE.name}")
    equipment.DeviceUID = reports.device_uid(model.name, model.version)
    reference = hd.sr.Comprehensive3DSR(
        evidence=reports._evidence(study, series), content=content, series_instance_uid=sr.SeriesInstanceUID,
        series_number=reports.SR_SERIES_NUMBER, sop_instance_uid=sr.SOPInstanceUID, instance_number=1,
        manufacturer=reports.MANUFACTURER, manufacturer_model_name=f"{model.name} v{model.version}",
        software_versions="test", series_description=f"AI result {USE_CASE.name}"[:64], is_complete=True,
        previous_versions=[predecessor.as_dataset()] if predecessor else None, contributing_equipment=[equipment])
    apply_character_set(reference, series.slices[0].header)
    return reference


@pytest.mark.parametrize(("lesion", "probability", "critical"), [(True, 0.9, False), (False, 0.05, False),
                                                                  (True, 0.95, True)])
def test_drafted_then_completed_is_the_sr_built_in_one_go(lesion, probability, critical):
    study, result = phantom_study_and_result(31, lesion=lesion, probability=probability)
    result = dataclasses.replace(result, critical=critical)
    spec = dataclasses.replace(SPEC, critical_threshold=0.9) if critical else SPEC
    predecessor = Predecessor(study.ref.study_uid, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.3.5") \
        if critical else None
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    draft = draft_sr(study, study.series[0], USE_CASE, software_version="test", spec=spec, predecessor=predecessor)
    sr = complete_sr(draft, study, result, USE_CASE, spec=spec, contribution_datetime=when)
    reference = _one_go(study, result, sr, when, predecessor)
    for ds in (sr, reference):
        for keyword in _CLOCK:
            if keyword in ds:
                del ds[keyword]
        for item in ds.ContributingEquipmentSequence:  # highdicom's own item is stamped with its clock
            if "DeviceUID" not in item and "ContributionDateTime" in item:
                del item.ContributionDateTime
        assert [str(i.ContributionDateTime) for i in ds.ContributingEquipmentSequence if "DeviceUID" in i] == [
            "20260102030405+0000"]
    assert sr == reference
    assert sr.content == reference.content  # highdicom's parsed view of the content too
    again = build_sr(study, result, USE_CASE, software_version="test", spec=spec, predecessor=predecessor,
                     contribution_datetime=when)
    assert again.SOPInstanceUID == sr.SOPInstanceUID and again.ContentSequence == sr.ContentSequence


def test_a_draft_refuses_a_result_on_another_series():
    study, result = phantom_study_and_result(32, lesion=True, probability=0.9)
    draft = draft_sr(study, study.series[0], USE_CASE, software_version="test", spec=SPEC)
    elsewhere = dataclasses.replace(result.finding, sop_instance_uid="1.2.3.999")
    with pytest.raises(ValueError, match="evidence"):
        complete_sr(draft, study, dataclasses.replace(result, finding=elsewhere), USE_CASE, spec=SPEC)
