"""``pacsflow api-key`` prints a token once and the store keeps only its hash; rotate and revoke act on that key."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import create_engine, text

from pacsflow_router.cli import main
from pacsflow_router.results.store import ResultsStore


def test_create_prints_a_working_token_once_and_stores_only_its_hash(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    assert main(["api-key", "create", "--role", "clinical-lead", "--url", url]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    key_id, secret = token.split(".", 1)
    assert key_id in err and "shown once" in err and secret not in err
    engine = create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, secret_hash, role FROM api_keys")).all()
    engine.dispose()
    assert [(r.id, r.role) for r in rows] == [(key_id, "clinical-lead")] and secret not in rows[0].secret_hash
    store = ResultsStore(url)
    try:
        assert store.authenticate(token) == (key_id, "clinical-lead")
    finally:
        store.close()

    assert main(["api-key", "rotate", key_id, "--url", url]) == 0
    rotated = capsys.readouterr().out.strip()
    assert main(["api-key", "revoke", key_id, "--url", url]) == 0
    store = ResultsStore(url)
    try:
        assert store.authenticate(token) is None and store.authenticate(rotated) is None
    finally:
        store.close()
    assert main(["api-key", "revoke", key_id, "--url", url]) == 1
    assert "no active API key" in capsys.readouterr().err


def test_an_unknown_role_is_a_usage_error_and_stores_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    proc = subprocess.run([sys.executable, "-m", "pacsflow_router.cli", "api-key", "create", "--role", "root",
                           "--url", url], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "invalid choice: 'root'" in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "store.db").exists()
