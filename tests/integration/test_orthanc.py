"""The Orthanc peer itself: REST helpers, and the Lua forwarding snippet (OnStoredInstance + SendToModality)."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom

from pacsflow_router.config import Destination
from pacsflow_router.models.phantom import generate_study
from pacsflow_router.results.reports import build_sr
from pacsflow_router.results.scu import StoreClient
from tests.conftest import free_port
from tests.peers.dcmtk import StoreSCP, storescu
from tests.peers.orthanc import Orthanc, forward_script
from tests.unit.pacsflow_router.test_reports import SPEC, USE_CASE, phantom_study_and_result

# Orthanc is required, not optional: make system-deps installs it and a missing Orthanc fails the tests.


def _received(directory: Path) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in directory.iterdir()}


def _wait_for(directory: Path, uids: set[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not uids <= _received(directory):
        if time.monotonic() > deadline:
            raise AssertionError(f"forwarded: {len(_received(directory))} of the expected {len(uids)} instances")
        time.sleep(0.1)


def test_lua_snippet_forwards_images_to_the_router_but_not_srs(tmp_path):
    router_port = free_port()
    forwarded = tmp_path / "forwarded"
    lua = forward_script(tmp_path / "forward.lua", "router")
    datasets, _truth = generate_study(21, lesion=False, slices=3, rows=64, cols=64)
    files = []
    for i, ds in enumerate(datasets):
        files.append(tmp_path / f"ct{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    first, sentinel = files[:2], files[2:]

    # dcmtk's storescp stands in for the router: same AE title, any storage SOP class accepted.
    with StoreSCP(forwarded, router_port, ae_title="PACSFLOW"), \
            Orthanc(tmp_path / "orthanc", modalities={"router": ("PACSFLOW", "127.0.0.1", router_port)},
                    lua_scripts=[lua]) as pacs:
        result = storescu(pacs.dicom_port, first, called=pacs.aet)
        assert len(result.acknowledged) == 2, result.output
        _wait_for(forwarded, {str(ds.SOPInstanceUID) for ds in datasets[:2]})

        # An SR arriving at the PACS (the router's own result) must not be sent back to the router. Orthanc runs
        # Lua callbacks in order, so once the image stored after it has been forwarded, the SR would have been too.
        study, finding = phantom_study_and_result(22, lesion=True, probability=0.9)
        sr = build_sr(study, finding, USE_CASE, software_version="0.1.0", spec=SPEC)
        destination = Destination(name="pacs", ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port)
        with StoreClient(destination, "PACSFLOW") as client:
            client.send(sr)
        result = storescu(pacs.dicom_port, sentinel, called=pacs.aet)
        assert len(result.acknowledged) == 1, result.output
        _wait_for(forwarded, {str(ds.SOPInstanceUID) for ds in datasets})
        assert str(sr.SOPInstanceUID) not in _received(forwarded)

        # REST helpers the demo relies on.
        (sr_id,) = pacs.instances(modality="SR")
        assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(pacs.instance_file(sr_id))).SOPInstanceUID == \
            sr.SOPInstanceUID
        assert pacs.instance_tags(sr_id)["SOPInstanceUID"] == sr.SOPInstanceUID
        assert len(pacs.instances(study_uid=str(datasets[0].StudyInstanceUID))) == 3
        assert pacs.statistics()["CountInstances"] == 4
        assert len(pacs.studies()) == 2
