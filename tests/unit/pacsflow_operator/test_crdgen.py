"""CRD generation: structural schemas, declared rules only, committed files in sync with the models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from pacsflow_operator import crdgen
from pacsflow_operator.resources.v1alpha1 import AI_USE_CASE, DICOM_ROUTER, KINDS, MODE_TRANSITION_RULE

REPO = Path(__file__).resolve().parents[3]


def _walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _schema(kind):
    return crdgen.crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _props(schema):
    """Every property schema (path, node), descending through objects and array items."""
    for name, sub in schema.get("properties", {}).items():
        yield name, sub
        yield from _props(sub)
        if "items" in sub:
            yield from _props(sub["items"])


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schema_is_structural(kind):
    schema = _schema(kind)
    for path, node in _walk(schema):
        if isinstance(node, dict):
            # The one union a structural schema has: int-or-string (resource quantities), exactly these branches.
            if node.get("x-kubernetes-int-or-string"):
                assert node.pop("anyOf", None) == [{"type": "integer"}, {"type": "string"}] and "type" not in node, path
            assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const"} & node.keys(), path
            assert node.get("additionalProperties", True) is not False, path
            assert node.get("type") != "null", path
            if "properties" in node:
                assert node["type"] == "object", path
    for name, sub in _props(schema):
        if name != "metadata":
            assert "type" in sub, name


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_user_field_is_described(kind):
    # kubectl explain is the documentation users see; an undocumented field is a bug.
    for name, sub in _props(_schema(kind)):
        if name != "metadata":
            assert sub.get("description"), name
            assert "``" not in sub["description"], name


def test_cel_rules_exactly_where_declared():
    found = {}
    for kind in KINDS:
        for path, node in _walk(_schema(kind)):
            if isinstance(node, dict) and "x-kubernetes-validations" in node:
                found[(kind.kind, path)] = [r["rule"] for r in node["x-kubernetes-validations"]]
    assert found == {
        ("DicomRouter", "$.properties.spec.properties.replicas"): ["self <= 1"],
        ("AIUseCase", "$.properties.spec.properties.router"): ["self == oldSelf"],
        ("AIUseCase", "$.properties.spec.properties.mode"): [MODE_TRANSITION_RULE],
        ("DicomRouter", "$.properties.spec.properties.secretMounts.items.properties.mountPath"): [
            "self != '/var/lib/pacsflow' && !self.startsWith('/var/lib/pacsflow/') && self != '/etc/pacsflow' && "
            "!self.startsWith('/etc/pacsflow/') && self != '/etc/pacsflow-tls' && !self.startsWith('/etc/pacsflow-tls/')"],
    }


def test_mode_rule_messages_speak_to_a_clinical_lead():
    mode = _schema(AI_USE_CASE)["properties"]["spec"]["properties"]["mode"]
    assert mode["enum"] == ["silent", "assistive", "triage"]
    assert mode["default"] == "silent"
    rule = mode["x-kubernetes-validations"][0]
    assert "one phase at a time" in rule["message"] and "Demotion" in rule["message"]
    assert "oldSelf" in rule["messageExpression"]


def test_router_replicas_capped_with_reason():
    replicas = _schema(DICOM_ROUTER)["properties"]["spec"]["properties"]["replicas"]
    assert replicas["maximum"] == 1 and replicas["minimum"] == 0
    assert "each see part of a study" in replicas["x-kubernetes-validations"][0]["message"]


def test_optional_fields_are_not_required_and_nullable_nowhere():
    spec = _schema(DICOM_ROUTER)["properties"]["spec"]
    assert "tritonCluster" not in spec.get("required", [])
    assert spec["properties"]["tritonCluster"]["type"] == "string"
    uc = _schema(AI_USE_CASE)["properties"]["spec"]
    assert set(uc["required"]) == {"router", "model"}


def test_crd_shape():
    doc = crdgen.crd(AI_USE_CASE)
    assert doc["metadata"]["name"] == "aiusecases.pacsflow.io"
    assert doc["spec"]["scope"] == "Namespaced"
    assert "aiuc" in doc["spec"]["names"]["shortNames"]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Router", "Model", "Version", "Mode", "Reviewed", "Sensitivity", "Ready", "Reason", "Age"]
    conditions = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert set(conditions["items"]["required"]) >= {"type", "status", "reason", "lastTransitionTime"}


def test_output_is_deterministic_and_headed():
    first = crdgen.outputs(REPO)
    second = crdgen.outputs(REPO)
    assert first == second
    for path, text in first.items():
        if path.suffix == ".yaml":
            assert "Do not edit" in text.splitlines()[1]


def test_chart_copy_keeps_crds_on_uninstall():
    text = crdgen.chart_template()
    assert text.count("helm.sh/resource-policy: keep") == len(KINDS)
    body = text.split("\n", 3)[3].replace("{{- end }}\n", "")
    docs = [d for d in yaml.safe_load_all(body) if d]
    assert [d["spec"]["names"]["kind"] for d in docs] == [k.kind for k in KINDS]


def test_committed_files_match_models():
    assert crdgen.main(["--root", str(REPO), "--check"]) == 0, "run `make crds`"


def test_check_fails_on_drift(tmp_path, capsys):
    for path in crdgen.outputs(REPO):
        dest = tmp_path / path.relative_to(REPO)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 0
    edited = tmp_path / "crds" / "pacsflow.io_aiusecases.yaml"
    edited.write_text(edited.read_text().replace("minimum: 1", "minimum: 0", 1))
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1
    assert "make crds" in capsys.readouterr().err
