"""The v1alpha1 models: camelCase on the wire, unknown keys refused, examples valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from pacsflow_operator.resources.v1alpha1 import KINDS, AIUseCaseSpec, DicomRouterSpec

EXAMPLES = Path(__file__).resolve().parents[3] / "crds" / "examples"
SPECS = {k.kind: k.spec for k in KINDS}


def _examples():
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_every_kind_has_an_example():
    assert {d["kind"] for d in _examples()} == set(SPECS)


@pytest.mark.parametrize("doc", _examples(), ids=lambda d: d["kind"])
def test_examples_validate_and_round_trip(doc):
    assert doc["apiVersion"] == "pacsflow.io/v1alpha1"
    spec = SPECS[doc["kind"]].model_validate(doc["spec"])
    wire = spec.model_dump(by_alias=True, exclude_unset=True, mode="json")
    assert wire == doc["spec"]


def test_unknown_keys_are_refused():
    with pytest.raises(ValidationError, match="aeTittle"):
        DicomRouterSpec.model_validate({"aeTittle": "X"})


def test_defaults():
    uc = AIUseCaseSpec.model_validate({"router": "r", "model": {"name": "m", "version": 1}})
    assert uc.mode == "silent"
    assert uc.match.modalities == []
    assert DicomRouterSpec().replicas == 1


def test_router_replicas_above_one_refused():
    with pytest.raises(ValidationError):
        DicomRouterSpec(replicas=2)
