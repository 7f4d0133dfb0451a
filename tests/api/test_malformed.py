"""Every malformed input answers a 4xx problem detail, on every route of both planes.

The requests are generated from the apps' own routes (the OpenAPI document
FastAPI builds from ``app.routes``, device plane included), so a route
nobody remembered is attacked too. For each route and each caller (an
admin token, a station token, a device certificate, anonymous) the test
sends one request per hostile value and place:

- integers past 64 bits (``2**64``, ``-2**64``, ``10**30``) in every
  integer path and query parameter, every integer body field (one level
  into arrays and nested objects) and inside free-form JSON objects;
- in every string parameter and field: non-ASCII text that is not base64,
  invalid base64, a NUL byte, a lone surrogate (in JSON), percent-encoded
  invalid UTF-8 (in paths and queries);
- raw bodies that are not UTF-8, not JSON, or NUL bytes, with a JSON and
  with the route's own content type.

Every answer must be below 500, and every 4xx must be
``application/problem+json``. The test collects every failure before it
asserts, so one run lists them all.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.openapi.utils import get_openapi
from fastapi.testclient import TestClient

from fleetward.api.params import DB_INT_MAX
from fleetward.provisioning.attestation import FORMAT
from fleetward.runtime.context import AppContext
from tests.api.test_planes import _pem_of
from tests.conftest import TLS_TEST_HEADER, DeviceTestClient
from tests.response.helpers import enroll

API = "/api/v1"
HOSTILE_INTS = (2**64, -(2**64), 10**30)
# Text that is not base64 (non-ASCII, punctuation), a NUL byte, a lone surrogate.
HOSTILE_STRINGS = ("\u00e9\u00e9==", "!!*?", "a\x00b", "\ud800")
# The same classes as raw (already percent-encoded) path and query text.
HOSTILE_RAW = ("%FF", "%C3%A9%C3%A9%3D%3D", "!!*", "a%00b", "%ED%A0%80")
HOSTILE_BODIES = (b"\xff\xfe", b"\x00\x00\x00", b'{"a": "\xff"}', b"\xc3\xa9==")
RAW_MEDIA = ("application/json", "application/pkcs10", "application/ocsp-request")
# Credentials and base64 headers with non-ASCII bytes or text that is not base64.
AUTH_HEADERS = (
    ("authorization", b"Basic \xc3\xa9\xff"),
    ("authorization", b"Basic !!*?"),
    ("authorization", b"Bearer \xff\xfe"),
)
DEVICE_HEADERS = (
    *AUTH_HEADERS,
    *(
        (name, value)
        for name in (
            "x-fleetward-client-cert",
            "x-fleetward-renewal-proof",
            "x-fleetward-key-attestation",
        )
        for value in (b"\xc3\xa9\xff==", b"!!*?")
    ),
)
# Routes whose success would disturb the rest of the run (the admin's own token).
SKIP = {("DELETE", f"{API}/tokens/{{token_id}}")}


@dataclass
class Operation:
    """One route of the OpenAPI document, with the pieces of a request."""

    method: str
    path: str
    params: list[dict[str, Any]]
    body: dict[str, Any] | None
    media: str | None
    failures: list[str] = field(default_factory=list)


def _operations(app: Any) -> list[Operation]:
    schema = get_openapi(title="fleetward", version="0", routes=app.routes)
    components = schema.get("components", {}).get("schemas", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(components[node["$ref"].rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    ops: list[Operation] = []
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            if (method.upper(), path) in SKIP:
                continue
            content = op.get("requestBody", {}).get("content", {})
            media = next(iter(content), None)
            body = resolve(content[media]["schema"]) if media else None
            params = [resolve(p) for p in op.get("parameters", [])]
            ops.append(Operation(method.upper(), path, params, body, media))
    return ops


def _types(node: dict[str, Any]) -> set[str]:
    if "anyOf" in node:
        return {t for n in node["anyOf"] for t in _types(n)}
    if "enum" in node or "const" in node:
        return {"enum"}
    kind = node.get("type")
    return {kind} if isinstance(kind, str) else set()


def _choice(node: dict[str, Any]) -> dict[str, Any]:
    """The first non-null alternative of an ``anyOf``."""
    for option in node.get("anyOf", [node]):
        if option.get("type") != "null":
            return dict(option)
    return node


def _minimal(node: dict[str, Any]) -> Any:
    """A small instance of ``node`` (required members only)."""
    node = _choice(node)
    if "default" in node:
        return node["default"]
    if "enum" in node:
        return node["enum"][0]
    if "const" in node:
        return node["const"]
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties", {})
        return {k: _minimal(props[k]) for k in node.get("required", []) if k in props}
    if kind == "array":
        return []
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return False
    return "x"


def _leaves(node: dict[str, Any], depth: int = 0) -> Iterator[tuple[tuple[Any, ...], set[str]]]:
    """Every place a value goes in a body of schema ``node``: its location
    (keys, with 0 for the first item of an array) and its types."""
    node = _choice(node)
    kind = node.get("type")
    if kind == "object" and node.get("properties") and depth < 4:
        for key, sub in node["properties"].items():
            for loc, kinds in _leaves(sub, depth + 1):
                yield (key, *loc), kinds
    elif kind == "array" and depth < 4:
        for loc, kinds in _leaves(node.get("items", {}), depth + 1):
            yield (0, *loc), kinds
    else:
        yield (), _types(node) | ({"free"} if kind == "object" else set())


def _place(node: dict[str, Any], loc: tuple[Any, ...], value: Any) -> Any:
    """The minimal instance of ``node`` with ``value`` at ``loc``."""
    if not loc:
        return value
    node = _choice(node)
    if node.get("type") == "array":
        return [_place(node.get("items", {}), loc[1:], value)]
    base = _minimal(node)
    base = dict(base) if isinstance(base, dict) else {}
    base[loc[0]] = _place(node["properties"][loc[0]], loc[1:], value)
    return base


def _requests(op: Operation) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(label, url, request keywords) of every hostile request for ``op``."""
    path_values = {
        p["name"]: "999999" if "integer" in _types(p["schema"]) else "x"
        for p in op.params
        if p["in"] == "path"
    }

    def url(path_over: dict[str, str] | None = None, query_over: str = "") -> str:
        values = {**path_values, **(path_over or {})}
        text = op.path
        for name, value in values.items():
            text = text.replace("{" + name + "}", value)
        return text + (f"?{query_over}" if query_over else "")

    def body_kw(value: Any = None, *, at: tuple[Any, ...] | None = None) -> dict[str, Any]:
        if op.body is None:
            return {}
        if op.media != "application/json":
            return {}
        doc = _minimal(op.body) if at is None else _place(op.body, at, value)
        return {"content": json.dumps(doc), "headers": {"content-type": "application/json"}}

    for p in op.params:
        kinds = _types(p["schema"])
        for raw in ([str(v) for v in HOSTILE_INTS] if "integer" in kinds else []) + list(
            HOSTILE_RAW
        ):
            if p["in"] == "path":
                yield f"path {p['name']}={raw}", url({p["name"]: raw}), body_kw()
            elif p["in"] == "query":
                yield f"query {p['name']}={raw}", url(query_over=f"{p['name']}={raw}"), body_kw()
    if op.body is not None and op.media == "application/json":
        for loc, kinds in _leaves(op.body):
            values: list[Any] = []
            if "integer" in kinds or "number" in kinds:
                values += HOSTILE_INTS
            if "string" in kinds:
                values += HOSTILE_STRINGS
            if "free" in kinds:
                values += [{"n": HOSTILE_INTS[0], "s": HOSTILE_STRINGS[3]}, _statement()]
            for value in values:
                yield f"body {loc}={value!r}", url(), body_kw(value, at=loc)
    if op.body is not None and (op.media or "").startswith("multipart/"):
        fields = [k for k, v in op.body["properties"].items() if "string" in _types(v)]
        for value in HOSTILE_STRINGS[:3]:  # a lone surrogate has no multipart encoding
            form = {k: value for k in fields}
            files = {"artifact": ("a.bin", b"\xff\xfe", "application/octet-stream")}
            yield f"form={value!r}", url(), {"data": form, "files": files}
    if op.method in {"POST", "PUT", "PATCH"}:
        for raw_body in HOSTILE_BODIES:
            # A route with a declared body parses it by its media type; one
            # without reads the raw body itself (EST, OCSP), whatever it says.
            for media in (op.media,) if op.media else RAW_MEDIA:
                yield (
                    f"raw body {raw_body!r} as {media}",
                    url(),
                    {"content": raw_body, "headers": {"content-type": media}},
                )


