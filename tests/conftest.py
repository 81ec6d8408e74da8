"""Suite-wide settings: strict pydicom, free loopback ports, TCP_NODELAY for dcmtk and Orthanc, fixed hypothesis seeds."""

import os

import pydicom.config
import pytest
from hypothesis import settings

from tests.peers.net import free_port

# STYLE.md: run pydicom with invalid-keyword behaviour set to raise in tests.
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
pydicom.config.INVALID_KEYWORD_BEHAVIOR = "RAISE"

# Debian's dcmtk and Orthanc leave Nagle on unless told otherwise.
os.environ["TCP_NODELAY"] = "1"

# Every hypothesis test (the de-identification property test, the API and parser fuzzing) draws the same examples on
# every run, so a red build means a regression, never a new random draw shrinking for minutes inside CI;
# ``make fuzz`` (PACSFLOW_FUZZ_RANDOM=1) explores with random seeds. A test's own @settings keeps its other fields.
settings.register_profile("pacsflow-ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("pacsflow-random", print_blob=True)
settings.load_profile("pacsflow-random" if os.environ.get("PACSFLOW_FUZZ_RANDOM") == "1" else "pacsflow-ci")


@pytest.fixture
def port_factory():
    """Hands out free loopback ports."""
    return free_port
