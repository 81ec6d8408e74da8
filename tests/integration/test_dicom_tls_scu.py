"""DICOM TLS on the router's sending side, against real TLS peers (PS3.15 Annex B, BCP 195).

* results.scu: an AI SR stored over mutual TLS into dcmtk ``storescp +tls`` and into Orthanc with DICOM TLS
  (``DicomTlsEnabled``, client certificate required); a destination whose certificate is not signed by the
  configured CA is refused (verification is always on) and nothing arrives.
* workflow.mwl: the RIS worklist (Orthanc's worklist plugin behind DICOM TLS) polled with C-FIND over TLS.

Certificates are made per test (tests/peers/certs.py), never committed.
"""

from __future__ import annotations

import datetime
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from pacsflow_router.config import Destination, MwlSource, TlsClient
from pacsflow_router.ingest.spool import Spool
from pacsflow_router.results.reports import build_sr
from pacsflow_router.results.scu import StoreClient, StoreError
from pacsflow_router.workflow.mwl import MwlPoller
from pacsflow_router.workflow.orders import OrderStore
from tests.peers import orthanc as orthanc_peer
from tests.peers.certs import Issued, Pki
from tests.peers.dcmtk import dcmtk_env
from tests.peers.net import eventually, free_port, stop_process, wait_port
from tests.peers.orthanc import Orthanc
from tests.peers.worklist import RisItem, RisWorklist
from tests.unit.pacsflow_router.test_reports import SPEC, USE_CASE, phantom_study_and_result

HOST = "127.0.0.1"

if shutil.which("storescp") is None or not orthanc_peer.available():
    raise RuntimeError("dcmtk and Orthanc are needed: install them with scripts/install-system-deps.sh")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def router_cert(pki: Pki) -> Issued:
    return pki.client("pacsflow-router")


@pytest.fixture(scope="module")
def sr() -> pydicom.Dataset:
    study, result = phantom_study_and_result(5, lesion=True, probability=0.9)
    return build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC)


def tls_client(ca: Path, cert: Issued) -> TlsClient:
    return TlsClient(ca_file=str(ca), cert_file=str(cert.cert), key_file=str(cert.key))


@pytest.fixture
def storescp(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, Path, subprocess.Popen]]:
    """dcmtk storescp with TLS: its own server certificate, client certificates required and checked against the
    test CA (``-rc``), the BCP 195 non-downgrading profile (dcmtk's default)."""
    server = pki.server("storescp")
    port, out = free_port(), tmp_path / "received"
    out.mkdir()
    log = (tmp_path / "storescp.log").open("wb")
    proc = subprocess.Popen(
        ["storescp", "-v", "-aet", "STORESCP", "-od", str(out), "+tls", str(server.key), str(server.cert),
         "+cf", str(pki.ca_file), "-rc", str(port)], stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env())
    try:
        wait_port(port, 30, proc)
        yield port, out, proc
    finally:
        stop_process(proc)
        log.close()


def test_sr_stored_over_mutual_tls_into_storescp(storescp, pki, router_cert, sr, tmp_path):
    port, out, _proc = storescp
    destination = Destination(name="pacs", ae_title="STORESCP", host=HOST, port=port,
                              tls=tls_client(pki.ca_file, router_cert))
    with StoreClient(destination, "PACSFLOW", connect_timeout=3, acse_timeout=5, dimse_timeout=10) as client:
        assert client.send(sr) == 0x0000
    received = eventually(lambda: list(out.iterdir()), "the SR to arrive in storescp")
    assert pydicom.dcmread(received[0]).SOPInstanceUID == sr.SOPInstanceUID
    # storescp speaks TLS only: the same destination without ``tls`` gets nowhere (so the store above was TLS).
    plain = destination.model_copy(update={"tls": None})
    with StoreClient(plain, "PACSFLOW", connect_timeout=3, acse_timeout=3, dimse_timeout=5) as client, \
            pytest.raises(StoreError):
        client.send(sr)
    assert len(list(out.iterdir())) == 1


