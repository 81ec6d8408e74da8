"""``pacsflow-router --config FILE``: the router process.

Loads and validates the routing config (exit 2 with one clear message when it is bad), configures logging once,
then runs :class:`pacsflow_router.service.RouterService` until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
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
        return json.dumps(out)


def configure_logging(settings: RouterSettings) -> None:
    """Configure the root logger once (JSON in containers, plain text on a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)
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
    service = RouterService(config, config_path=args.config, config_poll_seconds=settings.config_poll_seconds)
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
