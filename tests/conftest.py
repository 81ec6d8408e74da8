"""Suite-wide settings: strict pydicom, free loopback ports, TCP_NODELAY for dcmtk and Orthanc."""

import os
import socket

import pydicom.config
import pytest

# STYLE.md: run pydicom with invalid-keyword behaviour set to raise in tests.
pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
pydicom.config.INVALID_KEYWORD_BEHAVIOR = "RAISE"

# Debian's dcmtk and Orthanc leave Nagle on unless told otherwise.
os.environ["TCP_NODELAY"] = "1"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port_factory():
    """Hands out free loopback ports."""
    return free_port
