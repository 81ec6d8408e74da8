"""An audit database written by a previous release is migrated in place on open (Alembic, keeping its rows); one
written by a newer release is refused at start-up with a message that says what to do.

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
from sqlalchemy import create_engine, inspect, text

from pacsflow_router.errors import AuditSchemaError, ConfigError
from pacsflow_router.results import store
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


def _amend(audit: AuditLog) -> bool:
    """Record revision 1 of the old database's one result (an amended SR)."""
    return audit.record_result(
        study_key="0" * 64, use_case="ich-head-ct", mode="assistive", model_name="ich_detector", model_version=1,
        probability=0.7, critical=False, outcome="reported", timings={}, revision=1, sr_key="s1", amends_sr_key="s0")


def test_an_older_audit_database_is_migrated_in_place_keeping_its_rows(tmp_path):
    url = _previous_release_db(tmp_path / "audit.db")
    audit = AuditLog(url)
    try:
        assert store.current(audit.engine) == store.head()
        [old] = audit.records()
        assert (old["study_key"], old["probability"], old["outcome"]) == ("0" * 64, 0.2, "reported")
        assert (old["revision"], old["sr_key"], old["selection"], old["inputs"]) == (0, None, None, None)
        assert _amend(audit) is True, "the unique constraint now covers the revision"
        assert _amend(audit) is False, "and still makes a reprocess a no-op"
        columns = {c["name"] for c in inspect(audit.engine).get_columns("audit_events")}
        assert "sr_key" in columns
    finally:
        audit.close()


def test_columns_added_by_hand_without_the_new_unique_constraint_are_fixed_too(tmp_path):
    """Someone added the columns with ALTER TABLE: the migration still widens the unique constraint."""
    url = _previous_release_db(tmp_path / "audit.db")
    engine = create_engine(url)
    with engine.begin() as conn:
        for ddl in ("revision INTEGER NOT NULL DEFAULT 0", "sr_key VARCHAR(64)", "amends_sr_key VARCHAR(64)",
                    "selection VARCHAR(1024)", "inputs JSON"):
            conn.execute(text(f"ALTER TABLE audit_results ADD COLUMN {ddl}"))
        conn.execute(text("ALTER TABLE audit_events ADD COLUMN sr_key VARCHAR(64)"))
    engine.dispose()
    audit = AuditLog(url)
    try:
        assert _amend(audit) is True and len(audit.records()) == 2
    finally:
        audit.close()


def test_todays_database_opens_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    AuditLog(url).close()
    AuditLog(url).close()  # a restart finds its own schema at head and migrates nothing


def _newer_release_db(path: Path) -> str:
    url = f"sqlite:///{path}"
    AuditLog(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    engine.dispose()
    return url


def test_a_database_from_a_newer_release_is_refused_and_left_as_it_was(tmp_path):
    url = _newer_release_db(tmp_path / "audit.db")
    with pytest.raises(AuditSchemaError) as info:
        AuditLog(url)
    assert isinstance(info.value, ConfigError), "start-up maps it to exit 2 like a bad config"
    assert str(tmp_path / "audit.db") in str(info.value) and "newer pacsflow" in str(info.value)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "9999_from_the_future"
    engine.dispose()


def test_the_router_exits_2_with_the_message_and_no_traceback(tmp_path, port_factory):
    url = _newer_release_db(tmp_path / "audit.db")
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
    assert "newer pacsflow" in proc.stderr and "point the store URL at another database" in proc.stderr
    assert "Traceback" not in proc.stderr