def _statement() -> dict[str, Any]:
    """An attestation statement whose base64 members are not base64."""
    return {"format": FORMAT, "nonce": "\u00e9!", "signature": "\u00e9!", "chain": ["\u00e9"]}


def _with_headers(
    op: Operation, hostile: tuple[tuple[str, bytes], ...]
) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """The requests of ``op`` plus one per hostile header (on a bare request)."""
    yield from _requests(op)
    for name, value in hostile:
        kw: dict[str, Any] = {"headers": {name: value}}
        if op.method in {"POST", "PUT", "PATCH"}:
            kw["content"] = b"MIIB"
        yield f"header {name}: {value!r}", op.path.replace("{", "").replace("}", ""), kw


def _attack(
    client: TestClient,
    ops: list[Operation],
    who: str,
    *,
    headers: tuple[tuple[str, bytes], ...] = (),
    sparse: bool = False,
) -> tuple[int, list[str]]:
    """Send ``ops``' hostile requests; ``sparse``: one per route and value
    class (for callers refused before the body or the parameters count)."""
    sent = 0
    failures: list[str] = []
    for op in ops:
        seen: set[str] = set()
        for label, target, kw in _with_headers(op, headers):
            value_class = label.split(" as ")[0].split("=", 1)[-1]
            if sparse and value_class in seen:
                continue
            seen.add(value_class)
            sent += 1
            resp = client.request(op.method, target, **kw)
            kind = resp.headers.get("content-type", "")
            if resp.status_code >= 500:
                failures.append(f"{who} {op.method} {op.path} {label}: {resp.status_code}")
            elif resp.status_code >= 400 and not kind.startswith("application/problem+json"):
                failures.append(f"{who} {op.method} {op.path} {label}: {resp.status_code} {kind}")
    return sent, failures


