"""What an SR copies from its source images: the patient/study modules, their character set, de-identification.

highdicom copies the Patient, General Study and related modules from the first evidence dataset. Real sources
carry two things that break that copy or make the result invalid, and both are handled here, before and after
highdicom builds the SR:

- **Specific Character Set** (0008,0005). The source's value is carried into the SR so the patient's name is
  written in the repertoire the source (and the PACS) uses, for every defined term of PS3.3 C.12.1.1.2 (Tables
  C.12-2 to C.12-5), including ISO 2022 code extensions whose first value is empty (``\\ISO 2022 IR 87``: the
  default repertoire in G0, Kanji by escape sequence). highdicom's own check rejects that empty first value (and
  a single code-extension value), so highdicom is handed UTF-8 and the real value is set on the finished SR.
  When the SR holds text the source's repertoire cannot represent (a statement, a use-case name) or the source's
  value is not a defined term, the SR is written in UTF-8 (``ISO_IR 192``), which represents everything pydicom
  decoded: correct text beats a copied label. A few defined terms are written as an equivalent (same bytes for
  every character) because pydicom or dciodvfy mishandles them verbatim (``_WRITTEN_AS``).
- **De-identification** (PS3.3 C.7.1.1, Patient module). Patient Identity Removed (0012,0062) ``YES`` requires
  De-identification Method (0012,0063) or its code sequence (0012,0064) (Type 1C). De-identified sources often
  carry the flag alone; copied as is, the SR fails dciodvfy. The flag is kept (the SR is as de-identified as its
  source, and a reader must still be told) and the method says that the source did not name one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence

from pydicom import charset
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

__all__ = [
    "DEFINED_CHARACTER_SETS", "UNSPECIFIED_DEIDENTIFICATION_METHOD", "UTF8", "apply_character_set",
    "character_set_of", "fitting_character_set", "prepare_first_evidence", "set_character_set", "sr_character_set",
]

log = logging.getLogger(__name__)

UTF8 = "ISO_IR 192"

# PS3.3 C.12.1.1.2: the defined terms of Specific Character Set. Table C.12-2 (single-byte, no code extensions),
# C.12-3 (single-byte with code extensions), C.12-4 (multi-byte with code extensions), C.12-5 (multi-byte
# without code extensions, stand-alone: never combined with another value).
_SINGLE_BYTE = ("ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144", "ISO_IR 127", "ISO_IR 126",
                "ISO_IR 138", "ISO_IR 148", "ISO_IR 203", "ISO_IR 13", "ISO_IR 166")
_CODE_EXTENSIONS = ("ISO 2022 IR 6", "ISO 2022 IR 100", "ISO 2022 IR 101", "ISO 2022 IR 109", "ISO 2022 IR 110",
                    "ISO 2022 IR 144", "ISO 2022 IR 127", "ISO 2022 IR 126", "ISO 2022 IR 138", "ISO 2022 IR 148",
                    "ISO 2022 IR 203", "ISO 2022 IR 13", "ISO 2022 IR 166")
_MULTI_BYTE_EXTENSIONS = ("ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58")
_STAND_ALONE = (UTF8, "GB18030", "GBK")
DEFINED_CHARACTER_SETS: frozenset[str] = frozenset(
    (*_SINGLE_BYTE, *_CODE_EXTENSIONS, *_MULTI_BYTE_EXTENSIONS, *_STAND_ALONE)
)
# The default repertoire (no value, an empty first value, ISO 2022 IR 6) is ASCII (PS3.5 6.1.2.5.1). pydicom
# decodes it as Latin-1 to be lenient with sources; a writer must be strict.
_DEFAULT_REPERTOIRE = ("", "ISO 2022 IR 6")
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})

# LO, at most 64 characters (PS3.5 6.2).
UNSPECIFIED_DEIDENTIFICATION_METHOD = "Not specified by the source images"


def character_set_of(header: Dataset) -> list[str]:
    """The source's Specific Character Set as a list of defined terms; ``[]`` for the default repertoire.

    Parameters
    ----------
    header : pydicom.Dataset
        A source image header.

    Returns
    -------
    list of str
        The values, whitespace stripped, an empty first value kept (it means the default repertoire in G0 before
        code extensions); ``[UTF8]`` when the value is not a valid combination of defined terms (a misspelling,
        a stand-alone set combined with another): pydicom has decoded the text as best it can, and UTF-8 writes
        what it decoded.
    """
    raw = header.get("SpecificCharacterSet")
    if raw is None:
        return []
    values = [str(v).strip() for v in (raw if isinstance(raw, Sequence | MultiValue) and not isinstance(raw, str)
                                       else [raw])]
    if not any(values):
        return []
    if len(values) == 1:
        return values if values[0] in DEFINED_CHARACTER_SETS else [UTF8]
    first, rest = values[0], values[1:]
    # With more than one value every value uses code extensions (PS3.3 C.12.1.1.2); the first may be empty.
    valid_first = first in _DEFAULT_REPERTOIRE or first in _CODE_EXTENSIONS
    valid_rest = all(v in _CODE_EXTENSIONS or v in _MULTI_BYTE_EXTENSIONS for v in rest)
    return values if valid_first and valid_rest else [UTF8]


# How a source's value is written into the SR where copying it verbatim would make the SR wrong or invalid. Each
# substitute encodes every character of the original with the same bytes (or, for UTF-8, decodes to the same text):
# - one value with code extensions has nothing to extend: its plain equivalent (dciodvfy rejects G1 characters
#   under a lone "ISO 2022 IR 100");
# - ISO_IR 13 alone: JIS X 0201 katakana are valid in G1, but dciodvfy rejects them unless Kanji are declared too;
#   the usual Japanese pair declares the same bytes;
# - ISO_IR 203 (Latin-9) and ISO 2022 IR 58 (GB 2312): pydicom 3.0 has no codec for the first and writes the second
#   without its escape sequences, so the SR would carry bytes no reader decodes as written: UTF-8;
# - GBK is a subset of GB18030 with the same bytes, and dciodvfy knows only GB18030.
_WRITTEN_AS: dict[tuple[str, ...], list[str]] = {
    **{(f"ISO 2022 IR {n}",): [f"ISO_IR {n}"] for n in (100, 101, 109, 110, 144, 127, 126, 138, 148, 166)},
    ("ISO 2022 IR 6",): [],
    ("ISO_IR 13",): ["ISO 2022 IR 13", "ISO 2022 IR 87"],
    ("ISO 2022 IR 13",): ["ISO 2022 IR 13", "ISO 2022 IR 87"],
    ("ISO_IR 203",): [UTF8],
    ("ISO 2022 IR 203",): [UTF8],
    ("GBK",): ["GB18030"],
}
_UNWRITABLE = ("ISO 2022 IR 203", "ISO 2022 IR 58")


def sr_character_set(header: Dataset) -> list[str]:
    """The Specific Character Set the SR is written in: the source's (:func:`character_set_of`), or its equivalent
    where the source's value cannot be written verbatim (see ``_WRITTEN_AS``); ``[]`` is the default repertoire."""
    terms = character_set_of(header)
    if any(t in _UNWRITABLE for t in terms):
        return [UTF8]
    return list(_WRITTEN_AS.get(tuple(terms), terms))


