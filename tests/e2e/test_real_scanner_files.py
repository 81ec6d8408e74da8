"""Every real scanner CT file available offline, through the running router: what happens to each, and why.

The CT files pydicom ships (and the PyPI package ``pydicom-data``: real scanners, several vendors, one Enhanced CT)
once all came back "Intracranial hemorrhage: Present", flagged critical. Each is sent here with storescu as its own
study (fresh Study/Series/SOP Instance UIDs; pixels and every other attribute untouched) to a real router with a
triage use case, next to a phantom head (analysed: the control) and a constant 1000 HU volume (the input that fooled
the first model). Asserted per file: the audit outcome a user reads, the metric per reason, and no SR in the PACS.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pydicom.config
import pytest
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from pacsflow_router.domain import study_key
from pacsflow_router.results.audit import AuditLog
from tests.e2e.conftest import metric_value, wait_for
from tests.peers.dcmtk import storescu
from tests.peers.dicomfiles import scanner_file
from tests.peers.router import use_case
from tests.unit.pacsflow_router.synthetic_ct import constant_hu, datasets

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BODY_PART_NOT_STATED = "not analysed: body part not stated and no description names it; the model needs BRAIN/HEAD/SKULL"
DERIVED = "not analysed: Image Type is DERIVED/PRIMARY/AXIAL, the model needs ORIGINAL/PRIMARY (missing ORIGINAL)"

# File -> (reason label, audit outcome). Every CT file among pydicom's test files and pydicom-data.
REAL_CT = {
    "CT_small.dcm": ("body-part", BODY_PART_NOT_STATED),  # 1 slice 128x128, contrast, no anatomy stated
    "J2K_pixelrep_mismatch.dcm": ("slice-count", "not analysed: 1 slice, the model needs at least 16"),  # a head
    "693_J2KR.dcm": ("body-part", BODY_PART_NOT_STATED),
    "693_UNCR.dcm": ("body-part", BODY_PART_NOT_STATED),
    "693_J2KI.dcm": ("image-type", DERIVED),  # the lossy copies are marked DERIVED
    "693_UNCI.dcm": ("image-type", DERIVED),
    "bad_sequence.dcm": ("body-part", "not analysed: body part NECK, the model needs BRAIN/HEAD/SKULL"),
    "explicit_VR-UN.dcm": ("body-part", "not analysed: body part PANCREAS, the model needs BRAIN/HEAD/SKULL"),
    "eCT_Supplemental.dcm": ("image-type", "not analysed: Image Type is DERIVED/PRIMARY/PERFUSION, the model needs "
                                           "ORIGINAL/PRIMARY (missing ORIGINAL)"),  # Enhanced CT, 2 frames
}


# storescu's option that proposes a transfer syntax first (dcmtk storescu "-x?" options).
STORESCU_PROPOSE = {
    ExplicitVRLittleEndian: ("-x=",), ImplicitVRLittleEndian: ("-xi",), JPEG2000Lossless: ("-xv",), JPEG2000: ("-xw",),
    RLELossless: ("-xr",), JPEGLSLossless: ("-xt",), JPEGLosslessSV1: ("-xs",),
}


def _as_own_study(ds: pydicom.Dataset, path: Path) -> str:
    """Write ``ds`` with fresh Study/Series/SOP Instance UIDs (several test files share them); its study UID."""
    previous = pydicom.config.settings.writing_validation_mode
    # The files carry their scanners' own value quirks (the reason they are test files; bad_sequence.dcm's UIDs are
    # hex hashes); they are sent as they are, with new UIDs.
    pydicom.config.settings.writing_validation_mode = pydicom.config.WARN
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.StudyInstanceUID = generate_uid()
            ds.SeriesInstanceUID = generate_uid()
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.save_as(path, enforce_file_format=True)
    finally:
        pydicom.config.settings.writing_validation_mode = previous
    return str(ds.StudyInstanceUID)


def _read(path: str) -> pydicom.Dataset:
    previous = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.WARN
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path)
    finally:
        pydicom.config.settings.reading_validation_mode = previous


def test_every_real_ct_file_is_not_analysed_and_says_why(pacs, make_router, tmp_path):
    router = make_router([use_case("ich", "triage", threshold=0.85)], pacs_port=pacs.dicom_port).start()
    sent: dict[str, str] = {}  # name -> study UID
    batches: list[list[Path]] = []  # one association each: storescu offers one transfer syntax per SOP class
    for name in REAL_CT:
        source = scanner_file(name)
        path = tmp_path / f"real-{name}"
        sent[name] = _as_own_study(_read(source), path)
        batches.append([path])
    control = datasets(31, slices=16, rows=512)
    constant = datasets(32, constant_hu(1000.0), slices=16, rows=512)
    for label, dss in (("control", control), ("constant", constant)):
        uid = generate_uid()
        batches.append([])
        for i, ds in enumerate(dss):
            ds.StudyInstanceUID = uid
            path = tmp_path / f"{label}-{i:02d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            batches[-1].append(path)
        sent[label] = uid

    for batch in batches:
        # Propose the file's own transfer syntax first: sent as stored, never decoded on the way.
        ts = pydicom.dcmread(batch[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
        result = storescu(router.port, batch, extra=STORESCU_PROPOSE.get(ts, ()))
        assert sorted(result.acknowledged) == sorted(map(str, batch)), result.output[-3000:]

    def outcomes() -> dict[str, str] | None:
        audit = AuditLog(router.config["audit"]["url"])
        try:
            found = {name: [r["outcome"] for r in audit.records(study_key=study_key(uid))]
                     for name, uid in sent.items()}
        finally:
            audit.close()
        return {k: v[0] for k, v in found.items()} if all(len(v) == 1 for v in found.values()) else None

    seen = wait_for(outcomes, 180, "one audit record per study", router)
    for name, (_reason, outcome) in REAL_CT.items():
        assert seen[name] == outcome, name
    # The control head is analysed and reported; the constant volume that scored 0.997 is out of domain.
    assert seen["control"].startswith("reported"), seen["control"]
    assert seen["constant"] == ("not analysed: out of domain (bone): 100% of the central slices' pixels, the model "
                                "expects 1%-35%")
    wait_for(lambda: pacs.instances(modality="SR", study_uid=sent["control"]), 120, "the control's SR", router)
    for name, uid in sent.items():
        if name != "control":
            assert pacs.instances(modality="SR", study_uid=uid) == [], f"{name} must get no SR"
    expected: dict[str, int] = {"out-of-domain": 1}
    for reason, _ in REAL_CT.values():
        expected[reason] = expected.get(reason, 0) + 1
    for reason, count in expected.items():
        assert metric_value(router, "pacsflow_studies_not_analysed_total", use_case="ich", reason=reason) == count
    assert metric_value(router, "pacsflow_critical_findings_total", use_case="ich") <= 1  # the control at most
