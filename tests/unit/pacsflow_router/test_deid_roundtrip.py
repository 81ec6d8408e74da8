"""De-identification (deid/annex_e.py) and re-identification through the encrypted pseudonym map (deid/pseudonyms.py)
on real files: pydicom's test files and pydicom-data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from pacsflow_router.config import Deidentification, SafePrivateTag
from pacsflow_router.deid.annex_e import BurnedInAnnotationError, PseudonymKeys, deidentify
from pacsflow_router.deid.pseudonyms import PseudonymMapError, PseudonymStore
from pacsflow_router.deid.reidentify import UnknownPseudonymError, reidentify

SECRET = b"0123456789abcdef0123456789abcdef-test-only"


@pytest.fixture
def store(tmp_path: Path) -> PseudonymStore:
    return PseudonymStore(tmp_path / "pseudonyms.db", SECRET)


def ct() -> Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def test_same_study_same_pseudonyms_every_time_and_another_key_differs(store: PseudonymStore) -> None:
    a = deidentify(ct(), Deidentification(), store.keys)
    b = deidentify(ct(), Deidentification(), store.keys)
    other = deidentify(ct(), Deidentification(), PseudonymKeys(b"another key" * 4))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "PatientID"):
        assert a.dataset[keyword].value == b.dataset[keyword].value != ct()[keyword].value
        assert other.dataset[keyword].value != a.dataset[keyword].value
    assert a.dataset.StudyInstanceUID.startswith("2.25.")
    assert a.dataset.file_meta.MediaStorageSOPInstanceUID == a.dataset.SOPInstanceUID


def test_marks_and_cid_7050_codes() -> None:
    options = Deidentification(retain_longitudinal_temporal_information="modified-dates",
                               retain_patient_characteristics=True, clean_descriptors=True)
    out = deidentify(ct(), options, PseudonymKeys(SECRET)).dataset
    assert out.PatientIdentityRemoved == "YES"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107", "113108", "113105"]
    assert {c.CodingSchemeDesignator for c in out.DeidentificationMethodCodeSequence} == {"DCM"}
    assert list(out.DeidentificationMethod)[0] == "Basic Application Confidentiality Profile"
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"


def test_options_keep_shift_and_clean() -> None:
    original = ct()
    original.StudyDescription = f"HEAD {original.PatientName} CT {original.PatientID}"
    keys = PseudonymKeys(SECRET)
    basic = deidentify(original, Deidentification(), keys).dataset
    assert "StudyDescription" not in basic and not basic.PatientSex and basic.StationName != original.StationName
    chosen = deidentify(original, Deidentification(
        retain_longitudinal_temporal_information="modified-dates", retain_patient_characteristics=True,
        retain_device_identity=True, clean_descriptors=True), keys)
    out = chosen.dataset
    assert out.PatientSex == original.PatientSex and out.StationName == original.StationName
    assert out.StudyDescription == "HEAD CT"  # the patient's own name and ID taken out of the text
    shift = chosen.date_offset_days
    assert -3650 <= shift <= -30
    from datetime import datetime, timedelta
    expected = (datetime.strptime(original.StudyDate, "%Y%m%d") + timedelta(days=shift)).strftime("%Y%m%d")
    assert out.StudyDate == expected and out.SeriesDate != original.SeriesDate
    full = deidentify(original, Deidentification(retain_longitudinal_temporal_information="full-dates"), keys).dataset
    assert full.StudyDate == original.StudyDate


def test_private_tags_removed_unless_on_the_safe_list() -> None:
    original = ct()
    block = original.private_block(0x0029, "PACSFLOW TEST", create=True)
    block.add_new(0x10, "LO", "safe value")
    block.add_new(0x11, "LO", "unsafe value")
    keys = PseudonymKeys(SECRET)
    out = deidentify(original, Deidentification(), keys).dataset
    assert not any(elem.tag.is_private for elem in out.iterall())
    safe = Deidentification(safe_private=[SafePrivateTag(creator="PACSFLOW TEST", group=0x0029, element=0x10)])
    kept = deidentify(original, safe, keys).dataset
    private = {elem.tag: elem.value for elem in kept if elem.tag.is_private}
    assert "safe value" in private.values() and "unsafe value" not in private.values()
    assert "PACSFLOW TEST" in private.values()  # its Private Creator stays with it
    assert "113111" in [c.CodeValue for c in kept.DeidentificationMethodCodeSequence]


def test_burned_in_annotation_refused_unless_allowed() -> None:
    us = pydicom.dcmread(get_testdata_file("US1_UNCR.dcm"))
    assert "BurnedInAnnotation" not in us
    with pytest.raises(BurnedInAnnotationError, match="modality US"):
        deidentify(us, Deidentification(), PseudonymKeys(SECRET))
    marked = ct()
    marked.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError, match="YES"):
        deidentify(marked, Deidentification(), PseudonymKeys(SECRET))
    assert deidentify(us, Deidentification(allow_burned_in_annotation=True), PseudonymKeys(SECRET)).dataset


def test_result_is_reidentified_with_the_original_study_and_patient(store: PseudonymStore) -> None:
    original = ct()
    sent = deidentify(original, Deidentification(), store.keys)
    store.record(sent, "ich-external")
    # What an external AI returns: its own SR UIDs, the pseudonymous study/patient and a reference to our instance.
    sr = Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    sr.SOPInstanceUID = "2.25.1234"
    sr.SeriesInstanceUID = "2.25.5678"
    for keyword in ("StudyInstanceUID", "PatientName", "PatientID", "PatientIdentityRemoved", "StudyDate"):
        setattr(sr, keyword, sent.dataset[keyword].value)
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = sent.dataset.SOPInstanceUID
    ref.ReferencedSOPClassUID = original.SOPClassUID
    sr.CurrentRequestedProcedureEvidenceSequence = [Dataset()]
    sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSOPSequence = [ref]
    back, study = reidentify(sr, store)
    assert study.use_case == "ich-external" and study.study_uid == original.StudyInstanceUID
    assert back.StudyInstanceUID == original.StudyInstanceUID
    assert back.PatientName == original.PatientName and back.PatientID == original.PatientID
    assert back.StudyDate == original.StudyDate
    assert back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID \
        == original.SOPInstanceUID
    assert back.SOPInstanceUID == "2.25.1234"  # the AI's own object keeps its UID
    assert "PatientIdentityRemoved" not in back


def test_unknown_pseudonym_is_refused(store: PseudonymStore) -> None:
    sr = Dataset()
    sr.StudyInstanceUID = "2.25.99"
    with pytest.raises(UnknownPseudonymError, match="not a pseudonym this router issued"):
        reidentify(sr, store)


def test_map_is_encrypted_at_rest_and_needs_its_key(tmp_path: Path) -> None:
    original = ct()
    first = PseudonymStore(tmp_path / "p.db", SECRET)
    sent = deidentify(original, Deidentification(), first.keys)
    first.record(sent, "uc")
    first.close()
    raw = (tmp_path / "p.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("p.db-*"))
    for value in (original.StudyInstanceUID, str(original.PatientName), original.PatientID, original.SOPInstanceUID):
        assert value.encode() not in raw
    with sqlite3.connect(tmp_path / "p.db") as db:
        assert db.execute("SELECT count(*) FROM uids").fetchone()[0] >= 3
    wrong = PseudonymStore(tmp_path / "p.db", b"x" * 40)
    with pytest.raises(PseudonymMapError, match="key file"):
        wrong.study(sent.study_pseudonym)
    again = PseudonymStore(tmp_path / "p.db", SECRET)
    identity = again.study(sent.study_pseudonym)
    assert identity is not None and identity.study_uid == original.StudyInstanceUID
