"""The model repository is an interface: a model is added by dropping a folder, never by router code.

Two model families live in the committed repository (a per-slice head-CT model and a radiograph model). Both are
rendered for Triton by the same code, described by the same manifest schema, and no code in the router names either
of them: no identifier or string literal outside docstrings and comments may mention a model or its finding. The
synthetic-data generators (``models/*phantom.py``) are exempt: each draws one family's training and test data, so
naming its finding is its job; they are tooling beside the data path, which never imports them.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from pacsflow_router.analysis.manifest import load_manifest
from pacsflow_router.analysis.preprocess import load_spec
from pacsflow_router.config import ModelRef
from pacsflow_router.models import repository

ROOT = Path(__file__).resolve().parents[3]
COMMITTED = ROOT / "model_repository"
ROUTER = ROOT / "router" / "src" / "pacsflow_router"
FAMILIES = ("ich_detector", "ptx_detector")
# What would name a model or its finding in code: model names, their abbreviations and the findings they detect.
MODEL_WORDS = re.compile(r"ich_detector|ptx_detector|\bich\b|\bptx\b|h(a)?emorrhag|pneumothora", re.IGNORECASE)


def _docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers covered by docstrings (module, class and function), which may use a model as an example."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                lines.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
        # Attribute docstrings (a string statement right after an assignment), as pydantic models use them.
        body = getattr(node, "body", None)
        for child in body if isinstance(body, list) else []:
            if isinstance(child, ast.Expr) and isinstance(child.value, ast.Constant) \
                    and isinstance(child.value.value, str):
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def model_mentions(source: str) -> list[tuple[int, str]]:
    """(line, token) of every identifier or non-docstring string literal that names a model or its finding."""
    docstrings = _docstring_lines(ast.parse(source))
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.NAME, tokenize.STRING) and tok.type != getattr(tokenize, "FSTRING_MIDDLE", -1):
            continue
        if tok.start[0] in docstrings:
            continue
        if MODEL_WORDS.search(tok.string):
            found.append((tok.start[0], tok.string[:60]))
    return found


def test_the_scanner_finds_constants_and_branches_but_not_docstrings():
    code = '"""Module docstring: e.g. ich_detector."""\nX = "ptx_detector"\nif model == "x":\n    HEMORRHAGE = 1\n'
    assert [line for line, _ in model_mentions(code)] == [2, 4]
    assert model_mentions('def f():\n    """Like the ICH model."""\n    # pneumothorax comment\n    return 1\n') == []


def test_no_router_code_names_a_model():
    mentions = []
    for path in sorted(ROUTER.rglob("*.py")):
        if path.parent.name == "models" and path.name.endswith("phantom.py"):
            continue
        for line, token in model_mentions(path.read_text()):
            mentions.append(f"{path.relative_to(ROOT)}:{line}: {token}")
    assert mentions == [], "router code names a model; take it from the model's manifest instead:\n" + \
        "\n".join(mentions)


@pytest.mark.parametrize("target", repository.TARGETS)
def test_both_families_render_from_the_committed_repository(tmp_path: Path, target: str):
    plan = repository.render_repository(COMMITTED, tmp_path / target, target)
    assert plan.problems == []
    for name in FAMILIES:
        assert repository.ensemble_name(name, 1) in plan.models
        assert f"{name}_postprocess" in plan.models
    assert repository.check_repository(tmp_path / target) == []


def test_each_family_declares_its_own_input_finding_and_geometry():
    manifests = {name: load_manifest(COMMITTED, ModelRef(name=name, version=1)) for name in FAMILIES}
    specs = {name: load_spec(COMMITTED, ModelRef(name=name, version=1)) for name in FAMILIES}
    ich, ptx = manifests["ich_detector"], manifests["ptx_detector"]
    assert ich.output.geometry == "volume" and ptx.output.geometry == "image"
    assert set(ptx.requirements.modalities) == {"DX", "CR"} and "CHEST" in ptx.requirements.body_parts
    assert not set(ich.requirements.modalities) & set(ptx.requirements.modalities)
    # SNOMED CT codes checked against DICOM PS3.16 (CID 6102 / 6100) and SNOMED CT browsers (docs/model-card).
    assert (ptx.finding.type.scheme, ptx.finding.type.value, ptx.finding.type.meaning) == \
        ("SCT", "36118008", "Pneumothorax")
    assert ptx.finding.site is not None and ptx.finding.site.value == "3120008"
    assert ptx.finding.procedure.value == "399208008"
    assert specs["ptx_detector"].radiograph is not None and specs["ich_detector"].radiograph is None


def test_the_data_path_never_imports_a_synthetic_data_generator():
    for path in sorted(ROUTER.rglob("*.py")):
        if path.parent.name == "models":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                names += [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
                assert not any("phantom" in n for n in names), f"{path.relative_to(ROOT)} imports {names}"
