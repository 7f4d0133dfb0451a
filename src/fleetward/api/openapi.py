"""The operator plane's OpenAPI document, made to tell the whole truth.

FastAPI writes what each route declares. This module post-processes that
document once, centrally, from the app's own routes, so that a client (or
schemathesis) reading it knows every answer a route can give:

1. **Security.** ``components.securitySchemes`` names the HTTP bearer scheme
   (an API token; ``bearer_or_basic`` also takes it as a Basic password, for
   EST clients, which live on the device plane and have no document).
   An operation requires it exactly when its route depends on
   :class:`~fleetward.api.deps.Authorize`; every other operation says
   ``security: []`` (anyone may call it).
2. **Problems.** Every answer a route can give besides its own success is a
   :class:`~fleetward.api.problems.Problem` under ``application/problem+json``:

   - 401 (with ``WWW-Authenticate``) and 403 on authenticated operations, and
     429 (with ``Retry-After``): failed authentication is rate-limited;
   - 404 on operations with path parameters (no such object, or another
     tenant's);
   - 413 on operations that take a body (the body-size limit);
   - 400 (invalid input) on every operation, and 422 for a request that
     does not match the schema: FastAPI describes that one as
     ``HTTPValidationError`` under ``application/json``; the API answers a
     problem, so the document says so (and drops FastAPI's shapes).

   A status a route already declares (its own ``responses=``, or the
   router's :data:`~fleetward.api.problems.OPERATOR`) is kept as it is.

Install with :func:`install` after :func:`fleetward.api.problems.install`
(which moves declared ``Problem`` answers to the problem media type).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant

from fleetward.api.deps import Authorize
from fleetward.api.problems import PROBLEM_JSON, Problem

__all__ = ["BEARER", "install"]

BEARER = "bearerAuth"
"""The name of the API-token scheme in ``components.securitySchemes``."""

_REF = "#/components/schemas/"
_PROBLEM = {"$ref": _REF + "Problem"}
_FASTAPI_SHAPES = ("HTTPValidationError", "ValidationError")

_AUTHENTICATED = {
    401: "no valid API token (problem type unauthenticated)",
    403: "the token's role or scope does not allow this (forbidden, out-of-scope, ...)",
    429: "too many failed authentications from this source or for this token "
    "(too-many-requests); retry after Retry-After seconds",
}
_WITH_PATH = {404: "no such object for this tenant (not-found)"}
_WITH_BODY = {413: "the body is over the route's size limit (payload-too-large)"}
_ALWAYS = {
    400: "invalid input (invalid-input)",
    422: "the request does not match the schema (invalid-request), or a check failed "
    "(verification-failed, certificate, attestation, ...)",
}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {
        "WWW-Authenticate": {
            "description": "the scheme to authenticate with (Bearer)",
            "schema": {"type": "string"},
        }
    },
    429: {
        "Retry-After": {
            "description": "seconds until a new attempt is counted again",
            "schema": {"type": "integer", "minimum": 0},
        }
    },
}


def install(app: FastAPI) -> None:
    """Serve ``app``'s OpenAPI document post-processed as the module
    docstring describes (built once, on first request, like FastAPI's)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        # ``generate`` caches FastAPI's document in app.openapi_schema; it is
        # completed in place, so the cache holds the completed one.
        return describe(generate(), authenticated=set(_authenticated(app)))

    app.openapi = openapi  # type: ignore[method-assign]


def describe(schema: dict[str, Any], *, authenticated: set[tuple[str, str]]) -> dict[str, Any]:
    """Add security and every problem answer to ``schema`` (in place).

    Args:
        schema: The document FastAPI generated.
        authenticated: ``(METHOD, path)`` of the operations that require a token.

    Returns:
        ``schema``.
    """
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[BEARER] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token (fleetward token create). EST clients may send it as "
        "the Basic password instead.",
    }
    schemas: dict[str, Any] = components.setdefault("schemas", {})
    if "Problem" not in schemas:  # no route declared one: add the body they all answer with
        body = Problem.model_json_schema(ref_template=_REF + "{model}")
        for name, definition in body.pop("$defs", {}).items():
            schemas.setdefault(name, definition)
        schemas["Problem"] = body
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            needs_token = (method.upper(), path) in authenticated
            operation["security"] = [{BEARER: []}] if needs_token else []
            _complete(operation, needs_token=needs_token)
    others = {k: v for k, v in schemas.items() if k not in _FASTAPI_SHAPES}
    if not _references([schema.get("paths", {}), others], _FASTAPI_SHAPES):
        for name in _FASTAPI_SHAPES:
            schemas.pop(name, None)
    return schema


def _complete(operation: dict[str, Any], *, needs_token: bool) -> None:
    """Declare the problems ``operation`` can answer with, keeping its own."""
    answers: dict[str, Any] = operation.setdefault("responses", {})
    wanted: dict[int, str] = dict(_ALWAYS)
    if needs_token:
        wanted |= _AUTHENTICATED
    if any(p.get("in") == "path" for p in operation.get("parameters", [])):
        wanted |= _WITH_PATH
    if "requestBody" in operation:
        wanted |= _WITH_BODY
    for code, description in wanted.items():
        answers.setdefault(str(code), {"description": description})
    for status, answer in answers.items():
        if not status.startswith(("4", "5")):
            continue
        content = answer.setdefault("content", {})
        for media in list(content):
            # FastAPI's own 422 (HTTPValidationError under application/json)
            # describes a body this API never sends.
            ref = content[media].get("schema", {}).get("$ref", "")
            if ref.removeprefix(_REF) in _FASTAPI_SHAPES:
                del content[media]
        if not content:
            content[PROBLEM_JSON] = {"schema": dict(_PROBLEM)}
        headers = _HEADERS.get(int(status)) if (status.isascii() and status.isdigit()) else None
        if headers and PROBLEM_JSON in content:
            answer.setdefault("headers", {}).update(headers)
    operation["responses"] = dict(sorted(answers.items()))


def _authenticated(app: FastAPI) -> Iterator[tuple[str, str]]:
    """``(METHOD, path)`` of every route that depends on :class:`Authorize`."""
    for route in _flat(app.routes):
        # APIRoute, or the route context FastAPI builds for an included router.
        dependant = getattr(route, "dependant", None)
        if isinstance(dependant, Dependant) and _needs_token(dependant):
            for method in route.methods:
                yield method.upper(), route.path_format


def _flat(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route, through included routers (FastAPI keeps those as branches)."""
    for route in routes:
        if hasattr(route, "effective_candidates"):
            yield from _flat(route.effective_candidates())
        else:
            yield route


def _needs_token(dependant: Dependant) -> bool:
    if isinstance(dependant.call, Authorize):
        return True
    return any(_needs_token(d) for d in dependant.dependencies)


def _references(node: Any, names: tuple[str, ...]) -> bool:
    """Whether any ``$ref`` under ``node`` names one of the schemas ``names``."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.removeprefix(_REF) in names:
            return True
        return any(_references(v, names) for v in node.values())
    if isinstance(node, list):
        return any(_references(v, names) for v in node)
    return False
