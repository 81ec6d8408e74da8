"""An audit database written by the previous release is refused at start-up with a message that says what to do.

The older tables are created from the previous release's own DDL (what ``audit.py`` at f098f45 created in SQLite), not
by dropping columns from today's, so the test sees exactly what an upgraded router finds on disk.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pacsflow_router.errors import AuditSchemaError, ConfigError
from pacsflow_router.results.audit import AuditLog

REPO = Path(__file__).resolve().parents[3] / "model_repository"


# What pacsflow f098f45 created in SQLite (its audit.py tables, as sqlite_master holds them).
PREVIOUS_RELEASE_DDL = """
CREATE TABLE audit_results (
    id INTEGER NOT NULL,
    recorded_at DATETIME NOT NULL,
    study_key VARCHAR(64) NOT NULL,
    use_case VARCHAR(63) NOT NULL,
    mode VARCHAR(16) NOT NULL,
    model_name VARCHAR(128) NOT NULL,
    model_version INTEGER NOT NULL,
    probability FLOAT,
    critical BOOLEAN NOT NULL,
    outcome VARCHAR(255) NOT NULL,
    timings JSON NOT NULL,
    destination VARCHAR(63),
    destination_status VARCHAR(32),
    PRIMARY KEY (id),
    CONSTRAINT audit_results_once UNIQUE (study_key, use_case, model_name, model_version)
);
CREATE TABLE audit_events (
    id INTEGER NOT NULL,
    recorded_at DATETIME NOT NULL,
    study_key VARCHAR(64) NOT NULL,
    use_case VARCHAR(63),
    destination VARCHAR(63) NOT NULL,
    outcome VARCHAR(32) NOT NULL,
    detail VARCHAR(1024),
    PRIMARY KEY (id)
);
INSERT INTO audit_results (recorded_at, study_key, use_case, mode, model_name, model_version, probability, critical,
                           outcome, timings)
VALUES ('2026-11-01 10:00:00.000000', '0000000000000000000000000000000000000000000000000000000000000000',
        'ich-head-ct', 'assistive', 'ich_detector', 1, 0.2, 0, 'reported', '{}');
"""


def _previous_release_db(path: Path) -> str:
    """An audit database as pacsflow f098f45 left it, with one result in it."""
    db = sqlite3.connect(path)
    try:
        db.executescript(PREVIOUS_RELEASE_DDL)
    finally:
        db.close()
    return f"sqlite:///{path}"


def test_an_older_audit_database_is_refused_naming_what_is_missing_and_what_to_do(tmp_path):
    url = _previous_release_db(tmp_path / "audit.db")
    with pytest.raises(AuditSchemaError) as info:
        AuditLog(url)
    message = str(info.value)
    assert isinstance(info.value, ConfigError), "start-up maps it to exit 2 like a bad config"
    assert str(tmp_path / "audit.db") in message and "older pacsflow" in message
    assert "audit_results lacks columns revision, sr_key, amends_sr_key, selection, inputs" in message
    assert "audit_events lacks columns sr_key" in message
    assert "move it aside" in message and "migrate" in message and "issue 9" in message


def test_the_older_database_is_left_as_it_was(tmp_path):
    url = _previous_release_db(tmp_path / "audit.db")
    with pytest.raises(AuditSchemaError):
        AuditLog(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        columns = [row[1] for row in conn.execute(text("PRAGMA table_info(audit_results)"))]
        rows = conn.execute(text("SELECT count(*) FROM audit_results")).scalar_one()
    engine.dispose()
    assert "revision" not in columns and rows == 1


def test_columns_added_by_hand_without_the_new_unique_constraint_are_refused_too(tmp_path):
    """Someone added the columns with ALTER TABLE: an amendment (revision 1) would still collide with revision 0."""
    url = _previous_release_db(tmp_path / "audit.db")
    engine = create_engine(url)
    with engine.begin() as conn:
        for ddl in ("revision INTEGER NOT NULL DEFAULT 0", "sr_key VARCHAR(64)", "amends_sr_key VARCHAR(64)",
                    "selection VARCHAR(1024)", "inputs JSON"):
            conn.execute(text(f"ALTER TABLE audit_results ADD COLUMN {ddl}"))
        conn.execute(text("ALTER TABLE audit_events ADD COLUMN sr_key VARCHAR(64)"))
    engine.dispose()
    with pytest.raises(AuditSchemaError) as info:
        AuditLog(url)
    assert "no unique constraint over (study_key, use_case, model_name, model_version, revision)" in str(info.value)


def test_todays_database_opens_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    AuditLog(url).close()
    AuditLog(url).close()  # a restart finds its own schema and accepts it


def test_the_router_exits_2_with_the_message_and_no_traceback(tmp_path, port_factory):
    url = _previous_release_db(tmp_path / "audit.db")
    config = tmp_path / "router.yaml"
    config.write_text(textwrap.dedent(f"""\
        aeTitle: PACSFLOW
        port: {port_factory()}
        spoolDir: {tmp_path / 'spool'}
        inference: {{backend: embedded, modelRepository: {REPO}}}
        audit: {{url: "{url}"}}
        metrics: {{port: {port_factory()}}}
        """))
    proc = subprocess.run([sys.executable, "-m", "pacsflow_router", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "was written by an older pacsflow" in proc.stderr and "move it aside" in proc.stderr
    assert "Traceback" not in proc.stderr
