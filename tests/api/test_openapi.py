"""The OpenAPI document holds every route to the API's conventions.

Walked from the app's own document, so a new route is checked the day it is
added:

- every operation describes its errors: at least one 4xx response, and each
  4xx response is a ``Problem`` under ``application/problem+json`` (FastAPI's
  ``HTTPValidationError`` shape appears nowhere);
- every list is paged one way: no 2xx answer is a bare JSON array, and an
  operation answers a ``Page`` (``items`` + ``next``) exactly when it takes
  ``cursor`` and ``limit``;
- no untyped answer: every 2xx JSON answer is a named model with properties,
  and every other media type declares its schema;
- resource names are nouns: no path segment is a verb, except the device
  protocol (EST and the routes devices call), which must not change;
- the document is the whole contract (``fleetward.api.openapi``): it names
  the bearer scheme, which operations need it (checked against the server,
  without a token), and every answer an operation can give: 401/403/429 when
  it needs a token, 404 with path parameters, 413 with a body, 400 and 422
  always, each a problem.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleetward.api.app import create_app
from fleetward.api.openapi import BEARER
from fleetward.api.problems import PROBLEM_JSON
from fleetward.runtime.context import AppContext
from fleetward.runtime.stack import Stack

REF = "#/components/schemas/"
VERBS = {
    "abort", "ack", "acknowledge", "activate", "approve", "cancel", "check", "close",
    "create", "delete", "disable", "dry-run", "enable", "enroll", "execute", "get",
    "install", "list", "publish", "reenroll", "renew", "resolve", "resume", "revoke",
    "rotate", "run", "send", "set", "simpleenroll", "simplereenroll", "update", "verify",
    "withdraw",
}  # fmt: skip
# The device protocol: stock EST clients and the agent call these paths.
DEVICE_PROTOCOL = {
    "/.well-known/est/simpleenroll",
    "/.well-known/est/{label}/simpleenroll",
    "/.well-known/est/simplereenroll",
    "/.well-known/est/{label}/simplereenroll",
    "/api/v1/renew",
    "/api/v1/provisioning/batches/{batch_id}/enroll",
}
# Every collection the API lists (a list route that loses its envelope fails
# the generic checks; one that disappears fails here).
LISTS = {
    "/api/v1/alerts",
    "/api/v1/audit/entries",
    "/api/v1/cas",
    "/api/v1/comms/events",
    "/api/v1/comms/policy/versions",
    "/api/v1/devices",
    "/api/v1/devices/{device_id}/certificates",
    "/api/v1/drills",
    "/api/v1/incidents",
    "/api/v1/playbooks",
    "/api/v1/provisioning/attempts",
    "/api/v1/provisioning/attestation-roots",
    "/api/v1/provisioning/batches",
    "/api/v1/provisioning/counters",
    "/api/v1/provisioning/factories",
    "/api/v1/releases",
    "/api/v1/telemetry/events",
    "/api/v1/tokens",
}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from fleetward.config import Settings
    from fleetward.runtime.installation import initialise

    home = tmp_path_factory.mktemp("openapi")
    settings = Settings(home=home, database_url=f"sqlite:///{home}/fleetward.db")
    initialise(settings, actor="test")
    ctx = AppContext.from_settings(settings)
    try:
        with TestClient(create_app(ctx, runtime=Stack())) as client:
            resp = client.get("/api/v1/openapi.json")
            assert resp.status_code == 200
            doc: dict[str, Any] = resp.json()
            return doc
    finally:
        ctx.db.dispose()


def _operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            yield method.upper(), path, operation


def _component(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any] | None:
    ref = schema.get("$ref", "")
    if not ref.startswith(REF):
        return None
    found: dict[str, Any] = doc["components"]["schemas"][ref.removeprefix(REF)]
    return found


def _is_page(doc: dict[str, Any], schema: dict[str, Any]) -> bool:
    model = _component(doc, schema) or {}
    props = model.get("properties", {})
    return props.get("items", {}).get("type") == "array" and "next" in props


def _json_2xx(operation: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for status, answer in operation["responses"].items():
        if status.startswith("2"):
            schema = answer.get("content", {}).get("application/json", {}).get("schema")
            if schema is not None:
                yield status, schema


def test_every_route_describes_its_problems(document: dict[str, Any]) -> None:
    missing, wrong = [], []
    for method, path, operation in _operations(document):
        errors = {s: a for s, a in operation["responses"].items() if s.startswith("4")}
        if not errors:
            missing.append(f"{method} {path}")
        for status, answer in errors.items():
            content = answer.get("content", {})
            if set(content) != {PROBLEM_JSON} or content[PROBLEM_JSON]["schema"] != {
                "$ref": REF + "Problem"
            }:
                wrong.append(f"{method} {path} {status}: {sorted(content)}")
    assert not missing, f"routes without a problem response: {missing}"
    assert not wrong, f"4xx answers that are not application/problem+json Problem: {wrong}"
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    problem = schemas["Problem"]
    assert {"type", "title", "status", "detail"} <= set(problem["required"])


def test_every_list_is_paged_one_way(document: dict[str, Any]) -> None:
    bare, unpaged, paramless = [], [], []
    pages = set()
    for method, path, operation in _operations(document):
        params = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        paged = False
        for status, schema in _json_2xx(operation):
            if schema.get("type") == "array":
                bare.append(f"{method} {path} {status}")
            if _is_page(document, schema):
                paged = True
        if paged:
            pages.add(path)
            if not {"cursor", "limit"} <= params:
                paramless.append(f"{method} {path}")
        elif params & {"cursor", "limit", "after", "after_id", "offset"}:
            unpaged.append(f"{method} {path}")
    assert not bare, f"answers that are bare JSON arrays (use Page): {bare}"
    assert not unpaged, f"routes that page without the Page envelope: {unpaged}"
    assert not paramless, f"Page answers without cursor and limit: {paramless}"
    assert pages >= LISTS, f"list routes without the Page envelope: {sorted(LISTS - pages)}"


def test_no_untyped_answers(document: dict[str, Any]) -> None:
    untyped = []
    for method, path, operation in _operations(document):
        for status, answer in operation["responses"].items():
            if not status.startswith("2") or status == "204":
                continue
            content = answer.get("content", {})
            if not content:
                untyped.append(f"{method} {path} {status}: no content described")
            for media, described in content.items():
                schema = described.get("schema", {})
                if media == "application/json":
                    model = _component(document, schema)
                    if (
                        model is None
                        or model.get("type") != "object"
                        or not model.get("properties")
                    ):
                        untyped.append(f"{method} {path} {status}: {schema}")
                elif schema.get("type") != "string":
                    untyped.append(f"{method} {path} {status} {media}: {schema}")
    assert not untyped, f"answers without a named model: {untyped}"


def test_resource_names_are_nouns(document: dict[str, Any]) -> None:
    verbs = []
    for method, path, _ in _operations(document):
        if path in DEVICE_PROTOCOL:
            continue
        segments = [s for s in path.split("/") if s and not s.startswith("{")]
        for segment in segments:
            words = set(re.split(r"[-_.]", segment)) | {segment}
            if words & VERBS:
                verbs.append(f"{method} {path}")
    assert not verbs, f"paths with verbs (name the resource instead): {verbs}"


def test_a_device_protocol_path_is_still_served(document: dict[str, Any], ctx: AppContext) -> None:
    # The station's enrollment is on the operator plane (its document);
    # EST and renewal are on the device plane, which publishes no document.
    device = create_app(ctx, plane="device", runtime=Stack())
    from tests.tenancy.test_scope_table import _flat

    served = set(document["paths"]) | {getattr(r, "path", "") for r in _flat(device.routes)}
    assert served >= DEVICE_PROTOCOL
    assert "/api/v1/renew" not in document["paths"]


def _secured(operation: dict[str, Any]) -> bool:
    return operation.get("security") == [{BEARER: []}]


def test_the_security_scheme_is_declared(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert set(schemes) == {BEARER}
    assert (schemes[BEARER]["type"], schemes[BEARER]["scheme"]) == ("http", "bearer")
    unsaid = [f"{m} {p}" for m, p, op in _operations(document) if "security" not in op]
    assert not unsaid, f"operations that do not say whether they need a token: {unsaid}"
    public = {p for _, p, op in _operations(document) if not _secured(op)}
    assert public == {"/healthz", "/api/v1/comms/broker"}


def test_every_answer_a_route_can_give_is_declared(document: dict[str, Any]) -> None:
    missing = []
    for method, path, operation in _operations(document):
        wanted = {"400", "422"}
        if _secured(operation):
            wanted |= {"401", "403", "429"}
        if "{" in path:
            wanted.add("404")
        if "requestBody" in operation:
            wanted.add("413")
        answers = operation["responses"]
        missing += [f"{method} {path} {s}" for s in sorted(wanted - set(answers))]
        if _secured(operation):
            assert "WWW-Authenticate" in answers["401"]["headers"], path
            assert "Retry-After" in answers["429"]["headers"], path
    assert not missing, f"undeclared answers: {missing}"
    # A route's own declarations stay as they are: health's 503 is its report.
    health = document["paths"]["/healthz"]["get"]["responses"]["503"]
    assert set(health["content"]) == {"application/json"}


def test_the_declared_security_is_what_the_server_enforces(
    document: dict[str, Any], client: TestClient
) -> None:
    # Without a token: an operation that declares the scheme is refused with
    # 401 (429 once the failed-authentication limit is reached), and one that
    # declares none is not refused for want of a token.
    wrong = []
    for method, path, operation in _operations(document):
        url = re.sub(r"\{[^}]+\}", "1", path)
        resp = client.request(method, url)
        refused = resp.status_code in {401, 429}
        if refused != _secured(operation):
            wrong.append(f"{method} {path}: {resp.status_code}")
        if refused:
            assert resp.headers["content-type"] == PROBLEM_JSON
    assert not wrong, f"declared security differs from the server's: {wrong}"
