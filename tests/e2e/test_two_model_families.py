"""Two model families on one router: a head-CT model and a chest-radiograph model, each study to its own model.

The real router (DALI on CPU + embedded ONNX Runtime over the committed model repository) runs two use cases,
one per model folder; nothing in the router names either model. dcmtk's storescu sends a head CT phantom study and
a synthetic chest radiograph (DX, MONOCHROME1, 12 bits, a lateral pneumothorax); a real Orthanc receives the SRs,
which are fetched back and checked with dciodvfy and dsrdump.
"""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest

from pacsflow_router.models import radiograph_phantom as rp
from tests.e2e.conftest import audit_records, wait_for
from tests.peers.dcmtk import storescu
from tests.peers.orthanc import Orthanc
from tests.peers.router import use_case
from tests.peers.srcheck import check_sr

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEOUT = 180
PTX_FINDING = "36118008"  # SCT Pneumothorax, from ptx_detector's model.json
ICH_FINDING = "1386000"  # SCT Intracranial hemorrhage, from ich_detector's model.json


def _srs(pacs: Orthanc, study_uid: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(BytesIO(pacs.instance_file(i))) for i in pacs.instances(modality="SR", study_uid=study_uid)]


def _codes(ds: pydicom.Dataset) -> set[str]:
    """Every code value anywhere in an SR's content tree."""
    found: set[str] = set()

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            for key in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
                for code in item.get(key, []):
                    found.add(str(code.CodeValue))
            walk(item.get("ContentSequence", []))

    walk(ds.get("ContentSequence", []))
    return found


def test_each_study_goes_to_its_own_model(pacs, make_router, studies, tmp_path):
    chest = {"name": "ptx-chest-xr", "model": {"name": "ptx_detector", "version": 1},
             "match": {"modalities": ["DX", "CR"]}, "mode": "assistive",
             "outputs": {"structuredReport": {"destination": "pacs"}}}
    router = make_router([use_case("ich-head-ct", "assistive"), chest], pacs_port=pacs.dicom_port).start()

    ct_paths, ct = studies(31, lesion=True)
    cxr_path, cxr = rp.write_radiograph(tmp_path / "cxr", 961_000, pneumothorax=True, kind="lateral",
                                        rows=1024, cols=1024, modality="DX", mimics=(),
                                        photometric_interpretation="MONOCHROME1", bits=(16, 12), voi_window=True)
    for paths in (ct_paths, [cxr_path]):
        result = storescu(router.port, paths)
        assert len(result.acknowledged) == len(paths), result.output[-2000:]

    for uid, truth_key in ((ct.study_instance_uid, ct), (cxr.study_instance_uid, cxr)):
        wait_for(lambda u=uid, t=truth_key: len(_srs(pacs, u)) >= 1 and len(audit_records(router, t)) == 2,
                 TIMEOUT, "one SR in Orthanc and an audit record per use case", router)

    # The head CT: exactly one SR, the head-CT model's; the chest use case did not apply.
    ct_srs = _srs(pacs, ct.study_instance_uid)
    assert len(ct_srs) == 1
    assert ICH_FINDING in _codes(ct_srs[0]) and PTX_FINDING not in _codes(ct_srs[0])
    records = {r["use_case"]: r for r in audit_records(router, ct)}
    assert records["ich-head-ct"]["model_name"] == "ich_detector" and records["ich-head-ct"]["probability"] is not None
    assert records["ptx-chest-xr"]["outcome"].startswith("not applicable")
    assert records["ptx-chest-xr"]["probability"] is None and records["ptx-chest-xr"]["destination"] is None

    # The radiograph: exactly one SR, the radiograph model's, positive, located on the image only (SCOORD).
    cxr_srs = _srs(pacs, cxr.study_instance_uid)
    assert len(cxr_srs) == 1
    sr = cxr_srs[0]
    assert PTX_FINDING in _codes(sr) and ICH_FINDING not in _codes(sr)
    records = {r["use_case"]: r for r in audit_records(router, cxr)}
    assert records["ptx-chest-xr"]["model_name"] == "ptx_detector"
    assert records["ptx-chest-xr"]["probability"] >= 0.5, records["ptx-chest-xr"]
    assert records["ich-head-ct"]["outcome"].startswith("not applicable")
    assert records["ich-head-ct"]["probability"] is None
    path = tmp_path / "ptx-sr.dcm"
    sr.save_as(path)
    check = check_sr(path)
    assert check.errors == [], check.errors
    assert "SCOORD" in check.dump and "SCOORD3D" not in check.dump, check.dump
    assert sr.StudyInstanceUID == cxr.study_instance_uid
    evidence = [sop.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence]
    assert cxr.sop_instance_uid in evidence
