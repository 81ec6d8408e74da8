"""Errors as RFC 9457 problem details (``application/problem+json``): one place maps every error to its status.

Details never carry patient data or UIDs: a caller knows which UID it asked for.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """An error the API answers with a problem document."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None,
                 **extensions: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extensions = extensions


def problem_response(status: int, detail: str, instance: str | None = None, headers: dict[str, str] | None = None,
                     **extensions: Any) -> JSONResponse:
    """A problem+json response (``type`` about:blank, so ``title`` is the status phrase, per RFC 9457 4.2.1)."""
    body: dict[str, Any] = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status,
                            "detail": detail, **extensions}
    if instance is not None:
        body["instance"] = instance
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


#: The schema of a problem document, for the OpenAPI responses of every route.
PROBLEM_SCHEMA = {"content": {MEDIA_TYPE: {"schema": {
    "type": "object", "required": ["type", "title", "status"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "instance": {"type": "string"}}}}}}


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` as problem+json."""

    async def on_problem(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(exc.status, exc.detail, headers=exc.headers, **exc.extensions)

    async def on_http(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return problem_response(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    async def on_validation(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        # Location and message of each error, never the input value (it may be a patient's name or a UID).
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()]
        return problem_response(422, "the request does not match the API schema", errors=errors)

    async def on_error(_request: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s answering a request", type(exc).__name__)
        return problem_response(500, "internal error; the API's log names its class")

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_error)
