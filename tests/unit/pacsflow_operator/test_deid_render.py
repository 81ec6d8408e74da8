"""The operator carries the de-identification edge through: a DicomRouter's ``externalAi`` (key from a mounted
Secret, the results port on the pod and Service) and an AIUseCase's ``external`` reach the rendered routing config."""

from __future__ import annotations

import yaml

from pacsflow_operator.reconcile import router as router_rc
from pacsflow_operator.resources.v1alpha1 import AIUseCaseSpec, DicomRouterSpec
from pacsflow_router.config import parse_config
from tests.unit.pacsflow_operator.test_reconcile import ROUTER, UC


def _router_with_vendor() -> DicomRouterSpec:
    spec = ROUTER.model_dump(by_alias=True, mode="json", exclude_none=True)
    spec["destinations"].append({"name": "vendor", "aeTitle": "VENDOR", "host": "ai.vendor.example", "port": 11112,
                                 "external": True})
    spec["secretMounts"] = [*spec.get("secretMounts", []),
                            {"secretName": "deid-key", "mountPath": "/etc/pacsflow-secrets/deid"}]
    spec["externalAi"] = {"keyFile": "/etc/pacsflow-secrets/deid/key", "resultsPort": 11113,
                          "allowedCallingAETitles": ["VENDOR_AI"]}
    return DicomRouterSpec.model_validate(spec)


def test_external_use_case_and_results_port_are_rendered() -> None:
    external = AIUseCaseSpec.model_validate({**UC.model_dump(by_alias=True, mode="json", exclude_none=True),
                                             "external": {"destination": "vendor", "deidentification": {
                                                 "retainLongitudinalTemporalInformation": "modified-dates"}}})
    plan = router_rc.render_router("ed", "ns", _router_with_vendor(), {"ich-external": external}, image="img")
    assert not plan.rejected, plan.rejected
    children = {c["kind"]: c for c in plan.children}
    config = parse_config(yaml.safe_load(children["ConfigMap"]["data"][router_rc.CONFIG_KEY]), "configmap")
    assert config.external_ai is not None and config.external_ai.key_file == "/etc/pacsflow-secrets/deid/key"
    [uc] = config.use_cases
    assert uc.external is not None and uc.external.destination == "vendor"
    assert uc.external.deidentification.retain_longitudinal_temporal_information == "modified-dates"
    ports = {p["name"]: p["port"] for p in children["Service"]["spec"]["ports"]}
    assert ports["dicom-results"] == 11113
    ingress = children["NetworkPolicy"]["spec"]["ingress"]
    assert {"port": 11113, "protocol": "TCP"} in [port for rule in ingress for port in rule["ports"]]


def test_external_use_case_on_a_router_without_the_edge_is_rejected_alone() -> None:
    external = AIUseCaseSpec.model_validate({**UC.model_dump(by_alias=True, mode="json", exclude_none=True),
                                             "external": {"destination": "pacs"}})
    plan = router_rc.render_router("ed", "ns", ROUTER, {"ich-external": external, "ich-head-ct": UC}, image="img")
    assert "ich-external" in plan.rejected and "external: true" in plan.rejected["ich-external"]
    assert plan.accepted == ("ich-head-ct",)
