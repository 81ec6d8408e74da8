"""DICOM test data in the shapes the router receives it."""

from __future__ import annotations

from io import BytesIO

import pydicom


def part10(ds: pydicom.Dataset) -> bytes:
    """``ds`` as a PS3.10 file (preamble, file meta, dataset): what the C-STORE handler hands the spool."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
