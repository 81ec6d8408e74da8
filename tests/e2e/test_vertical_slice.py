"""The whole data path with real peers: dcmtk storescu -> pacsflow-router -> Orthanc, SRs validated.

Every test runs the real router process (DALI on CPU + embedded ONNX Runtime + the committed ich_detector model)
against a real Orthanc; SRs are fetched back from Orthanc's REST API and checked with dciodvfy and dsrdump.
"""

from __future__ import annotations

import pydicom
import pytest

from tests.e2e.conftest import audit_records, metric_value, wait_for
from tests.e2e.delivery import assert_delivered_once, evidence_uids, sop_uids, sr_requests, stop_when_idle
from tests.peers.dcmtk import storescu
from tests.peers.orthanc import Orthanc, forward_script
from tests.peers.router import use_case
from tests.peers.srcheck import check_sr

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIMEOUT = 180


def _srs(pacs: Orthanc, truth) -> list[pydicom.Dataset]:
    from io import BytesIO

    return [pydicom.dcmread(BytesIO(pacs.instance_file(i)))
            for i in pacs.instances(modality="SR", study_uid=truth.study_instance_uid)]


def _send(router, paths) -> None:
    result = storescu(router.port, paths)
    assert len(result.acknowledged) == len(paths), result.output[-2000:]


def test_modes_gate_what_leaves_and_srs_are_valid(pacs, make_router, studies, tmp_path):
    """silent -> audit only; assistive -> SR; triage -> SR and critical flag; every SR passes both validators."""
    router = make_router([
        use_case("ich-silent", "silent"),
        use_case("ich-assist", "assistive"),
        use_case("ich-triage", "triage", threshold=0.5),
    ], pacs_port=pacs.dicom_port).start()
    positive_paths, positive = studies(11, lesion=True)
    negative_paths, negative = studies(12, lesion=False)
    _send(router, positive_paths)
    _send(router, negative_paths)

    for truth in (positive, negative):
        wait_for(lambda t=truth: len(_srs(pacs, t)) >= 2 and len(audit_records(router, t)) == 3,
                 TIMEOUT, "2 SRs in Orthanc and 3 audit records", router)
    for truth in (positive, negative):
        srs = _srs(pacs, truth)
        assert len(srs) == 2, "assistive and triage each send one SR; silent sends none"
        records = {r["use_case"]: r for r in audit_records(router, truth)}
        assert set(records) == {"ich-silent", "ich-assist", "ich-triage"}
        assert records["ich-silent"]["outcome"] == "logged-silent"
        assert records["ich-silent"]["destination"] is None
        for rec in records.values():
            assert (rec["probability"] >= 0.5) == truth.has_lesion, rec
            assert rec["model_name"] == "ich_detector" and rec["model_version"] == 2
        assert records["ich-triage"]["critical"] is truth.has_lesion
        assert records["ich-assist"]["critical"] is False, "only triage mode flags critical studies"
        for i, sr in enumerate(srs):
            assert sr.StudyInstanceUID == truth.study_instance_uid
            assert sr.Modality == "SR"
            path = tmp_path / f"sr-{truth.seed}-{i}.dcm"
            sr.save_as(path)
            check = check_sr(path)
            assert check.errors == [], check.errors
    # No patient data in the router's log: no UIDs, names or IDs (STYLE.md; DEBUG is off by default).
    log_text = router.log()
    header = pydicom.dcmread(positive_paths[0], stop_before_pixels=True)
    for value in (truth.study_instance_uid for truth in (positive, negative)):
        assert value not in log_text
    for value in (str(header.PatientName), str(header.PatientID), str(header.SOPInstanceUID)):
        assert value and value not in log_text
    assert metric_value(router, "pacsflow_critical_findings_total", use_case="ich-triage") == 1
    assert metric_value(router, "pacsflow_critical_findings_total", use_case="ich-assist") == 0
    # Exactly once at the receiver: each of the two SRs per study reached Orthanc in one C-STORE request, and
    # each lists every slice of the study as its evidence.
    stop_when_idle(router)
    for truth, paths in ((positive, positive_paths), (negative, negative_paths)):
        assert_delivered_once(pacs, truth.study_instance_uid, srs=2)
        for sr in _srs(pacs, truth):
            assert evidence_uids(sr) == sop_uids(paths)


