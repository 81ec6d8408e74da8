"""Ground-truth labels from a CSV file (accession -> finding present or absent): parsing and validation, no I/O.

The file has a header row. Columns (names case-insensitive, in any order):

``accession`` (required)
    The study's accession number, as the results store holds it.
``label`` (required)
    ``present``/``absent`` (also ``positive``/``negative``, ``1``/``0``, ``true``/``false``, ``yes``/``no``).
``use_case``, ``finding``
    Which use case and/or which finding code (the use case's finding type code, e.g. SNOMED ``50960005``) the label
    is about; at least one of them per row. A label naming only the finding applies to every use case that detects it.

A row that breaks a rule is rejected with its line number and the rule; the value itself is never echoed (it may be
an accession number). A second row with the same (accession, use case, finding) and another label is rejected too:
the file contradicts itself there.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from typing import Any

COLUMNS = ("accession", "label", "use_case", "finding")
LABELS = {"present": True, "positive": True, "1": True, "true": True, "yes": True,
          "absent": False, "negative": False, "0": False, "false": False, "no": False}
_USE_CASE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # an AIUseCase name (DNS label)
_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")


class GroundTruthFileError(ValueError):
    """The file as a whole cannot be read (no header, a missing or unknown column, not UTF-8)."""


@dataclass
class ParsedLabels:
    """The labels a file gives, and the rows it rejected: (line number, why)."""

    labels: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


def _row_label(row: dict[str, str]) -> dict[str, Any] | str:
    """The label of one row, or why it is rejected."""
    accession, use_case, finding = (row.get(k, "").strip() for k in ("accession", "use_case", "finding"))
    label = row.get("label", "").strip().lower()
    if not accession:
        return "accession is empty"
    if len(accession) > 64 or not _PRINTABLE.match(accession):
        # The store's column; DICOM's Accession Number (SH) is 16 at most, HL7's filler order numbers may be longer.
        return "accession is longer than 64 characters or holds control characters"
    if label not in LABELS:
        return f"label is not one of {', '.join(LABELS)}"
    if not use_case and not finding:
        return "neither use_case nor finding is given: say which use case or finding code the label is about"
    if use_case and not _USE_CASE.match(use_case):
        return "use_case is not an AIUseCase name (lower-case letters, digits and '-', at most 63)"
    if finding and (len(finding) > 64 or not _PRINTABLE.match(finding)):
        return "finding is longer than 64 characters or holds control characters"
    return {"accession": accession, "use_case": use_case, "finding_code": finding, "present": LABELS[label]}


def parse_labels(data: bytes) -> ParsedLabels:
    """Parse a ground-truth CSV file.

    Parameters
    ----------
    data : bytes
        The file's content (UTF-8, a byte-order mark allowed).

    Returns
    -------
    ParsedLabels
        The valid rows' labels (each key once) and the rejected rows.

    Raises
    ------
    GroundTruthFileError
        When the file is not UTF-8, has no header, lacks ``accession`` or ``label``, or has an unknown column.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GroundTruthFileError(f"the file is not UTF-8 (byte {exc.start}); save it as UTF-8 CSV") from exc
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames:
        raise GroundTruthFileError("the file is empty: it needs a header row (accession,label,use_case,finding)")
    header = [name.strip().lower() for name in reader.fieldnames]
    unknown = [name for name in header if name not in COLUMNS]
    if unknown:
        raise GroundTruthFileError(f"unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}")
    missing = [name for name in ("accession", "label") if name not in header]
    if missing:
        raise GroundTruthFileError(f"column(s) {', '.join(missing)} missing from the header")
    reader.fieldnames = header
    out = ParsedLabels()
    seen: dict[tuple[str, str, str], tuple[bool, int]] = {}
    for row in reader:
        line = reader.line_num
        if None in row:
            out.rejected.append((line, "more fields than the header has columns"))
            continue
        label = _row_label({k: v or "" for k, v in row.items()})
        if isinstance(label, str):
            out.rejected.append((line, label))
            continue
        key = (label["accession"], label["use_case"], label["finding_code"])
        if key in seen:
            if seen[key][0] != label["present"]:
                out.rejected.append((line, f"contradicts line {seen[key][1]} (same accession, use case and "
                                           "finding, another label)"))
            continue
        seen[key] = (label["present"], line)
        out.labels.append(label)
    return out
