"""``pacsflow-operator``: run the operator (kopf underneath) against the cluster in KUBECONFIG or in-cluster.

``--namespace NS`` (repeatable) watches only those namespaces; without it every namespace is watched.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

import kopf

from .settings import OperatorSettings


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname,
                               "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(settings: OperatorSettings) -> None:
    """Configure the root logger once (JSON in containers, text on a terminal)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if settings.log_format == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, configure logging and run kopf until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="pacsflow-operator", description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--namespace", action="append", default=[],
                        help="namespace to watch (repeatable); default: all namespaces")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz",
                        help="kopf liveness endpoint URL (default: %(default)s; '' to disable)")
    args = parser.parse_args(argv)
    # Secrets (the evidence API key) come as files named after their variable, from a mounted Secret.
    settings = OperatorSettings(_secrets_dir=os.environ.get("PACSFLOW_OPERATOR_SECRETS_DIR") or None)
    configure_logging(settings)
    from . import handlers  # noqa: F401 - registers the handlers with kopf's default registry

    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        # One operator replica (the chart's Deployment uses Recreate); no KopfPeering CRD needed.
        standalone=True,
        liveness_endpoint=args.liveness or None,
        memo=kopf.Memo(settings=settings),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