def test_destination_with_an_untrusted_certificate_gets_nothing(storescp, router_cert, sr, tmp_path):
    port, out, _proc = storescp
    other_ca = Pki(tmp_path / "other", name="Other CA")  # the router trusts only this CA: storescp's is unknown
    destination = Destination(name="pacs", ae_title="STORESCP", host=HOST, port=port,
                              tls=tls_client(other_ca.ca_file, router_cert))
    with StoreClient(destination, "PACSFLOW", connect_timeout=3, acse_timeout=5, dimse_timeout=10) as client, \
            pytest.raises(StoreError, match="TLS"):
        client.send(sr)
    assert list(out.iterdir()) == []
    # A name the certificate does not carry is refused as well (host name verification is on).
    destination = Destination(name="pacs", ae_title="STORESCP", host=HOST, port=port,
                              tls=tls_client(Path(str(router_cert.ca)), router_cert).model_copy(
                                  update={"server_name": "pacs.elsewhere.example"}))
    with StoreClient(destination, "PACSFLOW", connect_timeout=3, acse_timeout=5, dimse_timeout=10) as client, \
            pytest.raises(StoreError, match="TLS"):
        client.send(sr)
    assert list(out.iterdir()) == []


@pytest.fixture
def orthanc_tls(tmp_path: Path, pki: Pki) -> Iterator[tuple[Orthanc, RisWorklist]]:
    """Orthanc as the hospital PACS and RIS worklist, DICOM over TLS only, client certificates required."""
    server = pki.server("orthanc")
    ris = RisWorklist(tmp_path / "ris", "ORTHANC")  # only its .wl writer: Orthanc's worklist plugin serves them
    pacs = Orthanc(tmp_path / "orthanc", aet="ORTHANC", plugins=["libModalityWorklists.so"],
                   modalities={"pacsflow": ("PACSFLOW", HOST, 104)}, config={
                       "DicomTlsEnabled": True, "DicomTlsCertificate": str(server.cert),
                       "DicomTlsPrivateKey": str(server.key), "DicomTlsTrustedCertificates": str(pki.ca_file),
                       "DicomTlsRemoteCertificateRequired": True,
                       "Worklists": {"Enable": True, "Database": str(ris.directory)},
                   })
    with pacs:
        yield pacs, ris


def test_sr_stored_into_orthanc_over_dicom_tls_and_worklist_polled_over_tls(orthanc_tls, pki, router_cert, sr,
                                                                             tmp_path):
    pacs, ris = orthanc_tls
    tls = tls_client(pki.ca_file, router_cert)
    destination = Destination(name="pacs", ae_title="ORTHANC", host=HOST, port=pacs.dicom_port, tls=tls)
    with StoreClient(destination, "PACSFLOW", connect_timeout=3, acse_timeout=5, dimse_timeout=10) as client:
        assert client.send(sr) == 0x0000
    stored = pacs.instances(study_uid=sr.StudyInstanceUID)
    assert len(stored) == 1
    assert pacs.instance_tags(stored[0])["SOPInstanceUID"] == sr.SOPInstanceUID

    # Without a client certificate Orthanc refuses the association: nothing more is stored.
    anonymous = destination.model_copy(update={"tls": TlsClient(ca_file=str(pki.ca_file))})
    with StoreClient(anonymous, "PACSFLOW", connect_timeout=3, acse_timeout=5, dimse_timeout=10) as client, \
            pytest.raises(StoreError):
        client.send(sr)

    # The worklist, C-FIND over TLS.
    ris.write("head", RisItem("ACC-TLS-1", "PID-TLS-1", start_date=datetime.date.today().strftime("%Y%m%d")))
    spool = Spool(tmp_path / "spool", 0.999)
    try:
        store = OrderStore(spool, f"sqlite:///{tmp_path / 'store.db'}")
        source = MwlSource(ae_title="ORTHANC", host=HOST, port=pacs.dicom_port, tls=tls)
        result = MwlPoller(source, store, "PACSFLOW", connect_timeout=3, acse_timeout=5, dimse_timeout=10).poll_once()
        assert (result.outcome, result.items) == ("success", {"created": 1}), pacs.log_text()[-3000:]
        assert store.get("ACC-TLS-1", "PID-TLS-1") is not None
        # The same poll with the wrong CA: unreachable, nothing read.
        wrong = source.model_copy(update={"tls": tls_client(Pki(tmp_path / "x", name="X CA").ca_file, router_cert)})
        assert MwlPoller(wrong, store, "PACSFLOW", connect_timeout=3, acse_timeout=5).poll_once().outcome == \
            "unreachable"
    finally:
        spool.close()
