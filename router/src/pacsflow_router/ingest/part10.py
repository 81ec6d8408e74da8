"""A received C-STORE data set made into a Part-10 file, cheaply, on the association thread.

Two things the receiver did through general-purpose code cost more than the fsync that makes an instance durable
(py-spy on a loaded 2-core machine: about 1.2 ms each per 512 KB CT slice):

* pynetdicom's ``Event.encoded_dataset()`` builds the File Meta Information as a pydicom ``Dataset`` (every UID
  re-validated) and writes it with pydicom's writer. :func:`file_header` encodes the same seven elements directly:
  they are fixed by PS3.10 7.1 (explicit VR little endian, group length first), so the encoding is a few
  ``struct.pack`` calls; the unit tests compare it byte for byte with pynetdicom's.
* the spool's index read parsed the whole Part-10 file up to Pixel Data. :func:`index_attributes` lets pydicom read
  only the data set (the meta was just built from the request) and stop after Series Instance UID (0020,000E), the
  last attribute the index needs; tags are in ascending order at the top level (PS3.5 7.1).

No received value becomes a path or is logged here.
"""

from __future__ import annotations

import struct
from io import BytesIO

from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from ..errors import UnparseableInstanceError
from .spool import INDEX_TAGS, index_values, parse_index_attributes

#: 128-byte preamble and the "DICM" prefix (PS3.10 7.1).
PREAMBLE = b"\0" * 128 + b"DICM"
_LAST_INDEX_TAG = 0x0020000E  # Series Instance UID: the highest tag in INDEX_TAGS
_INDEX_TAG_NUMBERS: list[BaseTag | int] = [Tag(keyword) for keyword in INDEX_TAGS]


def _element(group_element: int, vr: bytes, value: bytes) -> bytes:
    # Explicit VR little endian, short form (2-byte length): UI, SH, UL (PS3.5 7.1.2).
    if len(value) > 0xFFFF:
        raise UnparseableInstanceError("a UID in the C-STORE request is too long to be one; nothing was stored")
    return struct.pack("<HH2sH", group_element >> 16, group_element & 0xFFFF, vr, len(value)) + value


def _ui(value: str) -> bytes:
    try:
        encoded = value.encode("ascii")
    except UnicodeEncodeError:
        raise UnparseableInstanceError("a UID in the C-STORE request is not ASCII; nothing was stored") from None
    return encoded + b"\0" if len(encoded) % 2 else encoded  # UI pads with NULL to even length (PS3.5 6.2)


def file_header(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                implementation_class_uid: str, implementation_version_name: str) -> bytes:
    """Preamble, prefix and File Meta Information (group 0002) for a received data set (PS3.10 7.1).

    Parameters
    ----------
    sop_class_uid, sop_instance_uid
        The C-STORE request's Affected SOP Class and Instance UIDs (Media Storage SOP Class / Instance UID).
    transfer_syntax_uid
        The accepted presentation context's transfer syntax: the data set is stored exactly as received in it.
    implementation_class_uid, implementation_version_name
        The receiving implementation's identification (PS3.7 D.3.3.2).

    Returns
    -------
    bytes
        What precedes the data set in the Part-10 file.

    Raises
    ------
    UnparseableInstanceError
        A UID is not ASCII or absurdly long.
    """
    version = implementation_version_name.encode("ascii")
    if len(version) % 2:
        version += b" "  # SH pads with a space
    body = b"".join((
        struct.pack("<HH2s2sI", 0x0002, 0x0001, b"OB", b"\0\0", 2) + b"\0\1",  # File Meta Information Version
        _element(0x00020002, b"UI", _ui(sop_class_uid)),
        _element(0x00020003, b"UI", _ui(sop_instance_uid)),
        _element(0x00020010, b"UI", _ui(transfer_syntax_uid)),
        _element(0x00020012, b"UI", _ui(implementation_class_uid)),
        _element(0x00020013, b"SH", version),
    ))
    return PREAMBLE + _element(0x00020000, b"UL", struct.pack("<I", len(body))) + body


def _stop_after_index_tags(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) > _LAST_INDEX_TAG


def index_attributes(dataset: bytes | memoryview, transfer_syntax_uid: str, header: bytes = b"") -> tuple[
        str, str, str, str]:
    """Study, series, SOP Instance UID and modality of a received data set, read no further than needed.

    Parameters
    ----------
    dataset
        The data set as received (no file meta).
    transfer_syntax_uid
        Its transfer syntax. A deflated data set is read through :func:`~.spool.parse_index_attributes` on
        ``header + dataset`` (pydicom inflates whole files only).
    header
        The Part-10 header (:func:`file_header`), used for deflated data sets only.

    Raises
    ------
    UnparseableInstanceError
        Not parseable as DICOM, or a UID the spool indexes by is missing.
    """
    if transfer_syntax_uid == DeflatedExplicitVRLittleEndian:
        return parse_index_attributes(header + bytes(dataset))
    try:
        ds = read_dataset(BytesIO(dataset), transfer_syntax_uid == ImplicitVRLittleEndian,
                          transfer_syntax_uid != ExplicitVRBigEndian, stop_when=_stop_after_index_tags,
                          specific_tags=_INDEX_TAG_NUMBERS)
        values = [ds.get(k) for k in INDEX_TAGS]
    # As in parse_index_attributes: on hostile bytes pydicom raises almost anything, and every one of them means
    # "unparseable" (a 0xC000-range status), never a crashed association.
    except Exception as exc:  # noqa: BLE001
        raise UnparseableInstanceError(
            f"received data is not a parseable DICOM instance ({type(exc).__name__}); nothing was stored"
        ) from None
    return index_values(values)
