"""``pacsflow-router --config FILE``: the router process.

Loads and validates the routing config (exit 2 with one clear message when it is bad, or when the audit database
it names was written by an older release), configures logging once,
then runs :class:`pacsflow_router.service.RouterService` until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from .config import load_config
from .errors import ConfigError


class RouterSettings(BaseSettings):
    """Process settings (not routing): ``PACSFLOW_ROUTER_LOG_LEVEL``, ``PACSFLOW_ROUTER_LOG_FORMAT``."""

    model_config = SettingsConfigDict(env_prefix="PACSFLOW_ROUTER_")

    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    config_poll_seconds: float = 2.0


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out)


class NoPhiFilter(logging.Filter):
    """Scrubs values that libraries put into log messages, warnings and exception texts (STYLE.md: no patient data).

    The router's own messages carry no patient data by construction (study keys, never UIDs or names). Libraries
    are not so careful: highdicom warns with the patient's name quoted (``The string "DOE JOHN" is unlikely to
    represent the intended person name``), pydicom quotes invalid element values, and exception messages from
    either end up in tracebacks. So every record from outside ``pacsflow_router`` (``py.warnings`` included, where
    :func:`logging.captureWarnings` routes Python warnings) has its quoted strings and UIDs replaced, and every
    record's exception text is scrubbed the same way. The message keeps its shape, so the warning is still useful.
    """

    # Not the file names of traceback lines (``File "/path/x.py", line 3``): code paths, not patient data.
    _QUOTED = re.compile(r"""(?<!File )(["'])(?:(?!\1)[^\n]){1,512}?\1""")
    _UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")
    _OWN = "pacsflow_router"

    @classmethod
    def scrub(cls, text: str) -> str:
        """``text`` with quoted values and UIDs replaced by placeholders."""
        return cls._UID.sub("<uid>", cls._QUOTED.sub(r"\1<redacted>\1", text))

    def filter(self, record: logging.LogRecord) -> bool:
        if not (record.name == self._OWN or record.name.startswith(self._OWN + ".")):
            record.msg, record.args = self.scrub(record.getMessage()), None
        if record.exc_info:
            # Format now (the handler's formatter would do the same) so the scrubbed text is what gets written.
            record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        return True


def configure_logging(settings: RouterSettings) -> None:
    """Configure the root logger once (JSON in containers, plain text on a terminal).

    Python warnings are routed through logging (:func:`logging.captureWarnings`) so they pass the same
    :class:`NoPhiFilter` as every log record instead of going to stderr unfiltered.
    """
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # On the handler, not a logger: a handler's filters see every record that reaches it, propagated ones too.
    handler.addFilter(NoPhiFilter())
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)
    # No patient data in logs (STYLE.md): pynetdicom logs PDU details and highdicom logs source UIDs at INFO.
    for chatty in ("pynetdicom", "highdicom"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger().level))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pacsflow-router", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="routing config YAML (the operator's ConfigMap)")
    args = parser.parse_args(argv)
    settings = RouterSettings()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"pacsflow-router: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)

    from .service import RouterService  # heavy imports (DALI, ONNX Runtime) only after the config is good

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        service = RouterService(config, config_path=args.config, config_poll_seconds=settings.config_poll_seconds)
    except ConfigError as exc:  # what the config points at cannot be used as it is (an older audit database)
        print(f"pacsflow-router: {exc}", file=sys.stderr)
        return 2
    service.start()
    logging.getLogger(__name__).info(
        "pacsflow-router listening as %s on %s:%d", config.ae_title, config.bind_address, service.dicom_port
    )
    try:
        service.run_until(stop)
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
