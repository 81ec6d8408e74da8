"""Outbox.prepare: the SR goes out on an association opened while it was being computed (a real Orthanc)."""

from __future__ import annotations

from tests.integration.test_export import _outbox, _Recorder, _sr, _wait, pacs  # noqa: F401 - pacs is a fixture
from tests.unit.pacsflow_router.test_reports import USE_CASE

# Orthanc is required, not optional: make system-deps installs it and a missing Orthanc fails the tests.


def test_prepare_opens_the_association_the_sr_then_goes_out_on(tmp_path, pacs):  # noqa: F811 - the fixture
    recorder = _Recorder(pacs)
    outbox = _outbox(tmp_path / "outbox", recorder)
    outbox.start()
    try:
        outbox.prepare("pacs")
        _wait(lambda: bool(recorder.clients) and recorder.clients[0].associations_opened == 1,
              what="the association opened ahead of the SR")
        assert outbox.pending() == 0
        assert outbox.enqueue("pacs", _sr(40), study_key="k40", use_case=USE_CASE.name)
        _wait(lambda: outbox.pending() == 0, what="the SR delivered")
    finally:
        outbox.stop()
    (client,) = recorder.clients
    assert client.associations_opened == 1, "the SR went out on the association opened ahead"
    assert recorder.outcomes() == ["delivered"]
    assert len(pacs.instances(modality="SR")) == 1
