"""Every Specific Character Set the standard defines, copied into the SR and encoded correctly.

Each source is a phantom study written to disk with a character set and a patient name encoded in it, loaded by the
router's own volume loader (so the name is decoded from bytes, as from a scanner), reported, written, read back and
run through dciodvfy and dsrdump. pydicom's own charset files (``chr*.dcm``) provide real names and real values,
among them ISO 2022 code extensions with an empty first value (``\\ISO 2022 IR 87``), which once gave no SR at all.
"""

from __future__ import annotations

import dataclasses

import pydicom
import pytest
from pydicom.data import get_charset_files

from pacsflow_router.results.patient_modules import DEFINED_CHARACTER_SETS, UTF8, character_set_of
from tests.unit.pacsflow_router.realinputs import (
    SPEC,
    finding_at,
    items,
    load,
    phantom_datasets,
    report,
    valid,
    write,
)

CHARSET_FILES = sorted(get_charset_files("chr*.dcm"))

# A name written in each defined term (PS3.3 C.12.1.1.2 Tables C.12-2 to C.12-5), in characters of that repertoire.
NAMES: dict[str | tuple[str, ...], str] = {
    "ISO_IR 100": "Müller^Jürgen", "ISO_IR 101": "Dvořák^Zdeněk", "ISO_IR 109": "Ħal^Ġużeppi",
    "ISO_IR 110": "Bērziņš^Jānis", "ISO_IR 144": "Иванов^Иван", "ISO_IR 127": "قباني^نزار",
    "ISO_IR 126": "Παπαδόπουλος^Γιώργος", "ISO_IR 138": "כהן^דוד", "ISO_IR 148": "Öztürk^Şükrü",
    # pydicom 3.0 has no codec for ISO_IR 203 (Latin-9) and falls back to Latin-1: the name uses letters the two share.
    "ISO_IR 203": "Müller^Zoë", "ISO_IR 13": "ﾔﾏﾀﾞ^ﾀﾛｳ", "ISO_IR 166": "สมชาย^ใจดี",
    "ISO 2022 IR 6": "Smith^John", "ISO 2022 IR 100": "Müller^Jürgen", "ISO 2022 IR 101": "Dvořák^Zdeněk",
    "ISO 2022 IR 109": "Ħal^Ġużeppi", "ISO 2022 IR 110": "Bērziņš^Jānis", "ISO 2022 IR 144": "Иванов^Иван",
    "ISO 2022 IR 127": "قباني^نزار", "ISO 2022 IR 126": "Παπαδόπουλος^Γιώργος", "ISO 2022 IR 138": "כהן^דוד",
    "ISO 2022 IR 148": "Öztürk^Şükrü", "ISO 2022 IR 203": "Müller^Zoë", "ISO 2022 IR 13": "ﾔﾏﾀﾞ^ﾀﾛｳ",
    "ISO 2022 IR 166": "สมชาย^ใจดี",
    ("", "ISO 2022 IR 87"): "Yamada^Tarou=山田^太郎", ("ISO 2022 IR 6", "ISO 2022 IR 87"): "Yamada^Tarou=山田^太郎",
    ("ISO 2022 IR 13", "ISO 2022 IR 87"): "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎",
    ("", "ISO 2022 IR 87", "ISO 2022 IR 159"): "Yamada^Tarou=山田^太郎",
    ("", "ISO 2022 IR 149"): "Hong^Gildong=洪^吉洞=홍^길동", ("", "ISO 2022 IR 58"): "Wang^XiaoDong=王^小东",
    "ISO_IR 192": "Wang^XiaoDong=王^小東", "GB18030": "Wang^XiaoDong=王^小东", "GBK": "Wang^XiaoDong=王^小东",
}

# What the SR declares where it is not the source's own value (same bytes, or UTF-8 where pydicom cannot write it).
WRITTEN_AS: dict[str | tuple[str, ...], str | list[str] | None] = {
    **{f"ISO 2022 IR {n}": f"ISO_IR {n}" for n in (100, 101, 109, 110, 144, 127, 126, 138, 148, 166)},
    "ISO 2022 IR 6": None, "ISO_IR 13": ["ISO 2022 IR 13", "ISO 2022 IR 87"],
    "ISO 2022 IR 13": ["ISO 2022 IR 13", "ISO 2022 IR 87"], "ISO_IR 203": UTF8, "ISO 2022 IR 203": UTF8,
    ("", "ISO 2022 IR 58"): UTF8, "GBK": "GB18030",
}



