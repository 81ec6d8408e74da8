"""ingest.store_response: the directly encoded C-STORE-RSP is pynetdicom's byte for byte, and whatever the direct
path does not cover (error comment, offending element, another EVT_DIMSE_SENT handler, other messages) still goes
through pynetdicom."""

from __future__ import annotations

from io import BytesIO
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from pacsflow_router.ingest.store_response import encode_c_store_rsp, send_store_responses_directly


def _response(message_id: int, sop_class: str, sop_instance: str, status: int) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_instance
    rsp.Status = status
    return rsp


def _pynetdicom_pdvs(rsp: C_STORE, context_id: int, maximum_pdu: int) -> list[list[tuple[int, bytes]]]:
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    return [p.presentation_data_value_list for p in message.encode_msg(context_id, maximum_pdu)]


@pytest.mark.parametrize(("message_id", "sop_instance", "status"), [
    (1, "1.2.3", 0x0000),  # odd-length UID: NULL padded
    (65535, "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678", 0xA700),
    (7, "1.2.34", 0xC000),  # even-length UID
    (300, "2.25.329800735698586629295641978511506172918", 0xC211),
])
def test_command_set_is_pynetdicoms_byte_for_byte(message_id: int, sop_instance: str, status: int) -> None:
    rsp = _response(message_id, CTImageStorage, sop_instance, status)
    (expected,) = _pynetdicom_pdvs(rsp, 5, 16384)
    assert expected == [(5, b"\x03" + encode_c_store_rsp(message_id, CTImageStorage, sop_instance, status))]


class _Sent:
    """An acceptor association (never started, no socket) whose DUL records what the DIMSE provider hands it."""

    def __init__(self, maximum_pdu: int = 16384) -> None:
        ae = AE("PACSFLOW")
        self.assoc = Association(ae, "acceptor")
        self.assoc.requestor.maximum_length = maximum_pdu  # the peer's maximum PDU: what the DIMSE obeys
        self.pdvs: list[list[tuple[int, bytes]]] = []

        def send_pdu(primitive: Any) -> None:
            assert isinstance(primitive, P_DATA)
            self.pdvs.append(primitive.presentation_data_value_list)

        self.assoc.dul.send_pdu = send_pdu  # type: ignore[method-assign]
        self.pynetdicom_send = self.assoc.dimse.send_msg
        send_store_responses_directly(self.assoc)


def test_the_direct_path_sends_what_pynetdicom_would() -> None:
    sent = _Sent()
    calls = _bypassed(sent)
    rsp = _response(42, CTImageStorage, "1.2.3.4.5", 0x0000)
    sent.assoc.dimse.send_msg(rsp, 3)
    assert calls == []  # pynetdicom's send_msg was not needed
    assert sent.pdvs == _pynetdicom_pdvs(rsp, 3, 16384)


def _bypassed(sent: _Sent) -> list[str]:
    calls: list[str] = []
    original = sent.pynetdicom_send

    def recording(primitive: Any, context_id: int) -> None:
        calls.append(type(primitive).__name__)
        original(primitive, context_id)

    # The wrapper captured pynetdicom's bound method; swap what it calls through by re-installing over a recorder.
    sent.assoc.dimse.send_msg = recording  # type: ignore[method-assign]
    send_store_responses_directly(sent.assoc)
    return calls


def test_an_error_comment_goes_through_pynetdicom() -> None:
    sent = _Sent()
    calls = _bypassed(sent)
    rsp = _response(9, CTImageStorage, "1.2.3.4.5", 0xC000)
    rsp.ErrorComment = "cannot understand"  # type: ignore[assignment]  # typed None in pynetdicom
    sent.assoc.dimse.send_msg(rsp, 1)
    assert calls == ["C_STORE"]
    assert b"cannot understand" in sent.pdvs[0][0][1]


def test_a_bound_dimse_sent_handler_still_sees_the_response() -> None:
    sent = _Sent()
    calls = _bypassed(sent)
    seen: list[str] = []
    sent.assoc.bind(evt.EVT_DIMSE_SENT, lambda event: seen.append(type(event.message).__name__))
    sent.assoc.dimse.send_msg(_response(9, CTImageStorage, "1.2.3.4.5", 0x0000), 1)
    assert calls == ["C_STORE"] and seen == ["C_STORE_RSP"]


def test_other_messages_and_requests_go_through_pynetdicom() -> None:
    sent = _Sent()
    calls = _bypassed(sent)
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    echo.Status = 0
    sent.assoc.dimse.send_msg(echo, 1)
    request = C_STORE()
    request.MessageID = 2
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = "1.2.3"
    request.Priority = 2
    request.DataSet = BytesIO(b"\x08\x00\x18\x00\x06\x00\x00\x001.2.3\x00")
    sent.assoc.dimse.send_msg(request, 1)
    assert calls == ["C_ECHO", "C_STORE"]


def test_a_command_set_larger_than_the_peers_pdu_is_fragmented_by_pynetdicom() -> None:
    sent = _Sent(maximum_pdu=64)
    calls = _bypassed(sent)
    rsp = _response(9, CTImageStorage, "1.2.3.4.5", 0x0000)
    sent.assoc.dimse.send_msg(rsp, 1)
    assert calls == ["C_STORE"] and len(sent.pdvs) > 1
    assert sent.pdvs == _pynetdicom_pdvs(rsp, 1, 64)
