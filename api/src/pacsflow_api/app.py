"""The pacsflow-api application: the results API (``/api/v1``) and the reviewer page, on one results store.

Every request's identity goes into the store's ``api_access`` table (route template, never the raw path: paths hold
UIDs); reveals and verdicts are their own rows (``reveals``, ``feedback``) naming the same identity.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.routing import Match

from pacsflow_router.results.store import ResultsStore
from pacsflow_router.tls import address_allowed

from . import approvals, pages, problems
from .deps import ApiState, caller, state
from .drafts import DraftWriter
from .evidence import EvidenceFunction, verdict_counts
from .identity import ApiKeyProvider, Identity, IdentityProvider, SessionProvider
from .marker import with_marker
from .models import (
    Draft,
    Evidence,
    FeedbackIn,
    FeedbackOut,
    Modification,
    ResultSlot,
    StudyView,
    WorklistItem,
    WorklistPage,
    result_view,
)
from .oidc import Oidc, OidcBearerProvider
from .problems import PROBLEM_SCHEMA, Problem, problem_response

log = logging.getLogger(__name__)

READ_ROLES = ("reader", "clinical-lead", "integration", "admin")
VERDICT_ROLES = ("reader", "clinical-lead", "admin")
EVIDENCE_ROLES = ("clinical-lead", "integration", "admin")
ERRORS: dict[int | str, dict[str, Any]] = {s: {"description": d, **PROBLEM_SCHEMA} for s, d in (
    (401, "no valid API key or session"), (403, "the caller's role may not do this"), (404, "not found"),
    (409, "reveal the result first"), (422, "the request does not match the schema"))}


def require(identity: Identity, roles: Sequence[str], what: str) -> None:
    """403 unless ``identity`` has one of ``roles``."""
    if identity.role not in roles:
        raise Problem(403, f"role {identity.role} may not {what}; it needs one of {', '.join(roles)}")


def _include_silent(identity: Identity, evaluation: bool) -> bool:
    if evaluation and not identity.sees_silent:
        raise Problem(403, "the evaluation view (silent use cases) is for clinical leads and admins")
    return evaluation


Caller = Annotated[Identity, Depends(caller)]
Evaluation = Annotated[bool, Query(description="include silent use cases (clinical leads and admins)")]


def _revealed(store: ResultsStore, result_key: str, subject: str) -> bool:
    return any(r["reader"] == subject for r in store.reveals(result_key=result_key))


def _result_row(store: ResultsStore, tracking_uid: str, identity: Identity) -> dict[str, Any]:
    # A silent result is as unknown to a reader as a result that does not exist (no 403 that confirms it).
    row = store.result(tracking_uid, include_silent=identity.sees_silent)
    if row is None:
        raise Problem(404, "no such result")
    return row


def study_view(store: ResultsStore, identity: Identity, rows: list[dict[str, Any]]) -> StudyView:
    """A study's patient, exam and result slots; a result is filled in only where ``identity`` revealed it."""
    first = rows[0]
    slots = []
    for row in rows:
        revealed = _revealed(store, row["result_key"], identity.subject)
        slots.append(ResultSlot(tracking_uid=row["tracking_uid"], use_case=row["use_case"], mode=row["mode"],
                                revealed=revealed, reveal=f"/api/v1/results/{row['tracking_uid']}/reveal",
                                result=result_view(row) if revealed else None))
    return StudyView(study_uid=first["study_uid"], accession=first["accession"],
                     patient_name=first["patient_name"], patient_id=first["patient_id"],
                     procedure=first["procedure"], order_priority=first["order_priority"], results=slots)


