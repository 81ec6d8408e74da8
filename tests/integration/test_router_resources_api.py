"""``spec.resources`` and the rendered router Deployment against a real kube-apiserver v1.34.

The generated CRD takes quantities as int-or-string (``cpu: 2`` as in any pod spec) and refuses a malformed one with
the field's path; the Deployment the operator renders from it (requests/limits, the ``/readyz`` startup and
readiness probes on the named metrics port) passes the API server's own validation (a server-side dry run).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pacsflow_operator.reconcile import router as router_rc
from pacsflow_operator.resources.v1alpha1 import DicomRouterSpec
from tests.peers.cluster import ControlPlane
from tests.peers.net import eventually

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api(kube_cluster: ControlPlane) -> Iterator[client.ApiClient]:
    with kube_cluster.api_client() as admin:
        ext = client.ApiextensionsV1Api(admin)
        doc = yaml.safe_load((REPO / "crds" / "pacsflow.io_dicomrouters.yaml").read_text())
        ext.patch_custom_resource_definition(doc["metadata"]["name"], doc, field_manager="pacsflow-tests", force=True,
                                             _content_type="application/apply-patch+yaml")
        eventually(lambda: any(c.type == "Established" and c.status == "True" for c in
                               ext.read_custom_resource_definition(doc["metadata"]["name"]).status.conditions or ()),
                   "the DicomRouter CRD Established")
        yield admin


def _router(name: str, resources: dict) -> dict:
    return {"apiVersion": "pacsflow.io/v1alpha1", "kind": "DicomRouter", "metadata": {"name": name},
            "spec": {"aeTitle": "PACSFLOW", "resources": resources}}


def test_resources_round_trip_and_the_rendered_deployment_validates(api: client.ApiClient, kube_namespace: str):
    custom = client.CustomObjectsApi(api)
    stored = custom.create_namespaced_custom_object(
        "pacsflow.io", "v1alpha1", kube_namespace, "dicomrouters",
        _router("ed", {"requests": {"cpu": 2, "memory": "1536Mi"}, "limits": {"cpu": "2500m", "memory": "4Gi"}}))
    assert stored["spec"]["resources"]["requests"] == {"cpu": 2, "memory": "1536Mi"}  # kept as written
    spec = DicomRouterSpec.model_validate(stored["spec"])
    children = router_rc.render_router("ed", kube_namespace, spec, {}, image="localhost/pacsflow/router:test").children
    [deployment] = [c for c in children if c["kind"] == "Deployment"]
    accepted = client.AppsV1Api(api).create_namespaced_deployment(kube_namespace, deployment, dry_run="All")
    container = accepted.spec.template.spec.containers[0]
    assert container.resources.requests == {"cpu": "2", "memory": "1536Mi"}
    assert container.resources.limits == {"cpu": "2500m", "memory": "4Gi"}
    assert container.readiness_probe.http_get.path == "/readyz" and container.startup_probe.http_get.path == "/readyz"
    # The defaults (no spec.resources) validate too.
    default = router_rc.render_router("ed", kube_namespace, DicomRouterSpec(), {}, image="img:1").children
    [deployment] = [c for c in default if c["kind"] == "Deployment"]
    accepted = client.AppsV1Api(api).create_namespaced_deployment(kube_namespace, deployment, dry_run="All")
    assert accepted.spec.template.spec.containers[0].resources.limits == {"memory": "4Gi"}


def test_a_malformed_quantity_is_refused_with_its_field(api: client.ApiClient, kube_namespace: str):
    with pytest.raises(ApiException) as refused:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "pacsflow.io", "v1alpha1", kube_namespace, "dicomrouters", _router("bad", {"limits": {"memory": "4 GB"}}))
    assert refused.value.status == 422
    assert "spec.resources.limits.memory" in refused.value.body
