"""Ground truth parsing without I/O: the CSV's file-level refusals, and final reports (ORU^R01) read field by field."""

from __future__ import annotations

import pytest

from pacsflow_router.config import Hl7FieldMap
from pacsflow_router.results.groundtruth import GroundTruthFileError, parse_labels
from pacsflow_router.workflow.hl7 import Hl7Refusal, is_report, parse_report
from tests.integration.test_final_report_ground_truth import report


@pytest.mark.parametrize(("data", "why"), [
    (b"", "needs a header row"),
    (b"accession,label,finding\xff\n", "not UTF-8"),
    (b"accession,use_case\nA1,ich\n", "label missing"),
])
def test_a_file_it_cannot_read_is_refused_whole(data, why):
    with pytest.raises(GroundTruthFileError, match=why):
        parse_labels(data)


def test_a_row_repeating_the_same_label_counts_once_and_labels_are_case_insensitive():
    parsed = parse_labels(b"ACCESSION,LABEL,FINDING\nA1,Present,X\nA1,YES,X\nA2,No,X\n")
    assert parsed.rejected == []
    assert [(lab["accession"], lab["present"]) for lab in parsed.labels] == [("A1", True), ("A2", False)]


def test_a_final_report_gives_its_accession_status_and_coded_findings():
    parsed = parse_report(report("R1", "ACC1", answer="52101004", version="2.3").encode(), Hl7FieldMap())
    assert (parsed.accession, parsed.result_status, parsed.final) == ("ACC1", "F", True)
    assert parsed.findings == (("ICH", True),)
    preliminary = parse_report(report("R2", "ACC1", status="P").encode(), Hl7FieldMap())
    assert preliminary.final is False


def test_a_report_with_an_unknown_presence_code_names_the_obx_field_not_the_value():
    with pytest.raises(Hl7Refusal) as refused:
        parse_report(report("R3", "ACC1", answer="PERHAPS").encode(), Hl7FieldMap())
    assert refused.value.error.location == "OBX^1^5" and refused.value.error.error_code == 103
    assert "PERHAPS" not in str(refused.value.error)


def test_only_oru_r01_is_a_report():
    assert is_report(report("R4", "ACC1").encode())
    assert not is_report(b"MSH|^~\\&|RIS|H|PF|H|20261130||ORM^O01|C1|P|2.3\r")
    assert not is_report(b"not hl7")
