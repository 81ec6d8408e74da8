"""An audit database written by the previous release is refused at start-up with a message that says what to do.

The older tables are created from the previous release's own DDL (``audit.py`` at f098f45), not by dropping columns
from today's, so the test sees exactly what an upgraded router finds on disk.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    insert,
    text,
)

from pacsflow_router.errors import AuditSchemaError, ConfigError
from pacsflow_router.results.audit import AuditLog

REPO = Path(__file__).resolve().parents[3] / "model_repository"


def _previous_release_db(path: Path) -> str:
    """An audit database as pacsflow f098f45 wrote it (its DDL verbatim), with one result in it."""
    metadata = MetaData()
    results = Table(
        "audit_results", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        Column("study_key", String(64), nullable=False),
        Column("use_case", String(63), nullable=False),
        Column("mode", String(16), nullable=False),
        Column("model_name", String(128), nullable=False),
        Column("model_version", Integer, nullable=False),
        Column("probability", Float, nullable=True),
        Column("critical", Boolean, nullable=False),
        Column("outcome", String(255), nullable=False),
        Column("timings", JSON, nullable=False),
        Column("destination", String(63), nullable=True),
        Column("destination_status", String(32), nullable=True),
        UniqueConstraint("study_key", "use_case", "model_name", "model_version", name="audit_results_once"),
    )
    Table(
        "audit_events", metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        Column("study_key", String(64), nullable=False),
        Column("use_case", String(63), nullable=True),
        Column("destination", String(63), nullable=False),
        Column("outcome", String(32), nullable=False),
        Column("detail", String(1024), nullable=True),
    )
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(results).values(
            recorded_at=dt.datetime.now(dt.UTC), study_key="0" * 64, use_case="ich-head-ct", mode="assistive",
            model_name="ich_detector", model_version=1, probability=0.2, critical=False, outcome="reported",
            timings={}))
    engine.dispose()
    return url


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
