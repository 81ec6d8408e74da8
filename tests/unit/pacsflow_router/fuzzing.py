"""Shared settings of the fuzz tests (hypothesis): a few seconds each in CI, longer under ``make fuzz``.

CI (the default) runs a fixed number of examples, derandomized, so a red build always means a real regression, never a
new random draw; ``make fuzz`` sets ``PACSFLOW_FUZZ_EXAMPLES`` high and ``PACSFLOW_FUZZ_RANDOM=1`` to explore. A crash
found there becomes a regression test with its input committed as bytes (see the ``CRASHERS`` lists).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

EXAMPLES = int(os.environ.get("PACSFLOW_FUZZ_EXAMPLES", "150"))
RANDOM = os.environ.get("PACSFLOW_FUZZ_RANDOM") == "1"

# make fuzz keeps hypothesis's example database (inputs that failed are tried first next time) in the cache, not
# in the repository; CI keeps none.
_DATABASE = (DirectoryBasedExampleDatabase(os.path.join(
    os.environ.get("PACSFLOW_CACHE", os.path.expanduser("~/.cache/pacsflow")), "hypothesis")) if RANDOM else None)

FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=_DATABASE,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
                print_blob=True)

CRASH_DIR = os.environ.get("PACSFLOW_FUZZ_CRASH_DIR")


def keep_crasher(target: str, raw: bytes) -> None:
    """Save an input that crashed ``target`` under ``$PACSFLOW_FUZZ_CRASH_DIR`` (``make fuzz`` sets it), to be
    committed as bytes in the target's ``CRASHERS`` list."""
    if CRASH_DIR:
        import hashlib
        from pathlib import Path

        out = Path(CRASH_DIR) / target
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{hashlib.sha256(raw).hexdigest()[:16]}.bin").write_bytes(raw)
