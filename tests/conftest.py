"""Suite-wide settings: strict pydicom, free loopback ports, TCP_NODELAY for dcmtk and Orthanc."""

import os

import pydicom.config
import pytest

from tests.peers.net import free_port

# STYLE.md: run pydicom with invalid-keyword behaviour set to raise in tests.
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
pydicom.config.INVALID_KEYWORD_BEHAVIOR = "RAISE"

# Debian's dcmtk and Orthanc leave Nagle on unless told otherwise.
os.environ["TCP_NODELAY"] = "1"


@pytest.fixture
def port_factory():
    """Hands out free loopback ports."""
    return free_port
