"""Durable file-system steps shared by the stages that promise durability (the spool, its write-ahead log, the
outbox): one place for what ``os`` leaves to the caller."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries durable (files created, renamed or removed in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
