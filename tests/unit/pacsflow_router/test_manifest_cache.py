"""load_manifest reads a model.json once per version of the file: an edit in place is read again, a broken edit is
refused with the file's name, and a missing manifest says what is missing."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from pacsflow_router.analysis.manifest import MANIFEST_FILE, load_manifest
from pacsflow_router.config import ModelRef
from pacsflow_router.errors import ConfigError
from tests.peers.inprocess import MODEL_REPOSITORY

ICH = ModelRef(name="ich_detector", version=1)


def test_an_edited_manifest_is_read_again(tmp_path):
    shutil.copytree(MODEL_REPOSITORY / "ich_detector", tmp_path / "ich_detector",
                    ignore=shutil.ignore_patterns("*.onnx"))
    path = tmp_path / "ich_detector" / MANIFEST_FILE
    first = load_manifest(tmp_path, ICH)
    assert load_manifest(tmp_path, ICH) is first  # cached

    doc = json.loads(path.read_text())
    doc["description"] = "edited in place"
    path.write_text(json.dumps(doc))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert load_manifest(tmp_path, ICH).description == "edited in place"

    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_manifest(tmp_path, ICH)
    path.unlink()
    with pytest.raises(ConfigError, match="cannot read model manifest"):
        load_manifest(tmp_path, ICH)
