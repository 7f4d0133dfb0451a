"""RFC 9457 problem details for every error the API returns.

A problem's ``type`` is ``urn:fleetward:problem:<code>``: the ``code`` of the
error's class in :mod:`fleetward.errors` (which lists them all), or one of the
two codes this layer adds: :data:`INVALID_REQUEST` for a request that does
not match the route's schema and ``http-<status>`` for routing and protocol
errors. Clients branch on the type, never on ``title`` or ``detail``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetward import observe
from fleetward.errors import AuditChainError, FleetwardError

__all__ = ["INVALID_REQUEST", "PROBLEM_JSON", "TYPE_PREFIX", "as_dict", "install", "problem"]

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:fleetward:problem:"
INVALID_REQUEST = "invalid-request"  # not a class of the tree: FastAPI's validation


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
    problems, each counted in ``fleetward_refusals_total{code}``."""

    @app.exception_handler(FleetwardError)
    async def _fleetward(request: Request, exc: FleetwardError) -> JSONResponse:
        extra: dict[str, Any] = {}
        if isinstance(exc, AuditChainError) and exc.seq is not None:
            extra["seq"] = exc.seq
        observe.refusal(exc.code)
        return problem(
            status=exc.status,
            title=exc.title,
            detail=exc.detail,
            code=exc.code,
            instance=request.url.path,
            **extra,
        )

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
