"""Human approval before priority and accepted drafts: the API's side of ``pacsflow_router.results.approvals``.

- ``POST /api/v1/results/{trackingUID}/approve`` and ``.../reject``: a reader's decision on a critical result whose
  worklist flag, HL7 messages and webhooks the router holds (``triage.requireApproval``). Stored with who (key id),
  role and when; the router polls it and releases or drops the outputs. Readers and clinical leads decide: the
  reader reading the study is the human check the hold is for, and a critical finding must not wait for a clinical
  lead's shift; integration keys (machines) and admins (IT) may not, or the check would be automatic. Like a verdict,
  a decision needs the result revealed first. The first decision stands: the other one afterwards is 409.
- On a reader's ``accept`` (feedback), :func:`record_accepted_draft` stores the result's draft text as rendered for
  them; the router sends it as an ORU^R01 where the use case enables ``draft-report``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from pacsflow_router.results.approvals import Approvals

from .deps import caller, state
from .drafts import DraftWriter
from .identity import Identity
from .models import UtcDatetime
from .problems import PROBLEM_SCHEMA, Problem

APPROVAL_ROLES = ("reader", "clinical-lead")
_ERRORS: dict[int | str, dict[str, Any]] = {s: {"description": d, **PROBLEM_SCHEMA} for s, d in (
    (401, "no valid API key or session"), (403, "the caller's role may not decide"),
    (404, "no such result, or none of its outputs is held"), (409, "reveal the result first, or it was decided"),
    (422, "the request does not match the schema"))}


class DecisionIn(BaseModel):
    """An optional comment with the decision."""

    model_config = ConfigDict(extra="forbid")
    comment: str | None = Field(default=None, max_length=4000)


class ApprovalOut(BaseModel):
    """The held outputs' state after the call."""

    model_config = ConfigDict(extra="forbid")
    tracking_uid: str
    state: str = Field(description="approved or rejected (released or dropped once the router acted on it)")
    decided_by: str | None
    decided_at: UtcDatetime | None
    recorded: bool = Field(description="false when this decision had been taken before (nothing changed)")


Caller = Annotated[Identity, Depends(caller)]
Comment = Annotated[DecisionIn | None, Body()]


class PendingApproval(BaseModel):
    """A critical result whose priority outputs wait for a decision."""

    model_config = ConfigDict(extra="forbid")
    tracking_uid: str
    study_uid: str
    use_case: str
    revision: int
    requested_at: UtcDatetime
    href: str = Field(description="the study (reveal the result there, then approve or reject it)")


def _decide(request: Request, tracking_uid: str, identity: Identity, body: DecisionIn | None,
            approve: bool) -> ApprovalOut:
    verb = "approve" if approve else "reject"
    if identity.role not in APPROVAL_ROLES:
        raise Problem(403, f"role {identity.role} may not {verb} held critical outputs; it needs one of "
                           f"{', '.join(APPROVAL_ROLES)}")
    store = state(request).store
    row = store.result(tracking_uid, include_silent=identity.sees_silent)
    if row is None:
        raise Problem(404, "no such result")
    if not any(r["reader"] == identity.subject for r in store.reveals(result_key=row["result_key"])):
        raise Problem(409, "reveal the result first: POST /api/v1/results/{trackingUID}/reveal")
    decision = Approvals(store.engine).decide(row["result_key"], approve=approve, by=identity.subject,
                                              role=identity.role, comment=body.comment if body else None)
    if decision.outcome == "none":
        raise Problem(404, "none of this result's outputs is held for approval")
    if decision.outcome == "conflict":
        raise Problem(409, f"already {decision.state} by {decision.decided_by}; the first decision stands")
    return ApprovalOut(tracking_uid=tracking_uid, state=decision.state or "", decided_by=decision.decided_by,
                       decided_at=decision.decided_at or dt.datetime.now(dt.UTC),
                       recorded=decision.outcome == "decided")


def add_routes(app: FastAPI) -> None:
    """The approval routes."""

    @app.get("/api/v1/approvals", response_model=list[PendingApproval], responses=_ERRORS, tags=["results"])
    def pending(request: Request, identity: Caller,
                limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[PendingApproval]:
        """Critical results whose worklist flag, HL7 messages and webhooks are held for a decision, oldest first
        (readers and clinical leads)."""
        if identity.role not in APPROVAL_ROLES:
            raise Problem(403, f"role {identity.role} may not list held critical outputs; it needs one of "
                               f"{', '.join(APPROVAL_ROLES)}")
        rows = Approvals(state(request).store.engine).pending_results(limit=limit)
        return [PendingApproval(**row, href=f"/api/v1/studies/{row['study_uid']}") for row in rows]

    @app.post("/api/v1/results/{tracking_uid}/approve", response_model=ApprovalOut, responses=_ERRORS,
              tags=["results"])
    def approve(request: Request, tracking_uid: str, identity: Caller, body: Comment = None) -> ApprovalOut:
        """Release a critical result's held worklist flag, HL7 messages and webhooks (readers, clinical leads; after
        a reveal). Audited with who and when; a repeat changes nothing; after a reject, 409."""
        return _decide(request, tracking_uid, identity, body, approve=True)

    @app.post("/api/v1/results/{tracking_uid}/reject", response_model=ApprovalOut, responses=_ERRORS,
              tags=["results"])
    def reject(request: Request, tracking_uid: str, identity: Caller, body: Comment = None) -> ApprovalOut:
        """Never send a critical result's held outputs (readers, clinical leads; after a reveal). The SR is in the
        PACS already. Audited with who and when; a repeat changes nothing; after an approve, 409."""
        return _decide(request, tracking_uid, identity, body, approve=False)


def record_accepted_draft(store_engine: Any, writer: DraftWriter, row: dict[str, Any], reader: str) -> bool:
    """Store the draft text of an accepted result (``review_results`` row), as rendered for the reader now; the
    router decides whether it goes out. False when this revision's draft was stored before."""
    return Approvals(store_engine).record_draft(
        result_key=row["result_key"], revision=row["revision"], use_case=row["use_case"],
        text=writer.render(row["procedure"], [row]), by=reader)
