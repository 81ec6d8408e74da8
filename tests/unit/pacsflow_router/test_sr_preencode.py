"""The SR written from a pre-encoded draft (results/preencode.py) is byte for byte the SR pydicom encodes from scratch.

Each case writes the completed SR as the outbox does (``save_as``), then puts the draft's original elements back
into the same data set, forgets its original encoding and writes it again: the two files must be identical. The
cases cover a positive, a negative, a critical amendment, a source in Latin-1 with a non-ASCII patient name, and a
result whose text does not fit the source's character set (the SR then goes out in UTF-8: the pre-encoded draft is
set aside).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from io import BytesIO

import pydicom
import pytest
from pydicom.dataelem import RawDataElement

from pacsflow_router.results.reports import Predecessor, complete_sr, draft_sr
from tests.unit.pacsflow_router.test_reports import SPEC, USE_CASE, phantom_study_and_result

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def _written(sr: pydicom.Dataset) -> bytes:
    out = BytesIO()
    sr.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _latin1(study) -> None:
    for s in study.series[0].slices:
        s.header.SpecificCharacterSet = "ISO_IR 100"
        s.header.PatientName = "Müller^Jürgen"


@pytest.mark.parametrize("case", ["positive", "negative", "critical-amendment", "latin-1", "result-needs-utf8"])
def test_the_preencoded_sr_is_the_sr_encoded_from_scratch(case):
    study, result = phantom_study_and_result(41, lesion=case != "negative",
                                             probability=0.05 if case == "negative" else 0.95)
    spec, predecessor = SPEC, None
    if case == "critical-amendment":
        result = dataclasses.replace(result, critical=True)
        spec = dataclasses.replace(SPEC, critical_threshold=0.9)
        predecessor = Predecessor(study.ref.study_uid, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.3.5")
    if case in ("latin-1", "result-needs-utf8"):
        _latin1(study)
    if case == "result-needs-utf8":
        spec = dataclasses.replace(SPEC, present_statement="Blutung \u2013 \u03a9 nachweisbar")  # not in Latin-1
    draft = draft_sr(study, study.series[0], USE_CASE, software_version="test", spec=spec, predecessor=predecessor)
    assert draft.preencoded is not None and draft.preencoded.originals  # the evidence, patient and study modules
    sr = complete_sr(draft, study, result, USE_CASE, spec=spec, contribution_datetime=WHEN)
    raw = [tag for tag in draft.preencoded.originals if isinstance(sr._dict[tag], RawDataElement)]
    fast = _written(sr)

    for tag, elem in draft.preencoded.originals.items():
        sr[tag] = elem
    sr.set_original_encoding(None, None)
    assert fast == _written(sr)
    if case == "result-needs-utf8":
        assert raw == [] and sr.SpecificCharacterSet == "ISO_IR 192"  # set aside, encoded again in UTF-8
    else:
        assert raw  # written as pre-encoded
        assert sr.get("SpecificCharacterSet") == study.series[0].slices[0].header.get("SpecificCharacterSet")
    back = pydicom.dcmread(BytesIO(fast))
    assert back.PatientName == sr.PatientName and back.SOPInstanceUID == sr.SOPInstanceUID
