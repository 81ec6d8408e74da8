"""Outbox -> StoreClient -> a real Orthanc: delivered, fetched back valid, exactly once, across outages/restarts."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from pacsflow_router.config import Destination
from pacsflow_router.results.export import Outbox, OutboxItem
from pacsflow_router.results.reports import build_sr
from pacsflow_router.results.scu import StoreClient, StoreError
from tests.conftest import free_port
from tests.peers.dcmtk import dcmtk_env, wait_for_port
from tests.peers.orthanc import Orthanc
from tests.peers.srcheck import check_sr
from tests.unit.pacsflow_router.test_reports import SPEC, USE_CASE, phantom_study_and_result

# Orthanc is required, not optional: make system-deps installs it and a missing Orthanc fails the tests.


def _wait(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _sr(seed: int, lesion: bool = True) -> pydicom.Dataset:
    study, result = phantom_study_and_result(seed, lesion=lesion, probability=0.9 if lesion else 0.05)
    return build_sr(study, result, USE_CASE, software_version="0.1.0", spec=SPEC)


class _Recorder:
    """Collects on_result callbacks and the StoreClients the outbox asked for."""

    def __init__(self, pacs: Orthanc) -> None:
        self.pacs = pacs
        self.results: list[tuple[OutboxItem, str]] = []
        self.clients: list[StoreClient] = []

    def sender(self, name: str) -> StoreClient:
        destination = Destination(name=name, ae_title=self.pacs.aet, host="127.0.0.1", port=self.pacs.dicom_port)
        client = StoreClient(destination, "PACSFLOW", connect_timeout=2, acse_timeout=5, dimse_timeout=10)
        self.clients.append(client)
        return client

    def on_result(self, item: OutboxItem, outcome: str) -> None:
        self.results.append((item, outcome))

    def outcomes(self) -> list[str]:
        return [outcome for _item, outcome in self.results]


@pytest.fixture
def pacs(tmp_path: Path):
    running = Orthanc(tmp_path / "orthanc").start()
    yield running
    running.stop(kill=True)  # throw-away storage: skip Orthanc's ~3.5 s clean shutdown


def _outbox(path: Path, recorder: _Recorder, **kwargs) -> Outbox:
    kwargs = {"base_delay": 0.1, "max_delay": 0.5, "poll_interval": 0.1, **kwargs}
    return Outbox(path, recorder.sender, on_result=recorder.on_result, **kwargs)


def test_srs_are_delivered_over_one_association_and_come_back_valid(tmp_path, pacs):
    recorder = _Recorder(pacs)
    outbox = _outbox(tmp_path / "outbox", recorder)
    sent = [_sr(1, lesion=True), _sr(2, lesion=False), _sr(3, lesion=True)]
    uids = {ds.SOPInstanceUID for ds in sent}
    for i, ds in enumerate(sent):
        assert outbox.enqueue("pacs", ds, study_key=f"k{i}", use_case=USE_CASE.name, last_received=time.time())
    outbox.start()
    try:
        _wait(lambda: outbox.pending() == 0, what="outbox to drain")
    finally:
        outbox.stop()

    stored = pacs.instances(modality="SR")
    assert len(stored) == 3
    for instance_id in stored:
        path = tmp_path / f"{instance_id}.dcm"
        path.write_bytes(pacs.instance_file(instance_id))
        check = check_sr(path)
        assert check.ok, check.errors
        assert pydicom.dcmread(path).SOPInstanceUID in uids
    # Association reuse: the three SRs went over a single association.
    (client,) = recorder.clients
    assert client.associations_opened == 1
    assert sorted(recorder.outcomes()) == ["delivered"] * 3
    assert outbox.counts() == {"delivered": 3}


def test_second_enqueue_of_the_same_sr_is_a_no_op(tmp_path, pacs):
    recorder = _Recorder(pacs)
    outbox = _outbox(tmp_path / "outbox", recorder)
    ds = _sr(4)
    assert outbox.enqueue("pacs", ds) is True
    # The pipeline rebuilt the same report after a crash: same deterministic UIDs, nothing new.
    assert outbox.enqueue("pacs", _sr(4)) is False
    assert outbox.pending() == 1
    assert outbox.deliver_due() == 1
    assert outbox.enqueue("pacs", ds) is False
    assert outbox.deliver_due() == 0
    assert len(pacs.instances(modality="SR")) == 1
    assert len(list((tmp_path / "outbox" / "items").iterdir())) == 1
    outbox.close()


def test_pacs_down_then_up_delivers_exactly_once(tmp_path):
    pacs = Orthanc(tmp_path / "orthanc")  # configured, not started: connection refused
    recorder = _Recorder(pacs)
    outbox = _outbox(tmp_path / "outbox", recorder)
    ds = _sr(5)
    outbox.enqueue("pacs", ds, study_key="k5", use_case=USE_CASE.name)
    outbox.start()
    try:
        _wait(lambda: "retrying" in recorder.outcomes(), what="a failed attempt")
        time.sleep(1.0)  # several backoff rounds while the PACS stays down
        assert outbox.pending() == 1
        (item, _), = recorder.results  # one "retrying" event per item, not one per attempt
        assert "destination 'pacs'" in item.last_error and ds.PatientID not in item.last_error
        pacs.start()
        _wait(lambda: outbox.pending() == 0, what="delivery after the PACS came back")
        time.sleep(0.5)  # more rounds: nothing must be sent again
        assert outbox.deliver_due() == 0
        assert len(pacs.instances(modality="SR")) == 1
    finally:
        outbox.stop()
        pacs.stop(kill=True)
    assert recorder.outcomes() == ["retrying", "delivered"]


def test_pacs_restart_drops_the_association_and_the_client_reconnects(tmp_path):
    # A clean Orthanc shutdown waits DicomScpTimeout for open associations (ours stays open on purpose).
    pacs = Orthanc(tmp_path / "orthanc", config={"DicomScpTimeout": 1})
    recorder = _Recorder(pacs)
    outbox = _outbox(tmp_path / "outbox", recorder)
    with pacs:
        outbox.enqueue("pacs", _sr(6))
        assert outbox.deliver_due() == 1
    # The association is still open on our side while Orthanc goes away.
    outbox.enqueue("pacs", _sr(7))
    assert outbox.deliver_due() == 0 and outbox.pending() == 1
    pacs.start()
    try:
        _wait(lambda: outbox.deliver_due() == 1 or outbox.pending() == 0, what="redelivery")
        assert len(pacs.instances(modality="SR")) == 2
    finally:
        pacs.stop(kill=True)
    (client,) = recorder.clients
    assert client.associations_opened == 2
    outbox.close()


def test_pending_items_survive_a_new_outbox_on_the_same_directory(tmp_path):
    pacs = Orthanc(tmp_path / "orthanc")
    first = _Recorder(pacs)
    outbox = _outbox(tmp_path / "outbox", first)
    ds = _sr(8)
    outbox.enqueue("pacs", ds, study_key="k8", use_case=USE_CASE.name, last_received=123.0)
    assert outbox.deliver_due() == 0  # PACS down
    outbox.close()  # the router stops (or dies: the row and file were fsync'ed at enqueue)

    second = _Recorder(pacs)
    reopened = _outbox(tmp_path / "outbox", second)
    assert reopened.pending() == 1
    assert reopened.enqueue("pacs", ds) is False
    pacs.start()
    reopened.start()
    try:
        _wait(lambda: reopened.pending() == 0, what="delivery after restart")
        assert len(pacs.instances(modality="SR")) == 1
    finally:
        reopened.stop()
        pacs.stop(kill=True)
    ((item, outcome),) = second.results
    assert outcome == "delivered" and item.study_key == "k8" and item.last_received == 123.0
    assert reopened.state(ds.SOPInstanceUID) == "delivered"


def test_store_client_sets_tcp_nodelay_and_names_the_destination_on_failure(tmp_path, pacs):
    destination = Destination(name="pacs", ae_title=pacs.aet, host="127.0.0.1", port=pacs.dicom_port)
    with StoreClient(destination, "PACSFLOW") as client:
        assert client.send(_sr(9)) == 0x0000
        assert client.nodelay is True
    wrong = Destination(name="wrong-ae", ae_title="NOT_ORTHANC", host="127.0.0.1", port=pacs.dicom_port)
    with pytest.raises(StoreError, match="destination 'wrong-ae'") as excinfo:
        StoreClient(wrong, "PACSFLOW").send(_sr(10))
    # Orthanc answers A-ASSOCIATE-RJ and closes; under load pynetdicom may see the close first ("aborted").
    message = str(excinfo.value)
    assert ("rejected" in message or "aborted" in message) and not excinfo.value.permanent
    assert "PACSFLOW" in message, "the message says which calling AE title the destination must accept"


def test_unknown_destination_keeps_the_item_until_the_config_knows_it(tmp_path, pacs):
    recorder = _Recorder(pacs)
    known: set[str] = set()

    def senders(name: str) -> StoreClient:
        if name not in known:
            raise KeyError(name)  # what a config lookup of a removed destination does
        return recorder.sender(name)

    outbox = Outbox(tmp_path / "outbox", senders, on_result=recorder.on_result, base_delay=0.05, max_delay=0.1)
    outbox.enqueue("pacs", _sr(11))
    assert outbox.deliver_due() == 0 and outbox.pending() == 1
    known.add("pacs")  # the destination is back in the routing config
    outbox.reset_senders()
    assert outbox.deliver_due() == 1
    assert len(pacs.instances(modality="SR")) == 1
    outbox.close()


def test_peer_that_aborts_during_the_store_leaves_the_item_queued(tmp_path):
    """dcmtk storescp --abort-during: the association dies mid C-STORE, so no response ever comes."""
    port = free_port()
    proc = subprocess.Popen(["storescp", "-aet", "PACS", "--abort-during", "-od", str(tmp_path), str(port)],
                            env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        results: list[tuple[OutboxItem, str]] = []
        destination = Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=port)
        outbox = Outbox(tmp_path / "outbox", lambda _name: StoreClient(destination, "PACSFLOW", dimse_timeout=5),
                        on_result=lambda item, outcome: results.append((item, outcome)))
        outbox.enqueue("pacs", _sr(12))
        assert outbox.deliver_due() == 0
        assert outbox.pending() == 1
        ((item, outcome),) = results
        assert outcome == "retrying" and "destination 'pacs'" in item.last_error
        outbox.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_item_refused_with_a_failure_status_is_parked_after_max_attempts(tmp_path):
    """A pynetdicom SCP answering 0xC000 ("cannot understand"): no peer here can be made to refuse a valid SR
    (Orthanc 1.10 answers Success even when its ReceivedInstanceFilter drops an instance)."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Comprehensive3DSRStorage

    scp_ae = AE(ae_title="REFUSER")
    scp_ae.add_supported_context(Comprehensive3DSRStorage)
    port = free_port()
    server = scp_ae.start_server(("127.0.0.1", port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, lambda event: 0xC000)])
    try:
        results: list[tuple[OutboxItem, str]] = []
        destination = Destination(name="refuser", ae_title="REFUSER", host="127.0.0.1", port=port)
        outbox = Outbox(tmp_path / "outbox", lambda _name: StoreClient(destination, "PACSFLOW"),
                        on_result=lambda item, outcome: results.append((item, outcome)), max_attempts=3,
                        base_delay=10, max_delay=60)
        ds = _sr(13)
        outbox.enqueue("refuser", ds)
        start = time.time()
        for minute in range(5):  # simulated clock: each round is after the item's backoff
            outbox.deliver_due(now=start + 60 * (minute + 1))
        assert outbox.counts() == {"failed": 1}
        assert [outcome for _item, outcome in results] == ["retrying", "failed"]
        assert "0xC000" in results[-1][0].last_error and results[-1][0].attempts == 3
        assert len(list((tmp_path / "outbox" / "items").glob("*.dcm"))) == 1  # parked, never deleted
        outbox.close()
    finally:
        server.shutdown()
