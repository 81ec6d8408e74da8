"""The pure half of the health checks: a Deployment's status -> DeploymentAvailable, the served model name."""

from __future__ import annotations

import pytest

from pacsflow_operator.health import deployment_available, model_version_ready
from pacsflow_router.config import served_model_name
from pacsflow_router.models.repository import ensemble_name


@pytest.mark.parametrize(("deployment", "status", "reason"), [
    (None, "False", "DeploymentNotFound"),
    ({"status": {}}, "False", "DeploymentUnavailable"),
    ({"status": {"replicas": 1, "unavailableReplicas": 1,
                 "conditions": [{"type": "Available", "status": "False", "message": "no minimum availability"}]}},
     "False", "DeploymentUnavailable"),
    ({"status": {"availableReplicas": 1}}, "True", "MinimumReplicasAvailable"),
    ({"status": {"conditions": [{"type": "Available", "status": "True"}]}}, "True", "MinimumReplicasAvailable"),
])
def test_deployment_available(deployment, status, reason):
    cond = deployment_available(deployment, "ed-router-router")
    assert (cond.type, cond.status, cond.reason) == ("DeploymentAvailable", status, reason)


def test_served_name_and_unreachable_triton_is_unknown():
    assert served_model_name("ich_detector", 2) == ensemble_name("ich_detector", 2) == "ich_detector_v2"
    assert model_version_ready("127.0.0.1:9", "ich_detector", 2, timeout=1) is None  # port 9: nothing listens


@pytest.mark.parametrize(("model_ready", "status", "reason", "ready"), [
    (True, "True", "ModelReady", "True"),
    (False, "False", "ModelNotReady", "False"),
    (None, "Unknown", "TritonNotAsked", "True"),
])
def test_model_available_is_what_triton_answered(model_ready, status, reason, ready):
    from pacsflow_operator.reconcile.usecase import Binding, use_case_conditions
    from tests.unit.pacsflow_operator.test_reconcile import ROUTER, UC

    conds = {c.type: c for c in use_case_conditions("ns", UC, Binding(ROUTER, True, None, model_ready))}
    assert (conds["ModelAvailable"].status, conds["ModelAvailable"].reason) == (status, reason)
    assert conds["Ready"].status == ready
