"""Run the real ``pacsflow-router`` process for e2e tests and the demo (started and stopped by PID)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .net import free_port, wait_port

__all__ = ["RouterProcess", "free_port", "router_config", "use_case", "wait_port"]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class RouterProcess:
    """A router subprocess with its config file, spool and log."""

    workdir: Path
    config: dict
    proc: subprocess.Popen | None = None
    log_path: Path = field(init=False)
    #: More environment for the process (e.g. PACSFLOW_ROUTER_TEST_PAUSE_CHECKPOINTER=1).
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "router.log"
        self.write_config(self.config)

    @property
    def config_path(self) -> Path:
        return self.workdir / "router.yaml"

    @property
    def port(self) -> int:
        return self.config["port"]

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.config['metrics']['port']}/metrics"

    def write_config(self, config: dict) -> None:
        self.config = config
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.replace(tmp, self.config_path)  # atomic, like a ConfigMap volume's symlink swap

    def start(self, timeout: float = 120.0) -> RouterProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PACSFLOW_ROUTER_CONFIG_POLL_SECONDS="0.5", **self.env)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pacsflow_router", "--config", str(self.config_path)],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
            )
        wait_port(self.port, timeout, self.proc)
        wait_port(self.config["metrics"]["port"], timeout, self.proc)
        return self

    def kill9(self) -> None:
        """SIGKILL: no cleanup, no flush — what a node failure or OOM kill does."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode if self.proc else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def router_config(*, workdir: Path, port: int, metrics_port: int, pacs_port: int | None,
                  use_cases: list[dict], stable_seconds: float = 1.0, inference: dict | None = None,
                  calling: tuple[str, ...] = ("STORESCU", "ORTHANC", "BENCH", "FINDSCU", "CT_ED_1"),
                  **extra: object) -> dict:
    """A routing config for tests: loopback, tmp spool and audit DB, destination 'pacs' = Orthanc.

    ``extra`` adds top-level keys as written on the wire (``hl7Listener``, ``hl7Destinations``, ``webhooks``, ...).
    """
    destinations = [] if pacs_port is None else [
        {"name": "pacs", "aeTitle": "ORTHANC", "host": "127.0.0.1", "port": pacs_port}
    ]
    return {
        "aeTitle": "PACSFLOW",
        "port": port,
        "allowedCallingAETitles": list(calling),
        "spoolDir": str(workdir / "spool"),
        "completion": {"stableSeconds": stable_seconds},
        "destinations": destinations,
        "inference": inference or {"backend": "embedded", "modelRepository": str(REPO / "model_repository")},
        "audit": {"url": f"sqlite:///{workdir / 'audit.db'}"},
        "metrics": {"port": metrics_port},
        "useCases": use_cases,
        **extra,
    }


def use_case(name: str = "ich-head-ct", mode: str = "assistive", *, version: int = 2,
             threshold: float = 0.85, destination: str | None = "pacs") -> dict:
    """One ``ich_detector`` use case on CT studies."""
    out = {
        "name": name,
        "model": {"name": "ich_detector", "version": version},
        "match": {"modalities": ["CT"]},
        "mode": mode,
        "triage": {"criticalThreshold": threshold},
    }
    if destination:
        out["outputs"] = {"structuredReport": {"destination": destination}}
    return out
