"""Draft report text from AI findings: one Jinja2 template per use case (``<use case>.j2`` in a site's template
folder, else the built-in ``drafts/default.j2``), always marked unverified.

Templates are plain text rendered in Jinja2's sandbox with undefined names as errors: a site's template can word and
order the findings but not reach into Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jinja2 import ChoiceLoader, FileSystemLoader, StrictUndefined, TemplateNotFound
from jinja2.sandbox import SandboxedEnvironment

BUILT_IN = Path(__file__).with_name("drafts")
UNVERIFIED = "DRAFT - AI-GENERATED, NOT VERIFIED BY A RADIOLOGIST"


class DraftWriter:
    """Renders drafts; ``site_templates`` (optional) is searched before the built-in templates."""

    def __init__(self, site_templates: Path | None = None) -> None:
        loaders = [FileSystemLoader(str(site_templates))] if site_templates else []
        self.env = SandboxedEnvironment(loader=ChoiceLoader([*loaders, FileSystemLoader(str(BUILT_IN))]),
                                        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)

    def render(self, procedure: str, rows: list[dict[str, Any]]) -> str:
        """The draft of a study's results (``review_results`` rows of one study), grouped by use case template.

        The first row's use case picks the template (one study's results usually come from one use case; each
        further use case with a template of its own adds its own section). The text always starts with
        :data:`UNVERIFIED`.
        """
        sections: list[str] = []
        by_template: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_template.setdefault(self._template_name(row["use_case"]), []).append(_facts(row))
        for name, facts in by_template.items():
            sections.append(self.env.get_template(name).render(procedure=procedure, results=facts).strip())
        text = "\n\n".join(sections)
        return text if text.startswith(UNVERIFIED) else f"{UNVERIFIED}\n{text}"

    def _template_name(self, use_case: str) -> str:
        try:
            self.env.get_template(f"{use_case}.j2")
        except TemplateNotFound:
            return "default.j2"
        return f"{use_case}.j2"


def _facts(row: dict[str, Any]) -> dict[str, Any]:
    return {"use_case": row["use_case"], "finding": row["finding_meaning"], "present": row["present"],
            "probability": row["probability"], "critical": row["critical"], "model_name": row["model_name"],
            "model_version": row["model_version"], "slice_number": row["slice_index"] + 1,
            "row_percent": round(100 * row["row_fraction"]), "col_percent": round(100 * row["col_fraction"])}
