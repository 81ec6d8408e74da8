"""The API's JSON shapes (pydantic): the published OpenAPI schema is made from them."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _utc(value: dt.datetime) -> dt.datetime:
    # The store writes UTC; SQLite hands timestamps back without a zone (PostgreSQL with one).
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


UtcDatetime = Annotated[dt.datetime, AfterValidator(_utc)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WorklistItem(_Model):
    """One study on the worklist."""

    study_uid: str
    accession: str
    patient_name: str
    patient_id: str
    procedure: str
    order_priority: str = Field(description="HL7 order priority (S, A, T, C, P, R) or empty without an order")
    critical: bool = Field(description="a triage result flagged the study critical")
    created_at: UtcDatetime = Field(description="when its first result was made")
    href: str


class WorklistPage(_Model):
    """A page of the worklist: critical first, then order priority (stat first), then age (oldest first)."""

    items: list[WorklistItem]
    total: int
    limit: int
    offset: int
    next: str | None = Field(description="the next page's URL; null on the last page")


class Coding(_Model):
    """A coded concept (code value, coding scheme designator, code meaning)."""

    code: str
    scheme: str
    meaning: str


class Location(_Model):
    """Where the finding is: the key slice (0-based, in the analysed series) and its centre as fractions of the
    image's height (row) and width (column)."""

    slice_index: int = Field(ge=0)
    row_fraction: float = Field(ge=0, le=1)
    col_fraction: float = Field(ge=0, le=1)


class ResultView(_Model):
    """One AI result, the same facts as the SR: shown only after the caller revealed it."""

    tracking_uid: str
    revision: int
    use_case: str
    mode: str
    model_name: str
    model_version: int
    finding: Coding
    present: bool
    probability: float
    critical: bool
    location: Location
    sr_sop_uid: str | None
    created_at: UtcDatetime
    image: str = Field(description="the key image's URL (add ?marker=false for none)")


class ResultSlot(_Model):
    """A use case's result on a study; ``result`` is null until the caller reveals it (POST .../reveal)."""

    tracking_uid: str
    use_case: str
    mode: str
    revealed: bool
    reveal: str = Field(description="POST here to see the result (audited)")
    result: ResultView | None


class StudyView(_Model):
    """A study: who, which exam, and its results (hidden until revealed)."""

    study_uid: str
    accession: str
    patient_name: str
    patient_id: str
    procedure: str
    order_priority: str
    results: list[ResultSlot]


class Verdict(_Model):
    """Accept or reject a result, with an optional comment."""

    verdict: Literal["accept", "reject"]
    comment: str | None = Field(default=None, max_length=4000)


class Modification(_Model):
    """Modify a result: what the finding is instead and/or where, with an optional comment."""

    verdict: Literal["modify"]
    corrected_finding: str | None = Field(default=None, max_length=255, description="what the finding is instead")
    corrected_location: Location | None = Field(default=None, description="where it is instead")
    comment: str | None = Field(default=None, max_length=4000)


FeedbackIn = Annotated[Verdict | Modification, Field(discriminator="verdict")]
"""A reader's verdict on a result: corrections go with ``modify`` only (the schema says so, not just the server)."""


class FeedbackOut(_Model):
    """The verdict as stored."""

    tracking_uid: str
    verdict: str
    reader: str
    recorded: bool = Field(description="false when this reader had given this verdict already (nothing changed)")


class Draft(_Model):
    """Draft report text from the AI results the caller has revealed; never a verified report."""

    study_uid: str
    status: Literal["unverified"] = "unverified"
    text: str
    results: list[str] = Field(description="tracking UIDs of the results the draft states")


class Evidence(BaseModel):
    """Evidence of a use case from reader feedback, per model version."""

    model_config = ConfigDict(extra="allow")

    use_case: str
    versions: list[dict[str, Any]]


def result_view(row: dict[str, Any]) -> ResultView:
    """A ``review_results`` row as the API shows it."""
    return ResultView(
        tracking_uid=row["tracking_uid"], revision=row["revision"], use_case=row["use_case"], mode=row["mode"],
        model_name=row["model_name"], model_version=row["model_version"],
        finding=Coding(code=row["finding_code"], scheme=row["finding_scheme"], meaning=row["finding_meaning"]),
        present=row["present"], probability=row["probability"], critical=row["critical"],
        location=Location(slice_index=row["slice_index"], row_fraction=row["row_fraction"],
                          col_fraction=row["col_fraction"]),
        sr_sop_uid=row["sr_sop_uid"], created_at=row["created_at"],
        image=f"/api/v1/results/{row['tracking_uid']}/image")
