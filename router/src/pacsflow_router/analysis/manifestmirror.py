"""Where a router finds a model's manifest (``model.json``, ``preprocess.json``, the algorithm version string).

On the embedded backend that is the model repository it runs (``inference.modelRepository``). On Triton it must be
what Triton serves: a model team drops a version into the Triton cluster's repository, and a router whose image
does not carry that version's manifest could neither preprocess nor report it. The rendered ensemble of every
version carries its manifest in its ``parameters`` (models/repository.py ``MANIFEST_PARAMETERS``);
:class:`ManifestMirror` copies them into a folder of the router's own (``inference.manifestMirror``, on the spool
volume) laid out as a repository, so the lookups of analysis/manifest.py and analysis/preprocess.py read them
unchanged.

Each (model, version) is fetched on first use and again after ``max_age`` seconds (one small HTTP request; files
are rewritten only when their text changed, atomically). When Triton cannot be asked (down, model not loaded yet)
the last copy on disk is used, else the image's repository if it has that version; else the error stands (the
study waits for Triton, or a version Triton does not have is an audited error, as inference would say).
An ensemble rendered without the parameters (an older render) means the image's repository, as before.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .. import metrics
from ..config import ModelRef
from ..errors import InferenceError
from .manifest import MANIFEST_FILE, version_file

log = logging.getLogger(__name__)

#: Fetches the manifest files Triton serves for a version (file name -> text), None when it serves none.
Fetch = Callable[[ModelRef], "dict[str, str] | None"]


class ManifestMirror:
    """The repository root to read a pinned model's manifest from (see the module docstring).

    Parameters
    ----------
    root
        The mirror's folder (created on demand).
    fallback
        The repository in the router's image (``inference.modelRepository``).
    fetch
        ``TritonBackend.served_manifest``.
    max_age
        Seconds a fetched manifest is used before Triton is asked again.
    clock
        Monotonic clock (tests).
    """

    def __init__(self, root: str | Path, fallback: str | Path, fetch: Fetch, *, max_age: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.fallback = Path(fallback)
        self._fetch = fetch
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._known: dict[tuple[str, int], tuple[float, Path]] = {}

    def repository(self, model: ModelRef) -> Path:
        """The repository root whose ``<name>/<version>`` (or ``<name>``) holds ``model``'s manifest now.

        Raises
        ------
        InferenceError
            Triton could not say (``InferenceUnavailableError``: the study waits) or has no such version
            (``ModelNotFoundError``), and neither the mirror nor the image has a copy.
        """
        key = (model.name, model.version)
        with self._lock:
            known = self._known.get(key)
            if known is not None and self._clock() - known[0] < self._max_age:
                return known[1]
            try:
                files = self._fetch(model)
            except InferenceError as exc:
                where = self._copy_on_hand(model)
                if where is None:
                    metrics.MANIFEST_REFRESHES.labels(model.name, "none").inc()
                    raise
                metrics.MANIFEST_REFRESHES.labels(model.name, "last-copy").inc()
                log.warning("manifest of %s v%d not fetched from Triton (%s); using the copy in %s",
                            model.name, model.version, type(exc).__name__, where)
                return where
            if files is None:
                where = self.fallback
                metrics.MANIFEST_REFRESHES.labels(model.name, "image").inc()
            else:
                self._write(model, files)
                where = self.root
                metrics.MANIFEST_REFRESHES.labels(model.name, "mirrored").inc()
            self._known[key] = (self._clock(), where)
            return where

    def _copy_on_hand(self, model: ModelRef) -> Path | None:
        if (self.root / model.name / str(model.version) / MANIFEST_FILE).is_file():
            return self.root
        folder = self.fallback / model.name
        if (folder / str(model.version)).is_dir() and version_file(folder, model.version, MANIFEST_FILE).is_file():
            return self.fallback  # the image has this version (its own model.json, or the model's)
        return None

    def _write(self, model: ModelRef, files: dict[str, str]) -> None:
        folder = self.root / model.name / str(model.version)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in {p.name for p in folder.iterdir() if p.is_file()} - set(files):
            (folder / stale).unlink()  # a file the new render no longer carries falls back to the model folder's
        for name, text in files.items():
            path = folder / name
            data = text.encode("utf-8")
            try:
                if path.read_bytes() == data:
                    continue
            except OSError:
                pass
            # Atomic replace: a reader sees the old file or the new one. No fsync: the mirror is a cache, fetched
            # again on first use after a restart.
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
            log.info("manifest of %s v%d: %s as Triton serves it", model.name, model.version, name)