def test_orthanc_forwards_a_study_and_gets_exactly_one_sr_back(make_router, studies, tmp_path):
    """Orthanc's Lua OnStoredInstance + SendToModality pushes a stored study to the router; the SR comes back once."""
    from tests.peers.net import free_port

    router_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc-fwd", modalities={"pacsflow": ("PACSFLOW", "127.0.0.1", router_port)},
                   lua_scripts=[forward_script(tmp_path / "forward.lua", "pacsflow")],
                   config={"DicomScpTimeout": 5}).start()
    try:
        router = make_router([use_case("ich-assist", "assistive")], pacs_port=pacs.dicom_port, stable_seconds=5)
        router.config["port"] = router_port
        router.write_config(router.config)
        router.start()
        paths, truth = studies(21, lesion=True)
        result = storescu(pacs.dicom_port, paths, called="ORTHANC")
        assert len(result.acknowledged) == len(paths)
        wait_for(lambda: _srs(pacs, truth), TIMEOUT, "the SR in Orthanc", router)
        # The router received the study from Orthanc, not from storescu.
        assert metric_value(router, "pacsflow_instances_received_total") >= len(paths)
        # The pipeline writes the result's audit record right after it hands the SR over (it may reach Orthanc
        # first): wait for the record, then check there is exactly one.
        records = wait_for(lambda: audit_records(router, truth), TIMEOUT, "the result's audit record", router)
        assert len(records) == 1, "one result per study and use case"  # what it says is the model tests' concern
        wait_for(lambda: records and audit_records(router, truth)[0]["destination_status"] == "delivered",
                 30, "delivery recorded", router)
        stop_when_idle(router)
        # One C-STORE of the SR back to Orthanc; the SR must not loop back through Orthanc's forwarding either.
        assert_delivered_once(pacs, truth.study_instance_uid)
        assert len(pacs.received(study_uid=truth.study_instance_uid)) == len(paths) + 1, \
            "Orthanc received the study once from storescu and the one SR from the router, nothing else"
    finally:
        pacs.stop()


def test_hot_reload_promotes_silent_to_assistive_without_restart(pacs, make_router, studies):
    """Editing the mounted routing config (what the operator does on a mode edit) changes the gate live."""
    router = make_router([use_case("ich", "silent")], pacs_port=pacs.dicom_port).start()
    paths_a, study_a = studies(31, lesion=True)
    _send(router, paths_a)
    wait_for(lambda: audit_records(router, study_a), TIMEOUT, "silent audit record", router)
    assert _srs(pacs, study_a) == []

    pid = router.proc.pid
    cfg = dict(router.config)
    cfg["useCases"] = [use_case("ich", "assistive")]
    router.write_config(cfg)
    wait_for(lambda: metric_value(router, "pacsflow_config_reloads_total", outcome="applied") >= 1, 30,
             "config reload", router)
    paths_b, study_b = studies(32, lesion=True)
    _send(router, paths_b)
    wait_for(lambda: _srs(pacs, study_b), TIMEOUT, "SR after promotion", router)
    assert router.proc.pid == pid and router.proc.poll() is None, "hot reload, not a restart"
    assert _srs(pacs, study_a) == [], "the silent study's result stays silent"
    assert sr_requests(pacs, study_a.study_instance_uid) == [], "not even an attempt to send it"

    # A broken edit is refused and the running config keeps working.
    router.config_path.write_text("useCases: [{name: x, mode: autopilot}]\n")
    wait_for(lambda: metric_value(router, "pacsflow_config_reloads_total", outcome="invalid") >= 1, 30,
             "invalid config rejected", router)
    assert router.proc.poll() is None


def test_compressed_non_square_study_without_optional_tags_reaches_the_model(pacs, make_router, tmp_path):
    """JPEG-LS lossless, 400x512 matrix, optional attributes stripped: stored as sent, decoded, one valid SR."""
    from pydicom.uid import JPEGLSLossless

    from pacsflow_router.models import phantom

    datasets, truth = phantom.generate_study(71, lesion=True, slices=16, rows=400, cols=512,
                                             transfer_syntax_uid=JPEGLSLossless)
    paths = []
    for i, ds in enumerate(datasets):
        for keyword in ("SliceThickness", "SpacingBetweenSlices", "BodyPartExamined", "SeriesDescription",
                        "WindowCenter", "WindowWidth", "InstanceNumber", "PatientBirthDate", "AccessionNumber"):
            if keyword in ds:
                delattr(ds, keyword)
        path = tmp_path / f"ls{i:03}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    router = make_router([use_case("ich", "assistive")], pacs_port=pacs.dicom_port).start()
    result = storescu(router.port, paths, extra=("-xt",))  # propose JPEG-LS lossless: send as stored, no decoding
    assert len(result.acknowledged) == len(paths), result.output[-2000:]
    srs = wait_for(lambda: _srs(pacs, truth), TIMEOUT, "the SR", router)
    record = audit_records(router, truth)[0]
    assert record["probability"] >= 0.5
    srs[0].save_as(tmp_path / "sr.dcm")
    assert check_sr(tmp_path / "sr.dcm").errors == []
    # Stored as received: the spooled instances are still JPEG-LS, their compressed pixel data byte for byte what
    # storescu sent (the file meta header is the router's own, as PS3.10 wants).
    spooled = [ds for ds in map(pydicom.dcmread, (tmp_path / "router" / "spool").rglob("*.dcm"))
               if ds.Modality == "CT"]  # the outbox keeps its SR files under the spool too
    assert len(spooled) == len(paths)
    assert {ds.file_meta.TransferSyntaxUID for ds in spooled} == {JPEGLSLossless}
    assert {ds.PixelData for ds in spooled} == {pydicom.dcmread(p).PixelData for p in paths}
