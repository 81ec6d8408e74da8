"""``pacsflow ground-truth import`` on SQLite and on a real PostgreSQL: labels land in the store, a second import
changes nothing, bad rows are rejected by line without their values, and the evidence counts the labels."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from pacsflow_router.cli import main
from pacsflow_router.results import evidence
from pacsflow_router.results.store import ResultsStore
from tests.integration.test_evidence_store import FINDING, result_row
from tests.peers.postgres import fresh_database, postgres_server  # noqa: F401  (fixture)

GOOD = f"""\ufeffAccession,Label,Use_Case,Finding
ACC0001,present,ich,
ACC0002,absent,,{FINDING}
ACC0003,1,ich,{FINDING}
ACC0001,positive,ich,
"""
BAD_LINES = """accession,label,use_case,finding
SECRET-ACC-1,maybe,ich,
,present,ich,
SECRET-ACC-2,absent,,
SECRET-ACC-3,absent,ICH_Bad,
ACC0004,present,ich,,extra
ACC0005,absent,ich,
ACC0005,present,ich,
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    yield (f"sqlite:///{tmp_path / 'store.db'}" if request.param == "sqlite"
           else fresh_database(request.getfixturevalue("postgres_server")))


def test_import_is_idempotent_and_feeds_the_evidence(store_url, tmp_path, capsys):
    store = ResultsStore(store_url)
    for n, present in ((1, True), (2, True), (3, False)):
        store.record_result(result_row(n, present=present))
    path = tmp_path / "labels.csv"
    path.write_text(GOOD, encoding="utf-8")

    assert main(["ground-truth", "import", "--url", store_url, str(path)]) == 0
    assert capsys.readouterr().out.startswith("3 label(s) added, 0 changed, 0 already there; 0 row(s) rejected")
    assert main(["ground-truth", "import", "--url", store_url, str(path)]) == 0
    assert "0 label(s) added, 0 changed, 3 already there" in capsys.readouterr().out
    assert {(r["accession"], r["use_case"], r["finding_code"], r["present"], r["source"])
            for r in store.ground_truth()} == {("ACC0001", "ich", "", True, "csv"),
                                               ("ACC0002", "", FINDING, False, "csv"),
                                               ("ACC0003", "ich", FINDING, True, "csv")}
    v1 = evidence.use_case_evidence(store, "ich")["versions"][0]
    # ACC0001 AI+ truth+ (TP); ACC0002 AI+ truth- (FP); ACC0003 AI- truth+ (FN).
    assert (v1["true_positive"], v1["false_positive"], v1["true_negative"], v1["false_negative"]) == (1, 1, 0, 1)
    assert v1["labelled"] == 3
    store.close()


def test_bad_rows_are_rejected_by_line_without_their_values_and_the_good_ones_imported(store_url, tmp_path, capsys):
    path = tmp_path / "labels.csv"
    path.write_text(BAD_LINES, encoding="utf-8")
    assert main(["ground-truth", "import", "--url", store_url, str(path)]) == 1
    out, err = capsys.readouterr()
    assert "1 label(s) added" in out and "6 row(s) rejected" in out
    rejected = [line.split(":")[0] for line in err.splitlines()]
    assert rejected == ["line 2", "line 3", "line 4", "line 5", "line 6", "line 8"]
    assert "label is not one of" in err and "contradicts line 7" in err and "neither use_case nor finding" in err
    assert "SECRET" not in out + err and "maybe" not in err
    store = ResultsStore(store_url)
    assert [(r["accession"], r["present"]) for r in store.ground_truth()] == [("ACC0005", False)]
    store.close()


def test_a_file_without_the_required_columns_imports_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    path = tmp_path / "labels.csv"
    path.write_text("accession,diagnosis\nACC1,present\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "pacsflow_router.cli", "ground-truth", "import", "--url", url,
                          str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "unknown column(s) diagnosis" in run.stderr and "nothing imported" in run.stderr
    assert "ACC1" not in run.stderr
