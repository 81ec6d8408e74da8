"""Encode an SR draft's result-independent attributes while the model runs, so writing the SR encodes only the result.

pydicom writes the whole data set element by element in Python (a 32-slice study's SR: about 15 ms, the evidence
sequence and the patient and study modules a third of it, more with more slices). The draft (:func:`.reports.draft_sr`)
holds everything but the result, built on its own thread while the model runs; :func:`preencode` turns its top-level
attributes, except those the completion changes, into :class:`~pydicom.dataelem.RawDataElement` holding the very
bytes pydicom would write, and :func:`ready_to_write` tells pydicom the data set's original encoding
(:meth:`~pydicom.dataset.Dataset.set_original_encoding`, pydicom's documented way to write raw elements without
decoding them). The file is byte for byte the one the plain data set gives (tests/unit/pacsflow_router/
test_sr_preencode.py); reading an attribute of the completed SR still works (pydicom decodes a raw element on access).

Text is encoded in the draft's Specific Character Set. When the result's text does not fit it (the SR then goes out
in UTF-8), :func:`ready_to_write` puts the original elements back and pydicom encodes everything, as before. Person
names are never pre-encoded (see ``_names_a_person``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32

__all__ = ["Preencoded", "preencode", "ready_to_write"]

#: Left as they are: the character set (decided at completion), Contributing Equipment (its Contribution DateTime is
#: set at completion) and the UIDs the pipeline and the outbox read from the completed SR.
_KEPT = frozenset({0x00080005, 0x0018A001, 0x00080016, 0x00080018, 0x0020000E})
_UNDEFINED = 0xFFFFFFFF


@dataclass
class Preencoded:
    """What :func:`preencode` replaced, and the character set it encoded text in."""

    character_set: object
    """The draft's (0008,0005) value (None when absent)."""
    originals: dict[int, DataElement] = field(default_factory=dict)


def _raw(elem: DataElement, character_set: object) -> RawDataElement:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_data_element(fp, elem, character_set or default_encoding)  # type: ignore[arg-type]
    encoded = fp.getvalue()
    vr = encoded[4:6].decode("ascii")  # as written: pydicom writes a long value of a short VR as UN
    if vr in EXPLICIT_VR_LENGTH_32:
        length, start = int.from_bytes(encoded[8:12], "little"), 12
    else:
        length, start = int.from_bytes(encoded[6:8], "little"), 8
    # An undefined length ends in a Sequence Delimitation Item that pydicom writes again after a raw value.
    value = encoded[start:-8] if length == _UNDEFINED else encoded[start:]
    return RawDataElement(BaseTag(elem.tag), vr, length, value, 0, False, True)


def _names_a_person(elem: DataElement) -> bool:
    # pydicom's PersonName keeps the bytes of its first encoding and returns them for any later one: encoded here in
    # the draft's character set, a name would keep those bytes in an SR that goes out in UTF-8. Such attributes (the
    # patient's and the referring physician's names: a few bytes) are encoded when the SR is written, as before.
    if elem.VR == "PN":
        return True
    return elem.VR == "SQ" and any(e.VR == "PN" for item in elem.value for e in item.iterall())


def preencode(ds: Dataset, *, changing: Iterable[int] = ()) -> Preencoded:
    """Replace the top-level attributes of ``ds`` that will not change by their Explicit VR Little Endian bytes.

    Parameters
    ----------
    ds : pydicom.Dataset
        A data set built in memory (the SR draft), with its Specific Character Set set.
    changing : iterable of int
        Tags the caller will still change or remove (the draft's placeholder content).

    Returns
    -------
    Preencoded
        What :func:`ready_to_write` needs.
    """
    done = Preencoded(ds.get("SpecificCharacterSet"))
    skip = _KEPT | set(changing)
    for elem in list(ds.elements()):
        tag = int(elem.tag)
        if tag in skip or not isinstance(elem, DataElement) or elem.is_buffered or _names_a_person(elem):
            continue
        done.originals[tag] = elem
        ds[tag] = _raw(elem, done.character_set)
    return done


def ready_to_write(ds: Dataset, done: Preencoded) -> None:
    """Let pydicom write the pre-encoded attributes as they are, or put the originals back.

    Call after the last change to ``ds``. When its Specific Character Set is no longer the one the text was
    encoded in, the original elements are restored and pydicom encodes them in the new one.
    """
    character_set = ds.get("SpecificCharacterSet")
    if character_set != done.character_set:
        for tag, elem in done.originals.items():
            ds[tag] = elem
        return
    ds.set_original_encoding(False, True, convert_encodings(character_set) if character_set else default_encoding)