def create_app(store: ResultsStore, *, providers: Sequence[IdentityProvider] | None = None,
               evidence: EvidenceFunction = verdict_counts, secure_cookies: bool = False,
               session_secret: bytes | None = None, drafts: DraftWriter | None = None, oidc: Oidc | None = None,
               allowed_networks: Sequence[str] = ()) -> FastAPI:
    """The API and the reviewer page on ``store``.

    Parameters
    ----------
    providers : sequence of IdentityProvider, optional
        Asked in order; default: API keys, then OIDC bearer tokens (when ``oidc`` is given), then the page's
        session cookie.
    evidence : EvidenceFunction
        What ``GET /api/v1/usecases/{name}/evidence`` answers (default: verdict counts).
    secure_cookies : bool
        Mark the session cookie Secure (behind TLS, as in the cluster).
    session_secret : bytes, optional
        Key that signs page sessions; replicas behind one Service need the same one (default: random per process).
    drafts : DraftWriter, optional
        Draft report templates (default: the built-in one).
    oidc : Oidc, optional
        The hospital's identity provider: bearer tokens for the API, authorization code + PKCE for the page.
    allowed_networks : sequence of str
        Address blocks (``10.0.0.0/8``) that may connect; anything else gets 403 before any identity is asked
        (``/healthz`` excepted, for the kubelet). Empty: every address.
    """
    sessions = SessionProvider(store, session_secret)
    app = FastAPI(title="pacsflow-api", version="1", docs_url=None, redoc_url=None,  # no CDN: Swagger UI is off
                  openapi_url="/api/v1/openapi.json",
                  description="Results of pacsflow's AI use cases for readers: worklist, studies, reveal, key images, "
                              "feedback, evidence. Errors are RFC 9457 problem+json.")
    default: list[IdentityProvider] = [ApiKeyProvider(store), *([OidcBearerProvider(oidc)] if oidc else []), sessions]
    app.state.api = ApiState(store=store, sessions=sessions,
                             providers=list(providers) if providers is not None else default,
                             evidence=evidence, secure_cookies=secure_cookies, oidc=oidc)
    app.state.drafts = drafts or DraftWriter()
    problems.install(app)
    _install_audit(app)
    _install_allow_list(app, allowed_networks)  # added last: runs first, before the audit and any identity
    _add_routes(app)
    approvals.add_routes(app)
    pages.add_routes(app)
    app.mount("/static", StaticFiles(packages=[("pacsflow_api", "static")]), name="static")
    return app