def _inner(device_client: DeviceTestClient) -> Any:
    """The device plane's FastAPI app, inside the test TLS shim."""
    return getattr(device_client.app, "app")  # noqa: B009 - the shim is untyped


def _station_token(client: TestClient, admin: str) -> str:
    h = {"Authorization": f"Bearer {admin}"}
    factory = client.post(
        f"{API}/provisioning/factories", json={"name": "mal-1", "environment": "test"}, headers=h
    ).json()["id"]
    token: str = client.post(
        f"{API}/provisioning/factories/{factory}/tokens", json={"name": "st"}, headers=h
    ).json()["token"]
    return token


@pytest.mark.paused_workers
def test_every_route_answers_malformed_input_with_a_4xx_problem(
    ctx: AppContext, client: TestClient, device_client: DeviceTestClient, admin_token: str
) -> None:
    enroll(ctx, ["mal-dev-1"])
    pem = _pem_of(ctx, "mal-dev-1").decode()
    station = _station_token(client, admin_token)
    operator_ops = _operations(client.app)
    device_app = device_client.app
    device_ops = _operations(_inner(device_client))
    assert len(operator_ops) > 60 and len(device_ops) > 10

    callers = {
        "admin": TestClient(
            client.app,
            headers={"Authorization": f"Bearer {admin_token}"},
            raise_server_exceptions=False,
        ),
        "station": TestClient(
            client.app,
            headers={"Authorization": f"Bearer {station}"},
            raise_server_exceptions=False,
        ),
        "anonymous": TestClient(client.app, raise_server_exceptions=False),
    }
    device_callers = {
        "device": DeviceTestClient(
            device_app,
            headers={TLS_TEST_HEADER: base64.b64encode(pem.encode()).decode()},
            raise_server_exceptions=False,
        ),
        "device-anonymous": DeviceTestClient(device_app, raise_server_exceptions=False),
    }
    sent = 0
    failures: list[str] = []
    for who, caller in callers.items():
        n, found = _attack(
            caller,
            operator_ops,
            who,
            headers=AUTH_HEADERS if who == "anonymous" else (),
            sparse=who != "admin",
        )
        sent, failures = sent + n, failures + found
    for who, caller in device_callers.items():
        n, found = _attack(caller, device_ops, who, headers=DEVICE_HEADERS)
        sent, failures = sent + n, failures + found
    assert sent > 1000
    assert not failures, f"{len(failures)} of {sent}:\n" + "\n".join(failures)


def test_a_crl_number_past_64_bits_is_a_422_problem_without_authentication(
    device_client: DeviceTestClient,
) -> None:
    for name in ("99999999999999999999999", str(2**63), "-1", "0"):
        resp = device_client.get(f"/crl/{quote(name)}.crl")
        assert resp.status_code in {404, 422}, name
        assert resp.headers["content-type"].startswith("application/problem+json")
    assert device_client.get("/crl/99999999999999999999999.crl").status_code == 422


def _unbounded(node: dict[str, Any], where: str) -> Iterator[str]:
    """Integer places in ``node`` without bounds that fit a 64-bit column."""
    for loc, _ in _leaves(node):
        target = node
        for key in loc:
            target = _choice(target)
            target = target["items"] if key == 0 else target["properties"][key]
        for option in _choice(target).get("anyOf", [_choice(target)]):
            if option.get("type") != "integer":
                continue
            low, high = option.get("minimum"), option.get("maximum")
            if low is None or high is None or low < -(2**63) or high > DB_INT_MAX:
                yield f"{where} {'.'.join(map(str, loc))}"


def test_every_integer_a_request_carries_declares_64_bit_bounds(
    client: TestClient, device_client: DeviceTestClient
) -> None:
    """The declared bounds (fleetward.api.params), not the database driver,
    refuse an out-of-range integer, and clients see them in the document."""
    missing: list[str] = []
    for ops in (_operations(client.app), _operations(_inner(device_client))):
        for op in ops:
            for p in op.params:
                missing += _unbounded(p["schema"], f"{op.method} {op.path} {p['name']}")
            if op.body is not None:
                missing += _unbounded(op.body, f"{op.method} {op.path} body")
    assert not missing, "\n".join(missing)
