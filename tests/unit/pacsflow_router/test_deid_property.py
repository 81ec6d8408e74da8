"""Property: after de-identification, no value of an attribute that Table E.1-1 removes or replaces is left anywhere
in the tree.

Hypothesis generates data sets of attributes drawn from the table and from the rest of the data dictionary, every
VR, nested sequences (three levels), private blocks, and text in several character sets (Latin-1, Cyrillic, Greek,
UTF-8); each is encoded in its character set and decoded again (as from the wire), de-identified with a drawn
selection of options, and encoded once more. Bounded for CI: 200 examples, a per-example deadline.
"""

from __future__ import annotations

import datetime as dt
from io import BytesIO

import pydicom
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence

from pacsflow_router.config import Deidentification
from pacsflow_router.deid.annex_e import _DUMMY, PseudonymKeys, _options, action_for, deidentify
from pacsflow_router.deid.annex_e_table import TABLE

#: Character sets and letters of their repertoires (PS3.3 C.12.1.1.2).
CHARSETS = {
    "ISO_IR 100": "abcdefghijklmnopqrstuvwxyzÄÖÜßéèçñ",
    "ISO_IR 144": "абвгдежзийклмнопрстуфхцчшщыэюяАБВГД",
    "ISO_IR 126": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔ",
    "ISO_IR 192": "abcxyzÄÖ漢字カタカナ한국어עברית",
}
_SIMPLE_VRS = ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT",
               "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT", "OB", "OW", "OF", "OD", "OL", "OV")
_SKIP_GROUPS = (0x0000, 0x0002, 0xFFFE)


def _pool() -> tuple[list[tuple[int, str]], list[int]]:
    """(tag, VR) of plain attributes: every one the table lists and up to 4 unlisted per VR; and SQ tags."""
    listed, unlisted, sequences = [], {}, []
    for tag, entry in sorted(DicomDictionary.items()):
        vr, retired = entry[0], entry[3]
        if (tag >> 16) in _SKIP_GROUPS or tag in (0x00080005, 0x7FE00010) or tag & 0xFFFF == 0:
            continue
        if vr == "SQ":
            if tag in TABLE or (not retired and len(sequences) < 40):
                sequences.append(tag)
            continue
        if vr not in _SIMPLE_VRS:
            continue
        if tag in TABLE:
            listed.append((tag, vr))
        elif not retired and len(unlisted.setdefault(vr, [])) < 4:
            unlisted[vr].append((tag, vr))
    return listed + [t for ts in unlisted.values() for t in ts], sequences


PLAIN, SEQUENCES = _pool()


def text(alphabet: str, max_size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=3, max_size=max_size)