def _python_encodings(terms: Sequence[str]) -> list[str]:
    if not terms:
        return ["ascii"]
    # pydicom's table, the codecs it writes with; the default repertoire checked as the ASCII it is.
    return ["ascii" if t in _DEFAULT_REPERTOIRE else charset.python_encoding.get(t, charset.default_encoding)
            for t in terms]


def _texts(ds: Dataset) -> Iterable[str]:
    for elem in ds.iterall():
        if elem.VR not in _TEXT_VRS or elem.value is None:
            continue
        values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
        for value in values:
            if isinstance(value, PersonName):
                yield str(value)
            elif isinstance(value, str):
                yield value


def _representable(ds: Dataset, terms: Sequence[str]) -> bool:
    encodings = _python_encodings(terms)
    seen: set[str] = set()
    for text in _texts(ds):
        for ch in set(text) - seen:
            seen.add(ch)
            if ch.isascii() and ch != "\x1b":
                continue
            if not any(_encodes(ch, enc) for enc in encodings):
                return False
    return True


def _encodes(ch: str, encoding: str) -> bool:
    try:
        ch.encode(encoding)
    except (UnicodeError, LookupError):
        return False
    return True


def apply_character_set(sr: Dataset, source: Dataset) -> None:
    """Give a finished SR the source's Specific Character Set, or UTF-8 when its text does not fit in it.

    Parameters
    ----------
    sr : pydicom.Dataset
        The SR, built with any valid character set (values are Python strings until written).
    source : pydicom.Dataset
        The header the patient/study modules were copied from.
    """
    set_character_set(sr, fitting_character_set(sr, sr_character_set(source)))


