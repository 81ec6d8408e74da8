"""The reviewer side panel: server-rendered HTML and one small plain script (static/panel.js), no CDN.

Login takes an API key once (or goes through the hospital's identity provider: :mod:`.sso`) and sets an HttpOnly, SameSite=Strict session cookie (Secure behind TLS); the page's
script calls the same ``/api/v1`` routes with it. A study page shows patient, accession and procedure; the AI result
stays out of the HTML until the reader presses "Show AI result", which POSTs the audited reveal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from . import deps as api
from . import sso
from .identity import SESSION_COOKIE, SESSION_SECONDS, Identity
from .oidc import OidcError

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).with_name("templates")))
PRIORITY_NAMES = {"S": "Stat", "A": "ASAP", "T": "Timing critical", "C": "Callback", "P": "Pre-op", "R": "Routine"}


def patient_name(dicom_pn: str) -> str:
    """``Family^Given^Middle`` as ``FAMILY, Given Middle`` (DICOM PN, PS3.5 6.2)."""
    family, _, rest = dicom_pn.partition("^")
    given = " ".join(p for p in rest.split("^")[:2] if p)
    return f"{family.upper()}, {given}" if given else family.upper()


TEMPLATES.env.filters["patient_name"] = patient_name
TEMPLATES.env.globals["priority_names"] = PRIORITY_NAMES


def _page_identity(request: Request) -> Identity | None:
    return api.identify(request)


def _to_login() -> Response:
    return RedirectResponse("/login", status_code=303)


def add_routes(app: FastAPI) -> None:
    """The page's routes (not part of the published API schema)."""

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request) -> Response:
        return TEMPLATES.TemplateResponse(request, "login.html", {"error": None,
                                                                  "sso": api.state(request).oidc is not None})

    @app.post("/login", include_in_schema=False)
    def login(request: Request, api_key: Annotated[str, Form(max_length=512)]) -> Response:
        state = api.state(request)
        found = state.store.authenticate(api_key.strip())
        if found is None:
            return TEMPLATES.TemplateResponse(request, "login.html", {"error": "That API key is not valid.",
                                                                      "sso": state.oidc is not None},
                                              status_code=401)
        identity = Identity(subject=found[0], role=found[1], via="session")
        request.state.identity = identity
        state.store.record_login(found[0], method="api-key")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(SESSION_COOKIE, state.sessions.issue(identity), max_age=SESSION_SECONDS, path="/",
                            httponly=True, samesite="strict", secure=state.secure_cookies)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        identity = api.identify(request)  # the access audit's row for this route is the logout record
        oidc = api.state(request).oidc
        target = None
        if identity is not None and identity.via == "oidc-session" and oidc is not None:
            try:  # end the IdP's session too, or the next "Sign in" would come straight back signed in
                target = oidc.logout_url(id_token=None, post_logout_redirect_uri=str(request.url_for("login_form")))
            except OidcError:
                target = None
        response = RedirectResponse(target, status_code=303) if target else _to_login()
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    sso.add_routes(app, TEMPLATES)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page(request: Request, offset: int = 0, evaluation: bool = False) -> Response:
        identity = _page_identity(request)
        if identity is None:
            return _to_login()
        evaluation = evaluation and identity.sees_silent
        offset = min(max(offset, 0), 10_000_000)  # a database integer, whatever the URL says
        rows, total = api.state(request).store.worklist(include_silent=evaluation, limit=50, offset=offset)
        return TEMPLATES.TemplateResponse(request, "worklist.html", {
            "identity": identity, "rows": rows, "total": total, "offset": offset, "limit": 50,
            "evaluation": evaluation})

    @app.get("/studies/{study_uid}", response_class=HTMLResponse, include_in_schema=False)
    def study_page(request: Request, study_uid: str, evaluation: bool = False) -> Response:
        identity = _page_identity(request)
        if identity is None:
            return _to_login()
        evaluation = evaluation and identity.sees_silent
        rows = api.state(request).store.study_results(study_uid=study_uid, include_silent=evaluation)
        context: dict[str, Any] = {"identity": identity, "evaluation": evaluation, "study": None}
        if rows:
            first = rows[0]
            # Only what identifies the exam; the AI result is fetched by panel.js after the reveal.
            context["study"] = {k: first[k] for k in ("study_uid", "accession", "patient_name", "patient_id",
                                                      "procedure", "order_priority")}
            context["slots"] = [{"tracking_uid": r["tracking_uid"], "use_case": r["use_case"], "mode": r["mode"]}
                                for r in rows]
        return TEMPLATES.TemplateResponse(request, "study.html", context, status_code=200 if rows else 404)