def value(vr: str, letters: str) -> st.SearchStrategy[object]:
    upper = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return {
        "AE": text(upper, 16), "CS": text(upper + "_", 16), "AS": st.from_regex(r"\A[0-9]{3}[DWMY]\Z"),
        "DA": st.dates(dt.date(1900, 1, 1)).map(lambda d: d.strftime("%Y%m%d")),
        "DT": st.datetimes(dt.datetime(1900, 1, 1)).map(lambda d: d.strftime("%Y%m%d%H%M%S")),
        "TM": st.times().map(lambda t: t.strftime("%H%M%S")),
        "DS": st.integers(-10**9, 10**9).map(str), "IS": st.integers(-2**31, 2**31 - 1).map(str),
        "LO": text(letters, 64), "SH": text(letters, 16), "LT": text(letters + " ", 80),
        "ST": text(letters + " ", 80), "UT": text(letters + " ", 80), "UC": text(letters, 80),
        "PN": st.tuples(text(letters, 20), text(letters, 20)).map("^".join),
        "UI": st.lists(st.integers(1, 99999), min_size=3, max_size=8).map(lambda p: "1.2." + ".".join(map(str, p))),
        "UR": text("abcdefghijklmnopqrstuvwxyz", 30).map(lambda s: f"http://{s}.example/"),
        "US": st.integers(0, 2**16 - 1), "SS": st.integers(-2**15, 2**15 - 1), "UL": st.integers(0, 2**32 - 1),
        "SL": st.integers(-2**31, 2**31 - 1), "UV": st.integers(0, 2**64 - 1), "SV": st.integers(-2**63, 2**63 - 1),
        "FL": st.floats(-1e6, 1e6, width=32), "FD": st.floats(-1e9, 1e9), "AT": st.integers(0, 2**32 - 1),
    }.get(vr, st.binary(min_size=8, max_size=32).map(lambda b: b[: len(b) // 8 * 8]))


@st.composite
def datasets(draw: st.DrawFn, letters: str, depth: int = 0) -> Dataset:
    ds = Dataset()
    for tag, vr in draw(st.lists(st.sampled_from(PLAIN), min_size=3, max_size=25 if depth == 0 else 6,
                                 unique=True)):
        ds.add(DataElement(tag, vr, draw(value(vr, letters))))
    if depth < 3:
        for tag in draw(st.lists(st.sampled_from(SEQUENCES), max_size=3 if depth == 0 else 1, unique=True)):
            items = draw(st.lists(datasets(letters, depth + 1), min_size=1, max_size=2))
            ds.add(DataElement(tag, "SQ", Sequence(items)))
    for group in draw(st.lists(st.sampled_from([0x0009, 0x0019, 0x0029, 0x7FD1]), max_size=2, unique=True)):
        block = ds.private_block(group, draw(text("ABCDEFGHIJ XYZ", 30)), create=True)
        for offset in range(draw(st.integers(1, 3))):
            vr = draw(st.sampled_from(["LO", "SH", "UI", "OB", "DA", "PN"]))
            block.add_new(0x10 + offset, vr, draw(value(vr, letters)))
    return ds


@st.composite
def instances(draw: st.DrawFn) -> Dataset:
    charset = draw(st.sampled_from(sorted(CHARSETS)))
    ds = draw(datasets(CHARSETS[charset]))
    ds.SpecificCharacterSet = charset
    ds.StudyInstanceUID = draw(value("UI", ""))
    ds.PatientID = draw(value("LO", CHARSETS[charset]))
    ds.PatientName = draw(value("PN", CHARSETS[charset]))
    return ds


options = st.builds(
    Deidentification,
    retain_longitudinal_temporal_information=st.sampled_from(["off", "modified-dates", "full-dates"]),
    retain_patient_characteristics=st.booleans(), retain_device_identity=st.booleans(),
    retain_institution_identity=st.booleans(), clean_descriptors=st.booleans(),
)

_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UR", "UT", "OB", "OW", "OF", "OD", "OL", "OV", "UN"})


def _values(elem: DataElement) -> list[object]:
    raw = elem.value
    values = list(raw) if elem.VM > 1 and not isinstance(raw, bytes | str) else [raw]
    return [bytes(v) if isinstance(v, bytes | bytearray) else str(v) for v in values if v not in (None, "", b"")]


def _split(ds: Dataset, selected: list[str], phi: set[object], kept: set[object]) -> None:
    """Original values of attributes the table removes or replaces (``phi``) and of those it keeps (``kept``)."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _split(item, selected, phi, kept)
            continue
        action = "X" if elem.tag.is_private else action_for(int(elem.tag), elem.VR, selected)
        if action in (None, "K", "C"):
            kept.update(_values(elem))  # every VR: a kept SL 1 may equal a removed DS '1' as text
        elif elem.VR in _TEXT_VRS:
            phi.update(_values(elem))


def _encode(ds: Dataset) -> bytes:
    buf = BytesIO()
    dcmwrite(buf, ds, implicit_vr=False, little_endian=True)
    return buf.getvalue()


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(instances(), options)
def test_nothing_the_table_removes_or_replaces_survives(original: Dataset, chosen: Deidentification) -> None:
    received = pydicom.dcmread(BytesIO(_encode(original)), force=True)  # decoded in its character set
    phi: set[object] = set()
    kept: set[object] = set()
    _split(received, _options(chosen), phi, kept)
    result = deidentify(received, chosen, PseudonymKeys(b"property-test-key" * 2))
    sent = pydicom.dcmread(BytesIO(_encode(result.dataset)), force=True)
    dummies = {str(v) for v in _DUMMY.values()} | {b"\x00\x00"}
    # What the profile itself writes (Longitudinal Temporal Information Modified, PatientIdentityRemoved,
    # DeidentificationMethod) is a constant of the profile, not a value kept from the input, even when a generated
    # input happened to carry the same word (e.g. REMOVED) somewhere.
    dummies |= {v for tag in (0x00280303, 0x00120062, 0x00120063) if tag in sent for v in _values(sent[tag])}
    leaked = (phi - kept) - dummies
    for elem in sent.iterall():
        if elem.VR == "SQ":
            continue
        found = leaked.intersection(_values(elem))
        assert not found, f"{elem.tag} {elem.name} still holds {found!r}"
    assert not any(elem.tag.is_private for elem in sent.iterall())
    assert sent.PatientIdentityRemoved == "YES"
    assert sent.StudyInstanceUID != received.StudyInstanceUID
