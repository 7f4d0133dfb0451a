"""RFC 9457 problem details for every error the API returns.

A problem's ``type`` is ``urn:fleetward:problem:<code>``: the ``code`` of the
error's class in :mod:`fleetward.errors` (which lists them all), or one of the
two codes this layer adds: :data:`INVALID_REQUEST` for a request that does
not match the route's schema and ``http-<status>`` for routing and protocol
errors. Clients branch on the type, never on ``title`` or ``detail``.

The OpenAPI document describes the body as the :class:`Problem` schema under
``application/problem+json``: every router declares :data:`OPERATOR` or
:data:`PUBLIC` as its ``responses`` (which also keeps FastAPI from adding
its own 422 shape), and :func:`install` moves those responses from
``application/json`` to the problem media type.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetward import observe
from fleetward.errors import (
    AuditChainError,
    FleetwardError,
    InvalidInputError,
    TooManyRequestsError,
)

__all__ = [
    "INVALID_REQUEST",
    "OPERATOR",
    "PROBLEM_JSON",
    "PUBLIC",
    "TYPE_PREFIX",
    "Invalid",
    "Problem",
    "as_dict",
    "error_response",
    "install",
    "problem",
    "responses",
]

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:fleetward:problem:"
INVALID_REQUEST = "invalid-request"  # not a class of the tree: FastAPI's validation


class Invalid(BaseModel):
    """One reason a request did not match the route's schema."""

    loc: list[str] = Field(description="where: body, query, path or header, then the field")
    msg: str


class Problem(BaseModel):
    """An RFC 9457 problem detail: the body of every error the API returns.

    Extension members may follow (``errors`` for an invalid request, ``seq``
    for a broken audit chain, ``category`` for an enrollment refusal).
    """

    model_config = ConfigDict(extra="allow")

    type: str = Field(
        description="urn:fleetward:problem:<code>; clients branch on this",
        examples=["urn:fleetward:problem:not-found"],
    )
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    instance: str | None = Field(default=None, description="the request path")
    errors: list[Invalid] | None = Field(
        default=None, description="invalid-request only: every mismatch"
    )


_DESCRIPTIONS = {
    400: "invalid input (problem type invalid-input)",
    401: "no valid API token (problem type unauthenticated)",
    403: "the token's role or scope does not allow this (forbidden, out-of-scope, ...)",
    404: "no such object for this tenant (not-found)",
    409: "conflicts with the current state (conflict, duplicate-enrollment, ...)",
    413: "a body or an item over its limit (payload-too-large)",
    422: "the request does not match the schema (invalid-request), or a check failed "
    "(verification-failed, certificate, attestation, ...)",
    429: "too many failed authentications from this source or for this identity "
    "(too-many-requests; see the Retry-After header)",
    503: "a dependency is down (unavailable, broker-unavailable)",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` that answer ``statuses`` with a :class:`Problem`."""
    return {s: {"model": Problem, "description": _DESCRIPTIONS[s]} for s in statuses}


OPERATOR = responses(400, 401, 403, 404, 409, 422)
"""The problems of a route that authenticates an operator token."""
PUBLIC = responses(400, 404, 422)
"""The problems of a route anyone (or a device) may call."""


def problem(
    *, status: int, title: str, detail: str, code: str, instance: str, **extra: Any
) -> JSONResponse:
    """A problem-details response whose type ends in ``code``."""
    body = {
        "type": TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        **extra,
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def error_response(error: FleetwardError, *, instance: str) -> JSONResponse:
    """The problem response of ``error`` (with ``Retry-After`` for a 429),
    counted in ``fleetward_refusals_total{code}``; for code outside the
    exception handlers (the authentication gate, ``fleetward.api.gate``)."""
    extra: dict[str, Any] = {}
    if isinstance(error, AuditChainError) and error.seq is not None:
        extra["seq"] = error.seq
    observe.refusal(error.code)
    response = problem(
        status=error.status,
        title=error.title,
        detail=error.detail,
        code=error.code,
        instance=instance,
        **extra,
    )
    if isinstance(error, TooManyRequestsError):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def as_dict(error: FleetwardError, **extra: Any) -> dict[str, Any]:
    """The problem-details members of an error (for items inside a batch answer)."""
    return {
        "type": TYPE_PREFIX + error.code,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        **extra,
    }


def install(app: FastAPI) -> None:
    """Map the fleetward error tree, validation errors and HTTP errors to
    problems, each counted in ``fleetward_refusals_total{code}``, and
    describe them as ``application/problem+json`` in the OpenAPI document."""
    _document_problems(app)

    @app.exception_handler(FleetwardError)
    async def _fleetward(request: Request, exc: FleetwardError) -> JSONResponse:
        return error_response(exc, instance=request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        observe.refusal(INVALID_REQUEST)
        return problem(
            status=422,
            title="Invalid request",
            detail=f"{'.'.join(first['loc'])}: {first['msg']}",
            code=INVALID_REQUEST,
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        observe.refusal(f"http-{exc.status_code}")
        return problem(
            status=exc.status_code,
            title=str(exc.detail),
            detail=str(exc.detail),
            code=f"http-{exc.status_code}",
            instance=request.url.path,
        )

    async def _unstorable(request: Request, exc: Exception) -> JSONResponse:
        # A safety net, not the fix: a value the database driver cannot bind
        # (an integer past 64 bits: sqlite3's OverflowError, psycopg's
        # NumericValueOutOfRange as a DataError; a NUL byte on PostgreSQL; a
        # lone surrogate that is no UTF-8) came from the request, because
        # the routes' declared bounds (fleetward.api.params) missed it.
        return error_response(
            InvalidInputError("a value in the request cannot be stored (out of range or not text)"),
            instance=request.url.path,
        )

    for unstorable in (OverflowError, UnicodeEncodeError, DataError):
        app.add_exception_handler(unstorable, _unstorable)


def _document_problems(app: FastAPI) -> None:
    """Serve the OpenAPI document with every :class:`Problem` response
    under ``application/problem+json`` (FastAPI writes each declared
    response model under the route's own media type)."""
    generate = app.openapi
    ref = "#/components/schemas/Problem"

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for answer in operation.get("responses", {}).values():
                    content = answer.get("content", {})
                    for media in [m for m in content if m != PROBLEM_JSON]:
                        if content[media].get("schema", {}).get("$ref") == ref:
                            content[PROBLEM_JSON] = content.pop(media)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
