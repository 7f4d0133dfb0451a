"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from fleetward.errors import AuditChainError, FleetwardError

__all__ = ["PROBLEM_JSON", "as_dict", "install", "problem"]

PROBLEM_JSON = "application/problem+json"


def problem(
    *, status: int, title: str, detail: str, slug: str, instance: str, **extra: Any
) -> JSONResponse:
    """A problem-details response."""
    body = {
        "type": f"urn:fleetward:problem:{slug}",
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
        "type": f"urn:fleetward:problem:{error.slug}",
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        **extra,
    }


def install(app: FastAPI) -> None:
    """Map the fleetward error tree, validation errors and HTTP errors to problems."""

    @app.exception_handler(FleetwardError)
    async def _fleetward(request: Request, exc: FleetwardError) -> JSONResponse:
        extra: dict[str, Any] = {}
        if isinstance(exc, AuditChainError) and exc.seq is not None:
            extra["seq"] = exc.seq
        return problem(
            status=exc.status,
            title=exc.title,
            detail=exc.detail,
            slug=exc.slug,
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
        return problem(
            status=422,
            title="Invalid request",
            detail=f"{'.'.join(first['loc'])}: {first['msg']}",
            slug="invalid-request",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(
            status=exc.status_code,
            title=str(exc.detail),
            detail=str(exc.detail),
            slug=f"http-{exc.status_code}",
            instance=request.url.path,
        )
