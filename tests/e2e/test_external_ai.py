"""De-identification for an external AI, end to end, with a second pacsflow router playing the vendor.

    storescu --> hospital router --(de-identified, Annex E)--> vendor Orthanc --(Lua forward)--> vendor router
    hospital PACS (Orthanc) <--(re-identified SR)-- hospital router results port <--(SR, pseudonymous)--'

The vendor's Orthanc holds exactly what left the hospital: its REST API and its stored files are searched for every
original identifying value. The SR the vendor's router returns reaches the hospital PACS re-identified (original
study, series and instance UIDs, original patient), and passes dciodvfy and dsrdump. An SR about a study the
hospital never sent is refused on the results port and kept.
"""

from __future__ import annotations

import os
from io import BytesIO

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.e2e.conftest import metric_value, wait_for
from tests.peers.dcmtk import storescu
from tests.peers.orthanc import Orthanc, forward_script
from tests.peers.router import free_port, use_case
from tests.peers.srcheck import check_sr

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEOUT = 240
RESULTS_AE = "PACSFLOW_RESULTS"
VENDOR_AE = "VENDOR_AI"
OPTIONS = {"retainLongitudinalTemporalInformation": "modified-dates", "retainPatientCharacteristics": True,
           "retainDeviceIdentity": True, "cleanDescriptors": True}


def _phi(paths: list) -> tuple[set[str], Dataset]:
    """Every identifying value of the study as sent by the modality (UIDs of every instance included)."""
    values: set[str] = set()
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        values |= {ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID}
    for keyword in ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate", "InstitutionName",
                    "ReferringPhysicianName", "StudyDate"):
        values.add(str(first[keyword].value))
    # Each part of the name too, except "PHANTOM", which the retained Station Name (PHANTOMCT) also spells.
    values |= {part for part in str(first.PatientName).split("^") if len(part) > 3 and part not in first.StationName}
    return {v for v in values if v}, first


def test_external_ai_sees_no_phi_and_its_sr_comes_back_reidentified(pacs, make_router, studies, tmp_path):
    key_file = tmp_path / "deid.key"
    key_file.write_bytes(os.urandom(48))
    results_port, vendor_router_port = free_port(), free_port()
    vendor_pacs = Orthanc(tmp_path / "vendor-orthanc", aet="VENDOR",
                          modalities={"ai": (VENDOR_AE, "127.0.0.1", vendor_router_port)},
                          lua_scripts=[forward_script(tmp_path / "forward.lua", "ai")],
                          config={"DicomScpTimeout": 5}).start()
    try:
        hospital = make_router(
            [{**use_case("ich-external", "assistive"), "external": {"destination": "vendor",
                                                                    "deidentification": OPTIONS}}],
            pacs_port=pacs.dicom_port, name="hospital",
            externalAi={"keyFile": str(key_file), "resultsAeTitle": RESULTS_AE, "resultsPort": results_port,
                        "allowedCallingAETitles": [VENDOR_AE]})
        hospital.config["destinations"].append({"name": "vendor", "aeTitle": "VENDOR", "host": "127.0.0.1",
                                                "port": vendor_pacs.dicom_port, "external": True})
        hospital.write_config(hospital.config)
        vendor = make_router([use_case("vendor-ich", "assistive", destination="hospital")], pacs_port=None,
                             name="vendor", calling=("VENDOR",))
        vendor.config.update(aeTitle=VENDOR_AE, port=vendor_router_port, destinations=[
            {"name": "hospital", "aeTitle": RESULTS_AE, "host": "127.0.0.1", "port": results_port}])
        vendor.write_config(vendor.config)
        hospital.start()
        vendor.start()

        paths, truth = studies(31, lesion=True)
        phi, original = _phi(paths)
        result = storescu(hospital.port, paths)
        assert len(result.acknowledged) == len(paths), result.output[-2000:]

        def reidentified_sr() -> list[Dataset]:
            return [pydicom.dcmread(BytesIO(pacs.instance_file(i)))
                    for i in pacs.instances(modality="SR", study_uid=truth.study_instance_uid)]

        srs = wait_for(reidentified_sr, TIMEOUT, "the vendor's SR, re-identified, in the hospital PACS", vendor)

        # The vendor holds every image, de-identified: no original value in its index or in its stored files.
        stored = vendor_pacs.instances()
        assert len(stored) == len(paths)
        for instance in stored:
            tags = vendor_pacs.instance_tags(instance)
            raw = vendor_pacs.instance_file(instance)
            leaked = {v for v in phi if v in map(str, tags.values()) or v.encode() in raw}
            assert not leaked, f"original values at the vendor: {sorted(leaked)}"
            assert tags["PatientIdentityRemoved"] == "YES"
            assert tags["PatientSex"] == original.PatientSex  # Retain Patient Characteristics
            assert tags["StudyDate"] != original.StudyDate  # shifted, not removed (modified dates)
        assert vendor_pacs.statistics()["CountStudies"] == 1

        # The hospital PACS gets the vendor's SR about the original study and patient, valid.
        (sr,) = srs
        assert sr.PatientName == original.PatientName and sr.PatientID == original.PatientID
        assert sr.AccessionNumber == original.AccessionNumber and sr.StudyDate == original.StudyDate
        assert "PatientIdentityRemoved" not in sr
        evidence = {ref.ReferencedSOPInstanceUID
                    for study in sr.CurrentRequestedProcedureEvidenceSequence
                    for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}
        assert evidence == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
        path = tmp_path / "reidentified-sr.dcm"
        sr.save_as(path)
        check = check_sr(path)
        assert check.errors == [], check.errors
        assert metric_value(hospital, "pacsflow_deidentified_instances_total", use_case="ich-external",
                            outcome="sent") == len(paths)
        assert metric_value(hospital, "pacsflow_reidentified_results_total", outcome="reidentified") == 1

        # An SR about a study the hospital never sent out: refused on the results port, kept, not forwarded.
        stranger = pydicom.dcmread(BytesIO(raw))
        stranger.StudyInstanceUID = generate_uid()
        stranger.SOPInstanceUID = generate_uid()
        stranger.file_meta.MediaStorageSOPInstanceUID = stranger.SOPInstanceUID
        stray = tmp_path / "stray.dcm"
        stranger.save_as(stray)
        refused = storescu(results_port, [stray], called=RESULTS_AE, calling=VENDOR_AE)
        assert list(refused.responses.values()) != ["Success"] and refused.responses, refused.output[-1500:]
        kept = list((tmp_path / "hospital" / "spool" / "deid" / "refused").glob("*.dcm"))
        assert len(kept) == 1 and pydicom.dcmread(kept[0]).SOPInstanceUID == stranger.SOPInstanceUID
        assert metric_value(hospital, "pacsflow_reidentified_results_total", outcome="refused") == 1
        assert not pacs.instances(study_uid=stranger.StudyInstanceUID)
        # No patient data in the hospital router's log.
        log_text = hospital.log()
        assert not {v for v in phi if v in log_text}
    finally:
        vendor_pacs.stop()