def fitting_character_set(ds: Dataset, terms: Sequence[str]) -> list[str]:
    """``terms`` when every text value in ``ds`` (and its sequences) can be written in them, else UTF-8.

    :func:`apply_character_set` in two steps, for an SR written in parts: the draft's text is checked against the
    source's terms while the model runs, the result's against what that gave (the same verdict as the whole SR's).
    """
    if _representable(ds, terms):
        return list(terms)
    # Logged without the value: the text that did not fit may be a patient's name.
    log.info("SR text does not fit the source's Specific Character Set; writing the SR in UTF-8")
    return [UTF8]


def set_character_set(sr: Dataset, terms: Sequence[str]) -> None:
    """Set (0008,0005) Specific Character Set to ``terms`` (removed for the default repertoire, ``[]``)."""
    if not terms:
        if "SpecificCharacterSet" in sr:
            del sr.SpecificCharacterSet
    else:
        sr.SpecificCharacterSet = terms[0] if len(terms) == 1 else list(terms)


def _deidentification(first: Dataset) -> None:
    removed = first.get("PatientIdentityRemoved")
    if removed is None:
        return
    value = str(removed).strip().upper()
    if value not in ("YES", "NO"):
        # Enumerated values YES/NO (PS3.3 C.7.1.1): anything else is dropped rather than copied.
        del first.PatientIdentityRemoved
        return
    _replace(first, "PatientIdentityRemoved", value)
    codes = first.get("DeidentificationMethodCodeSequence")
    if codes is not None and not all(
        item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue") for item in codes
    ):
        del first.DeidentificationMethodCodeSequence
        codes = None
    method = first.get("DeidentificationMethod")
    if value == "YES" and not codes and not (method and any(str(m).strip() for m in _as_list(method))):
        _replace(first, "DeidentificationMethod", UNSPECIFIED_DEIDENTIFICATION_METHOD)


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, MultiValue | list) else [value]


def prepare_first_evidence(first: Dataset) -> None:
    """Make the dataset highdicom copies the patient/study modules from safe to copy (in place).

    Sets a character set highdicom accepts (the real one is applied by :func:`apply_character_set` on the
    finished SR) and repairs the de-identification attributes (see the module docstring).

    Parameters
    ----------
    first : pydicom.Dataset
        A copy of the first source header, about to be the first evidence dataset.
    """
    # Decode every text value with the source's character set first: values still raw (pydicom decodes lazily)
    # would otherwise be decoded with the one set below.
    for _ in first.iterall():
        pass
    if "ISO 2022 IR 58" in character_set_of(first):
        _strip_gb2312_escapes(first)
    _replace(first, "SpecificCharacterSet", UTF8)
    _deidentification(first)


# pydicom 3.0 hands ISO 2022 IR 58 text to Python's gb2312 codec escape sequences and all (it assumes the codec
# strips them, as iso2022_jp does); the decoded text then holds ESC $ ) A before each GB 2312 run.
_GB2312_ESCAPES = re.compile("\x1b(?:\\$\\)A|\\(B)")


def _strip_gb2312_escapes(first: Dataset) -> None:
    for elem in list(first):
        if elem.VR not in _TEXT_VRS or elem.VM != 1 or elem.value is None:
            continue
        text = str(elem.value)
        if "\x1b" in text:
            cleaned = _GB2312_ESCAPES.sub("", text)
            _replace(first, elem.keyword, PersonName(cleaned) if elem.VR == "PN" else cleaned)


def _replace(ds: Dataset, keyword: str, value: object) -> None:
    # A new element, never an assignment to the existing one: Dataset.update shares element objects, so setting
    # the value in place would change the source header too.
    if keyword in ds:
        del ds[keyword]
    setattr(ds, keyword, value)
