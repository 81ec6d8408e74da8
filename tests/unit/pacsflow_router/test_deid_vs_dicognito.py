"""pacsflow's Annex E de-identification against an independent implementation, PyPI ``dicognito``, on the same
inputs: pydicom's test files, pydicom-data's scanner files and the project's phantom CT.

For every attribute of every input (nested ones too) each tool's fate is classified: kept, replaced, emptied,
removed. Where the two differ, the difference must fall under one of the explanations below (docs/security.md lists
them too); any other difference fails the test. The direction that matters most has no explanation at all: an
attribute dicognito changes that pacsflow leaves as it was.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable

import pydicom
from dicognito.anonymizer import Anonymizer
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from pacsflow_router.config import Deidentification
from pacsflow_router.deid.annex_e import PseudonymKeys, basic_action, deidentify
from tests.unit.pacsflow_router.realinputs import phantom_datasets

#: pydicom's own test files (pydicom.data) and pydicom-data's (fetched by the same call): CT, MR, US-free images with
#: private blocks, an RT plan and structure set, an ECG waveform with a nested acquisition context, a secondary
#: capture, a JPEG 2000 MR and an enhanced CT.
FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtstruct.dcm", "waveform_ecg.dcm", "SC_rgb.dcm",
         "JPEG2000.dcm", "emri_small.dcm", "eCT_Supplemental.dcm")

CHANGED = frozenset({"replaced", "emptied", "removed", "inside-removed"})

Fate = tuple[str, str]  # (fate, VR)
Explanation = Callable[[int, Fate, Fate], bool]

#: Why the two tools may differ, in the words docs/security.md uses. First match wins.
EXPLANATIONS: tuple[tuple[str, Explanation], ...] = (
    ("private attribute: the Basic Profile removes every private attribute not on a safe list; dicognito keeps "
     "private attributes (it rewrites only UIDs and dates it recognises in them)",
     lambda tag, d, p: (tag >> 16) % 2 == 1 and p[0] in CHANGED),
    ("inside a sequence Table E.1-1 removes (X): pacsflow removes the whole sequence, dicognito walks into it",
     lambda tag, d, p: p[0] == "inside-removed"),
    ("both drop the original value: dicognito substitutes a plausible fake (names, IDs, dates shifted), pacsflow "
     "applies the table's action (Z: empty, X: removed, D: a dummy)",
     lambda tag, d, p: d[0] in CHANGED and p[0] in CHANGED),
    ("Table E.1-1 lists the attribute and pacsflow applies its action; dicognito's scope is narrower (names, IDs, "
     "UIDs, dates, addresses, institutions) and keeps it: descriptions, comments, patient characteristics, device "
     "and RT labels, the data set's trailing padding",
     lambda tag, d, p: d[0] == "kept" and p[0] in CHANGED and basic_action(tag) is not None),
)


def _fates(original: Dataset, new: Dataset) -> dict[tuple[int, ...], Fate]:
    out: dict[tuple[int, ...], Fate] = {}

    def walk(old: Dataset, now: Dataset | None, path: tuple[int, ...]) -> None:
        for elem in old:
            key = (*path, int(elem.tag))
            if now is None:
                out[key] = ("inside-removed", elem.VR)
            elif elem.tag not in now:
                out[key] = ("removed", elem.VR)
            elif elem.VR == "SQ":
                out[key] = ("kept", elem.VR)
                items = list(now[elem.tag].value)
                for i, item in enumerate(elem.value):
                    walk(item, items[i] if i < len(items) else None, (*key, i))
                continue
            elif now[elem.tag].is_empty and not elem.is_empty:
                out[key] = ("emptied", elem.VR)
            elif now[elem.tag].value == elem.value:
                out[key] = ("kept", elem.VR)
            else:
                out[key] = ("replaced", elem.VR)
            if now is None and elem.VR == "SQ":
                for i, item in enumerate(elem.value):
                    walk(item, None, (*key, i))

    walk(original, new, ())
    return out


def _inputs() -> list[tuple[str, Dataset]]:
    found = [(name, pydicom.dcmread(get_testdata_file(name), force=True)) for name in FILES]  # type: ignore[arg-type]
    phantom, _truth = phantom_datasets(3, slices=2, size=32)
    return found + [(f"phantom CT slice {i}", ds) for i, ds in enumerate(phantom)]


def test_every_difference_from_dicognito_is_explained() -> None:
    unexplained: list[str] = []
    used: Counter[str] = Counter()
    for name, original in _inputs():
        by_dicognito = copy.deepcopy(original)
        Anonymizer(seed="pacsflow-comparison").anonymize(by_dicognito)
        by_pacsflow = deidentify(original, Deidentification(allow_burned_in_annotation=True),
                                 PseudonymKeys(b"comparison-key" * 3)).dataset
        theirs, ours = _fates(original, by_dicognito), _fates(original, by_pacsflow)
        for path, fate in ours.items():
            other = theirs.get(path, ("inside-removed", fate[1]))
            if other[0] == fate[0] or (other[0] in CHANGED and fate[0] in CHANGED and other[0] == fate[0]):
                continue
            tag = path[-1]
            reason = next((why for why, applies in EXPLANATIONS if applies(tag, other, fate)), None)
            if reason is None:
                keyword = pydicom.datadict.keyword_for_tag(tag) or f"{tag:08X}"
                unexplained.append(f"{name}: {keyword} ({fate[1]}): dicognito {other[0]}, pacsflow {fate[0]}")
            else:
                used[reason] += 1
    assert not unexplained, "differences from dicognito without an explanation:\n" + "\n".join(unexplained)
    assert used, "the comparison found no difference at all: the inputs or the classification are broken"

