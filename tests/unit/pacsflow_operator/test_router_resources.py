"""The router pod's requests and limits: measured defaults, ``spec.resources`` as written, quantities as the API has them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pacsflow_operator.crdgen import openapi_schema
from pacsflow_operator.reconcile import router as router_rc
from pacsflow_operator.resources.v1alpha1 import ROUTER_DEFAULT_RESOURCES, DicomRouterSpec

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[3] / "crds" / "examples" / "dicomrouter.yaml").read_text())


def _container(**spec: object) -> dict:
    parsed = DicomRouterSpec.model_validate({**EXAMPLE["spec"], **spec})
    children = router_rc.render_router("ed", "ns", parsed, {}, image="img:1").children
    [dep] = [c for c in children if c["kind"] == "Deployment"]
    [container] = dep["spec"]["template"]["spec"]["containers"]
    return container


def test_without_spec_resources_the_router_gets_the_measured_defaults():
    resources = _container()["resources"]
    assert resources == {"requests": {"cpu": "1", "memory": "1536Mi"}, "limits": {"memory": "4Gi"}}
    assert resources == ROUTER_DEFAULT_RESOURCES
    assert "cpu" not in resources["limits"]  # no CFS throttling of the association threads
    # The rendered dict is a copy: adopting/patching one plan cannot change the defaults of the next.
    resources["limits"]["memory"] = "1Mi"
    assert _container()["resources"]["limits"]["memory"] == "4Gi"


def test_spec_resources_is_used_as_written_and_integers_become_quantity_text():
    assert _container(resources={"requests": {"cpu": 2, "memory": "3Gi"}, "limits": {"cpu": "4", "memory": "6Gi"}})[
        "resources"] == {"requests": {"cpu": "2", "memory": "3Gi"}, "limits": {"cpu": "4", "memory": "6Gi"}}
    # Only limits: no requests key at all (Kubernetes then requests what is limited), nothing of the defaults.
    assert _container(resources={"limits": {"memory": "2Gi"}})["resources"] == {"limits": {"memory": "2Gi"}}
    # Empty: the platform team asked for BestEffort.
    assert _container(resources={})["resources"] == {}


@pytest.mark.parametrize("bad", ["lots", "1.5 Gi", "-", "2GiB", True])
def test_a_quantity_the_api_server_would_refuse_is_refused_with_the_field(bad):
    with pytest.raises(ValidationError) as refused:
        DicomRouterSpec.model_validate({**EXAMPLE["spec"], "resources": {"limits": {"memory": bad}}})
    assert "resources.limits.memory" in str(refused.value)


def test_crd_schema_has_quantities_as_int_or_string():
    schema = openapi_schema(DicomRouterSpec)["properties"]["resources"]
    quantity = schema["properties"]["limits"]["additionalProperties"]
    assert quantity["x-kubernetes-int-or-string"] is True
    assert quantity["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert "type" not in quantity  # structural: int-or-string has no type of its own
    assert "1536Mi" in schema["description"] and "4Gi" in schema["description"]