def _install_audit(app: FastAPI) -> None:
    @app.middleware("http")
    async def audit_access(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Cache-Control", "no-store")  # patient data: never in a shared cache
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'")
        if request.url.path.startswith("/static/") or request.url.path == "/healthz":
            return response
        route = _route_template(request)
        identity: Identity | None = getattr(request.state, "identity", None)
        subject, role = (identity.subject, identity.role) if identity else ("anonymous", "-")
        await run_in_threadpool(state(request).store.record_access, identity=subject, role=role,
                                method=request.method, route=route, status=response.status_code)
        log.info("%s %s %d by %s (%s)", request.method, route, response.status_code, subject, role)
        return response


def _install_allow_list(app: FastAPI, networks: Sequence[str]) -> None:
    if not networks:
        return
    blocks = list(networks)

    @app.middleware("http")
    async def allow_list(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        address = request.client.host if request.client else ""
        if request.url.path == "/healthz" or address_allowed(address, blocks):
            return await call_next(request)
        log.warning("refused a request from %s: not in PACSFLOW_API_ALLOWED_NETWORKS", address or "(unknown)")
        return problem_response(403, "this address may not use pacsflow-api (PACSFLOW_API_ALLOWED_NETWORKS)")


def _route_template(request: Request) -> str:
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match == Match.FULL:
            return str(getattr(route, "path", "?"))
    return "(no route)"


def _add_routes(app: FastAPI) -> None:
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        """Liveness/readiness for Kubernetes (not audited, no identity)."""
        return {"status": "ok"}

    @app.get("/api/v1/worklist", response_model=WorklistPage, responses=ERRORS, tags=["worklist"])
    def worklist(request: Request, identity: Caller, evaluation: Evaluation = False,
                 limit: Annotated[int, Query(ge=1, le=500)] = 50,
                 offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0) -> WorklistPage:
        """Studies with results: critical first, then order priority, then age. Silent use cases only with
        ``evaluation=true`` (clinical leads, admins)."""
        require(identity, READ_ROLES, "read the worklist")
        rows, total = state(request).store.worklist(include_silent=_include_silent(identity, evaluation),
                                                    limit=limit, offset=offset)
        items = [WorklistItem(**row, href=f"/api/v1/studies/{row['study_uid']}") for row in rows]
        following = offset + limit
        flag = "&evaluation=true" if evaluation else ""
        return WorklistPage(items=items, total=total, limit=limit, offset=offset,
                            next=f"/api/v1/worklist?limit={limit}&offset={following}{flag}" if following < total
                            else None)

    def _study(request: Request, identity: Identity, evaluation: bool, study_uid: str | None,
               accession: str | None) -> StudyView:
        require(identity, READ_ROLES, "read studies")
        store = state(request).store
        rows = store.study_results(study_uid=study_uid, accession=accession,
                                   include_silent=_include_silent(identity, evaluation))
        if not rows:
            raise Problem(404, "no results for this study")
        return study_view(store, identity, rows)

    @app.get("/api/v1/studies/{study_uid}", response_model=StudyView, responses=ERRORS, tags=["studies"])
    def study(request: Request, study_uid: str, identity: Caller, evaluation: Evaluation = False,
              accession: str | None = None) -> StudyView:
        """A study's patient, accession, procedure and result slots; a result's facts appear only after the caller
        revealed it (``POST /api/v1/results/{trackingUID}/reveal``)."""
        return _study(request, identity, evaluation, study_uid, accession)

    @app.get("/api/v1/studies", response_model=StudyView, responses=ERRORS, tags=["studies"])
    def study_by_accession(request: Request, accession: str, identity: Caller,
                           evaluation: Evaluation = False) -> StudyView:
        """The study with this accession number (as ``GET /api/v1/studies/{studyUID}``)."""
        return _study(request, identity, evaluation, None, accession)

    @app.get("/api/v1/studies/{study_uid}/draft", response_model=Draft, responses=ERRORS, tags=["studies"])
    def draft(request: Request, study_uid: str, identity: Caller) -> Draft:
        """Draft report text from the study's results the caller has revealed, always marked unverified (409 until
        one is revealed: the draft states AI results)."""
        require(identity, READ_ROLES, "read drafts")
        store = state(request).store
        rows = [r for r in store.study_results(study_uid=study_uid)
                if _revealed(store, r["result_key"], identity.subject)]
        if not rows:
            if not store.study_results(study_uid=study_uid):
                raise Problem(404, "no results for this study")
            raise Problem(409, "reveal the study's results first: POST /api/v1/results/{trackingUID}/reveal")
        writer: DraftWriter = request.app.state.drafts
        return Draft(study_uid=study_uid, text=writer.render(rows[0]["procedure"], rows),
                     results=[r["tracking_uid"] for r in rows])

    @app.post("/api/v1/results/{tracking_uid}/reveal", response_model=ResultSlot, responses=ERRORS,
              tags=["results"])
    def reveal(request: Request, tracking_uid: str, identity: Caller) -> ResultSlot:
        """Show the AI result: recorded with who and when (the automation-bias guard), then returned."""
        require(identity, READ_ROLES, "see results")
        store = state(request).store
        row = _result_row(store, tracking_uid, identity)
        store.record_reveal(result_key=row["result_key"], reader=identity.subject)
        return ResultSlot(tracking_uid=tracking_uid, use_case=row["use_case"], mode=row["mode"], revealed=True,
                          reveal=f"/api/v1/results/{tracking_uid}/reveal", result=result_view(row))

    @app.get("/api/v1/results/{tracking_uid}/image", responses={
        **ERRORS, 200: {"content": {"image/png": {}}, "description": "the key slice, windowed"}},
        response_class=Response, tags=["results"])
    def image(request: Request, tracking_uid: str, identity: Caller,
              marker: Annotated[bool, Query(description="draw the finding marker")] = True) -> Response:
        """The key slice as a windowed PNG, with or without the finding marker; only after a reveal."""
        require(identity, READ_ROLES, "see results")
        store = state(request).store
        row = _result_row(store, tracking_uid, identity)
        if not _revealed(store, row["result_key"], identity.subject):
            raise Problem(409, "reveal the result first: POST /api/v1/results/{trackingUID}/reveal")
        png = bytes(row["key_image_png"])
        if marker:
            png = with_marker(png, row["row_fraction"], row["col_fraction"])
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, no-store"})

    @app.post("/api/v1/results/{tracking_uid}/feedback", response_model=FeedbackOut, status_code=201,
              responses={**ERRORS, 200: {"description": "the same verdict was recorded before; nothing changed",
                                         "model": FeedbackOut}}, tags=["results"])
    def feedback(request: Request, tracking_uid: str, body: FeedbackIn, identity: Caller) -> Any:
        """Accept, modify or reject a revealed result, with an optional correction and comment. Idempotent per
        (result, reader, verdict): a repeat answers 200 and writes nothing."""
        require(identity, VERDICT_ROLES, "give verdicts")
        store = state(request).store
        row = _result_row(store, tracking_uid, identity)
        if not _revealed(store, row["result_key"], identity.subject):
            raise Problem(409, "reveal the result first: POST /api/v1/results/{trackingUID}/reveal")
        recorded = store.record_feedback(
            result_key=row["result_key"], reader=identity.subject, verdict=body.verdict,
            corrected_finding=body.corrected_finding if isinstance(body, Modification) else None,
            corrected_location=body.corrected_location.model_dump()
            if isinstance(body, Modification) and body.corrected_location else None,
            comment=body.comment)
        if body.verdict == "accept":  # the draft goes out as HL7 where the use case enables it (the router decides)
            approvals.record_accepted_draft(store.engine, request.app.state.drafts, row, identity.subject)
        out = FeedbackOut(tracking_uid=tracking_uid, verdict=body.verdict, reader=identity.subject,
                          recorded=recorded)
        return out if recorded else JSONResponse(out.model_dump(), status_code=200)

    @app.get("/api/v1/usecases/{name}/evidence", response_model=Evidence, responses=ERRORS, tags=["evidence"])
    def evidence(request: Request, name: str, identity: Caller) -> Evidence:
        """What reader feedback says about a use case, per model version."""
        require(identity, EVIDENCE_ROLES, "read evidence")
        api = state(request)
        return Evidence(**api.evidence(api.store, name))
