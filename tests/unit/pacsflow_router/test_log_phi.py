"""No patient data in the router's log: library warnings go through logging and its no-PHI filter."""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Iterator

import highdicom.valuerep
import pytest

from pacsflow_router.__main__ import NoPhiFilter, RouterSettings, configure_logging

NAME = "Secretname Johnny"  # no '^': highdicom warns about it, quoting it
UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


@pytest.fixture(params=["text", "json"])
def router_log(request: pytest.FixtureRequest) -> Iterator[io.StringIO]:
    """The router's logging configuration (both formats), its handler writing to a buffer instead of stderr."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(RouterSettings(log_format=request.param))
    (handler,) = root.handlers
    buffer = io.StringIO()
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        logging.captureWarnings(False)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_highdicom_person_name_warning_is_logged_without_the_name(router_log):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        highdicom.valuerep.check_person_name(NAME)  # warnings.warn(f'The string "{name}" is unlikely ...')
    # highdicom.base logs the same name through its logger when it builds an SR from such a source.
    logging.getLogger("highdicom.base").warning(f'value of argument "patient_name" is potentially invalid: "{NAME}"')
    logging.getLogger("pydicom").warning(f"Invalid value for UI: '{UID}'")
    err = router_log.getvalue()
    assert "unlikely to represent" in err, "the warning itself still reaches the log, through logging"
    assert "py.warnings" in err
    assert "potentially invalid" in err and "Invalid value for UI" in err
    assert "Secretname" not in err and "Johnny" not in err and UID not in err


def test_exception_text_is_scrubbed_but_own_messages_are_kept(router_log):
    try:
        raise ValueError(f'cannot encode "{NAME}" for study {UID}')
    except ValueError:
        logging.getLogger("pacsflow_router.service").exception("study %s failed unexpectedly", "3f2a9c0d1e2b4a5c")
    err = router_log.getvalue()
    assert "study 3f2a9c0d1e2b4a5c failed unexpectedly" in err and "ValueError" in err
    assert "Secretname" not in err and UID not in err
    assert "test_log_phi.py" in err, "traceback file names are kept"


def test_scrub_keeps_the_shape_of_the_message():
    assert NoPhiFilter.scrub(f'The string "{NAME}" is unlikely') == 'The string "<redacted>" is unlikely'
    assert NoPhiFilter.scrub(f"uid {UID} here") == "uid <uid> here"
    assert NoPhiFilter.scrub("version 3.0.2 of pydicom") == "version 3.0.2 of pydicom"
