"""DICOM test data in the shapes the router receives it."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file


def part10(ds: pydicom.Dataset) -> bytes:
    """``ds`` as a PS3.10 file (preamble, file meta, dataset): what the C-STORE handler hands the spool."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def scanner_file(name: str) -> Path:
    """A real scanner file shipped by pydicom or the ``pydicom-data`` dev dependency.

    Missing is a failure, never a skip: CI installs pydicom-data, so a skip would hide that the real-data tests
    stopped running.
    """
    path = get_testdata_file(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not available: install the dev extras (pydicom-data) with `make venv`")
    return Path(path)
