"""Operator process settings (``PACSFLOW_OPERATOR_*``), loaded once at startup and passed down."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Settings of the ``pacsflow-operator`` process (environment variables ``PACSFLOW_OPERATOR_<NAME>``)."""

    model_config = SettingsConfigDict(env_prefix="PACSFLOW_OPERATOR_")

    router_image: str = "ghcr.io/pacsflow/router:0.1.0"
    """Router image for DicomRouters whose spec names none."""
    metrics_port: int = 8080
    """Port of the operator's own /metrics endpoint (0: not served, e.g. in tests)."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics endpoint binds to."""
    log_level: str = "INFO"
    """Root log level."""
    log_format: Literal["text", "json"] = "text"
    """``json`` in containers (one object per line), ``text`` on a terminal."""
    evidence_url: str = ""
    """Base URL of pacsflow-api, where ``status.evidence`` is read from (empty: the operator writes no evidence)."""
    evidence_api_key: str = ""
    """API key (role ``integration``) for ``evidence_url``."""
    evidence_refresh_seconds: float = 300.0
    """How often each AIUseCase's ``status.evidence`` is re-read from ``evidence_url``."""
    triton_url: str = ""
    """Triton HTTP endpoint (``host:port``) asked about every TritonCluster's model readiness instead of the
    cluster's Service (empty: the Service; set it for an operator running outside the cluster)."""
    namespace: str = ""
    """The operator pod's own namespace (the chart sets it from the downward API): the TritonClusters'
    NetworkPolicies admit the operator's pods from it (empty: from any namespace, by the pods' labels)."""
    create_settle_seconds: float = 0.15
    """A new AIUseCase's router config is rendered once no other new use case of that router came for this long,
    so that a burst of creations costs one render per router per quiet moment (edits render at once)."""
    create_settle_max_seconds: float = 1.0
    """The longest a new AIUseCase waits for its render while a burst of creations goes on."""