def _iso2022_ir58(name: str) -> bytes:
    """``name`` as PS3.5 Annex K writes it: each GB 2312 run designated to G1 by ESC $ ) A (pydicom 3.0 cannot
    encode this, so the test writes the bytes itself)."""
    out = b""
    for component in name.split("^"):
        chunks = b"" if not out else b"^"
        for part in component.split("="):
            if chunks and not chunks.endswith(b"^"):
                chunks += b"="
            chunks += part.encode("ascii") if part.isascii() else b"\x1b$)A" + part.encode("gb2312")
        out += chunks
    return out


def _sr_for(tmp_path, charset, name, seed):
    """Source study in ``charset`` with patient ``name`` -> loaded -> SR -> written and read back."""
    datasets, truth = phantom_datasets(seed, slices=3, size=32)
    raw = _iso2022_ir58(name) if "ISO 2022 IR 58" in _values(charset) else None
    for ds in datasets:
        ds.SpecificCharacterSet = charset
        if name is not None:
            ds.PatientName = "X" * len(raw) if raw is not None else name
    paths = write(datasets, tmp_path / "source")
    if raw is not None:
        for path in paths:
            path.write_bytes(path.read_bytes().replace(b"X" * len(raw), raw))
    study = load(paths, truth.study_instance_uid)
    (series,) = study.series
    finding = finding_at(series, 1, 16, 16)
    return valid(report(study, finding), tmp_path / "sr.dcm"), study


def _values(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


@pytest.mark.parametrize("path", CHARSET_FILES, ids=lambda p: p.rsplit("/", 1)[-1])
def test_pydicom_charset_file_names_survive_into_a_valid_sr(tmp_path, path):
    source = pydicom.dcmread(path)
    name = source.get("PatientName")
    reread, study = _sr_for(tmp_path, source.SpecificCharacterSet, name, seed=31)

    expected = str(name) if name is not None else str(study.first_header.PatientName)
    assert str(reread.PatientName) == expected
    assert _values(reread.SpecificCharacterSet) == [v.strip() for v in _values(source.SpecificCharacterSet)]


def _term_id(term) -> str:
    return "\\".join(term) if isinstance(term, tuple) else term


def test_every_defined_term_has_a_name_in_this_test():
    covered = {t for key in NAMES for t in (key if isinstance(key, tuple) else (key,)) if t}
    assert covered == DEFINED_CHARACTER_SETS


@pytest.mark.filterwarnings("ignore:Unknown encoding 'ISO_IR 203'", "ignore:Unknown encoding 'ISO 2022 IR 203'")
@pytest.mark.parametrize("term", list(NAMES), ids=_term_id)
def test_every_defined_character_set_is_copied_and_decodes_back(tmp_path, term):
    charset = list(term) if isinstance(term, tuple) else term
    name = NAMES[term]
    reread, _ = _sr_for(tmp_path, charset, name, seed=32)
    assert str(reread.PatientName) == name
    expected = WRITTEN_AS.get(term, charset)
    if expected is None:
        assert "SpecificCharacterSet" not in reread
    else:
        assert _values(reread.SpecificCharacterSet) == _values(expected)


def test_a_misspelt_character_set_gives_a_utf8_sr_with_the_name_pydicom_decoded(tmp_path):
    with pytest.warns(UserWarning, match="ISO-IR 100"):
        reread, _ = _sr_for(tmp_path, "ISO-IR 100", "Müller^Jürgen", seed=33)
    assert reread.SpecificCharacterSet == UTF8
    assert str(reread.PatientName) == "Müller^Jürgen"


def test_character_set_of_keeps_an_empty_first_value_and_rejects_invalid_combinations():
    ds = pydicom.Dataset()
    assert character_set_of(ds) == []
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    assert character_set_of(ds) == ["", "ISO 2022 IR 87"]
    ds.SpecificCharacterSet = ["ISO_IR 192", "ISO 2022 IR 87"]  # a stand-alone set combined: invalid
    assert character_set_of(ds) == [UTF8]
    ds.SpecificCharacterSet = ["ISO_IR 100", "ISO 2022 IR 87"]  # first value without code extensions: invalid
    assert character_set_of(ds) == [UTF8]


def test_sr_text_outside_the_source_repertoire_makes_the_sr_utf8(tmp_path):
    datasets, truth = phantom_datasets(34, slices=3, size=32)
    for ds in datasets:
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Müller^Jürgen"
    study = load(write(datasets, tmp_path / "source"), truth.study_instance_uid)
    (series,) = study.series
    finding = finding_at(series, 1, 16, 16)
    spec = dataclasses.replace(SPEC, present_statement="Blutung ≥ 5 mm vermutet (KI).")  # ≥ is not in Latin-1
    sr = valid(report(study, finding, spec=spec), tmp_path / "sr.dcm")
    assert sr.SpecificCharacterSet == UTF8
    assert str(sr.PatientName) == "Müller^Jürgen"
    assert any(i.TextValue == "Blutung ≥ 5 mm vermutet (KI)." for i in items(sr, "TEXT"))
