"""C-STORE responses encoded directly, on the association thread (PS3.7 9.3.1.2, Annex E).

pynetdicom sends every response through ``DIMSEServiceProvider.send_msg``: a pydicom command-set ``Dataset`` is
filled from the response primitive, encoded twice (once for the group length) and split into P-DATA fragments. For
the C-STORE-RSP that answers every received instance this was about 6 % of the association thread's time in py-spy
(one storescu association of 512 KB CT slices), on the critical path: the sender waits for the response before it
sends the next instance.

A C-STORE-RSP without Offending Element or Error Comment has seven command elements, four of them fixed
(:data:`_FIXED`): only Message ID Being Responded To, the two Affected SOP UIDs and the Status change. So
:func:`encode_c_store_rsp` writes the implicit VR little endian command set (PS3.7 6.3.1) with a few
``struct.pack`` calls, and :func:`send_store_responses_directly` makes one acceptor association send its C-STORE
responses that way; everything else (other messages, a response carrying an error comment or offending element, a
command set larger than the peer's maximum PDU, extra ``EVT_DIMSE_SENT`` handlers) goes through pynetdicom as before.
The unit tests compare the bytes with pynetdicom's own encoding. Candidate for upstream: a pre-encoded command set
for the fixed-shape responses.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, cast

from pynetdicom import evt
from pynetdicom._handlers import standard_dimse_sent_handler
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

#: Message Control Header of a PDV holding a whole command set: command, last fragment (PS3.8 E.2).
_COMMAND_LAST_FRAGMENT = b"\x03"
#: P-DATA-TF overhead of one PDV besides its value: item length (4) and presentation context ID (1) (PS3.8 9.3.5.1).
_PDV_OVERHEAD = 6
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101


def _us(element: int, value: int) -> bytes:
    # Implicit VR little endian: group, element, 4-byte length, value (PS3.5 7.1.2).
    return struct.pack("<HHIH", 0x0000, element, 2, value)


def _ui(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"  # UI pads with NULL to even length (PS3.5 6.2)
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


#: Command Field (0000,0100) = C-STORE-RSP; (0000,0800) Command Data Set Type = no data set.
_FIXED = _us(0x0100, _C_STORE_RSP)
_NO_DATA = _us(0x0800, _NO_DATA_SET)


def encode_c_store_rsp(message_id_being_responded_to: int, sop_class_uid: str, sop_instance_uid: str,
                       status: int) -> bytes:
    """The command set of a C-STORE-RSP without Offending Element or Error Comment (PS3.7 Table 9.3-2).

    Parameters
    ----------
    message_id_being_responded_to
        The request's Message ID.
    sop_class_uid, sop_instance_uid
        The request's Affected SOP Class and Instance UIDs, echoed.
    status
        The C-STORE status (PS3.4 Table B.2-1).

    Returns
    -------
    bytes
        Implicit VR little endian, Command Group Length first, elements in ascending tag order.

    Raises
    ------
    UnicodeEncodeError
        A UID is not ASCII (a request carrying one is never decoded by pynetdicom in the first place).
    """
    body = b"".join((
        _ui(0x0002, sop_class_uid),
        _FIXED,
        _us(0x0120, message_id_being_responded_to),
        _NO_DATA,
        _us(0x0900, status),
        _ui(0x1000, sop_instance_uid),
    ))
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def _only_standard_sent_handlers(assoc: Association) -> bool:
    # pynetdicom binds standard_dimse_sent_handler by default; for a C-STORE-RSP it logs nothing. Any other handler
    # expects the EVT_DIMSE_SENT event with a DIMSE message object, which only pynetdicom's own path provides.
    handlers = cast(list[tuple[Callable[..., Any], Any]], assoc.get_handlers(evt.EVT_DIMSE_SENT))  # a notification
    return all(handler is standard_dimse_sent_handler for handler, _ in handlers)


def send_store_responses_directly(assoc: Association) -> None:
    """Make an acceptor association send plain C-STORE responses through :func:`encode_c_store_rsp`.

    Installed per association (an instance attribute over ``DIMSEServiceProvider.send_msg``) before it starts;
    every other message keeps pynetdicom's ``send_msg``.
    """
    dimse = assoc.dimse
    pynetdicom_send: Callable[[Any, int], None] = dimse.send_msg

    def send_msg(primitive: Any, context_id: int) -> None:
        if (isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None
                and primitive.ErrorComment is None and primitive.OffendingElement is None
                and primitive.AffectedSOPClassUID is not None and primitive.AffectedSOPInstanceUID is not None
                and primitive.Status is not None and _only_standard_sent_handlers(assoc)):
            command_set = encode_c_store_rsp(primitive.MessageIDBeingRespondedTo, primitive.AffectedSOPClassUID,
                                             primitive.AffectedSOPInstanceUID, primitive.Status)
            maximum = dimse.maximum_pdu_size
            if not maximum or len(command_set) + _PDV_OVERHEAD <= maximum:
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, _COMMAND_LAST_FRAGMENT + command_set))
                dimse.dul.send_pdu(pdata)
                return
        pynetdicom_send(primitive, context_id)

    dimse.send_msg = send_msg  # type: ignore[method-assign]
