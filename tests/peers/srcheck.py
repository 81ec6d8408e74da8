"""Validate DICOM SR files with both real validators: dicom3tools ``dciodvfy`` and dcmtk ``dsrdump``.

Each catches what the other misses: dciodvfy checks IOD modules and attribute rules, dsrdump parses the content
tree (relationship constraints, SCOORD3D without a frame of reference, invalid codes). Independent of
pacsflow_router so the demo and benchmarks can use it too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SRCheck:
    """What the two validators said about one file."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dump: str = ""

    @property
    def ok(self) -> bool:
        """True when neither validator reported an error."""
        return not self.errors


def tools_available() -> bool:
    """True when both ``dciodvfy`` and ``dsrdump`` are on PATH."""
    return shutil.which("dciodvfy") is not None and shutil.which("dsrdump") is not None


def check_sr(path: str | Path) -> SRCheck:
    """Run ``dciodvfy`` and ``dsrdump`` on ``path``.

    dciodvfy "Error" lines and dsrdump "E:"/"F:" lines or a non-zero exit are errors; dciodvfy "Warning" and
    dsrdump "W:" lines are warnings. An "invalid code" printed by dsrdump is an error too.
    """
    env = {**os.environ, "TCP_NODELAY": "1"}
    result = SRCheck()
    # errors="replace": both tools print attribute values (a patient's name) in the file's own character set.
    proc = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, errors="replace", env=env,
                          timeout=60)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("Error"):
            result.errors.append(f"dciodvfy: {line}")
        elif line.startswith("Warning"):
            result.warnings.append(f"dciodvfy: {line}")
    proc = subprocess.run(["dsrdump", "-ll", "warn", "+Pc", str(path)], capture_output=True, text=True,
                          errors="replace", env=env,
                          timeout=60)
    result.dump = proc.stdout
    if proc.returncode != 0:
        result.errors.append(f"dsrdump: exit status {proc.returncode}")
    for line in proc.stderr.splitlines():
        if line.startswith(("E:", "F:")):
            result.errors.append(f"dsrdump: {line}")
        elif line.startswith("W:"):
            result.warnings.append(f"dsrdump: {line}")
    if "invalid code" in proc.stdout:
        result.errors.append("dsrdump: content tree contains an invalid code")
    return result
