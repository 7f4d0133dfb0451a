"""Public routes that name a tenant do not tell which tenant names exist.

For every route whose path carries a tenant (``{tenant}``, or an EST
``{label}``), an unknown tenant, a known tenant without the object asked for,
and (on authenticated routes) another tenant must get the same problem:
same status, type, title and detail, with nothing echoed that differs. Only
``instance`` (the caller's own request path, RFC 9457) differs. The route
table is read from both planes' apps, so a new tenant-naming route without a
case here fails :func:`test_every_tenant_naming_route_is_covered`. These
routes are all on the device plane; the routes that act as a device are
asked anonymously and again with the certificate of a device of ``default``
(``as_device``), which must not tell the other tenants apart either.

What stays public by design: a tenant's TUF metadata once it has a
repository, its CA certificates (EST ``cacerts``), and a nonce for a device
that exists; those answer 200 and so reveal that the tenant exists.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fleetward.ota import repository as ota
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from tests.conftest import DeviceTestClient
from tests.helpers import csr_pem, new_key
from tests.response.helpers import enroll

KNOWN = "default"  # CAs, a TUF repository, no device "dev-1"
BARE = "bare"  # a tenant with nothing in it
UNKNOWN = "ghost"
TENANT_PARAM = re.compile(r"\{(tenant|label)(:[^}]*)?\}")  # a path parameter naming a tenant


@dataclass(frozen=True)
class Case:
    """One route and the request paths that must all answer alike."""

    route: str
    method: str
    paths: list[str]
    body: Callable[[], dict[str, Any] | bytes | None] = lambda: None
    authenticated: bool = False
    as_device: bool = False  # also ask with a device certificate of KNOWN
    marks: list[Any] = field(default_factory=list)


def _est_body() -> bytes:
    return base64.b64encode(_der_csr())


def _der_csr() -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_csr(csr_pem(new_key(), "dev-1")).public_bytes(Encoding.DER)


CASES = [
    Case(
        "/tuf/{tenant}/metadata/{filename}",
        "GET",
        [
            f"/tuf/{UNKNOWN}/metadata/timestamp.json",
            f"/tuf/{BARE}/metadata/timestamp.json",
            f"/tuf/{KNOWN}/metadata/99.root.json",
            f"/tuf/{UNKNOWN}/metadata/99.root.json",
        ],
    ),
    Case(
        "/tuf/{tenant}/targets/{path:path}",
        "GET",
        [
            f"/tuf/{UNKNOWN}/targets/fw/1.0.0/{'a' * 64}.fw.bin",
            f"/tuf/{BARE}/targets/fw/1.0.0/{'a' * 64}.fw.bin",
            f"/tuf/{KNOWN}/targets/fw/1.0.0/{'a' * 64}.fw.bin",
        ],
    ),
    Case(
        "/.well-known/est/{label}/cacerts",
        "GET",
        [
            f"/.well-known/est/{UNKNOWN}.production/cacerts",
            f"/.well-known/est/{BARE}.production/cacerts",
            f"/.well-known/est/{KNOWN}.nowhere/cacerts",
        ],
    ),
    Case(
        # Authenticated: the caller is tenant BARE; KNOWN is another tenant.
        "/.well-known/est/{label}/simpleenroll",
        "POST",
        [
            f"/.well-known/est/{UNKNOWN}.production/simpleenroll",
            f"/.well-known/est/{KNOWN}.production/simpleenroll",
        ],
        body=_est_body,
        authenticated=True,
    ),
    Case(
        "/.well-known/est/{label}/simplereenroll",
        "POST",
        # The caller's own tenant label goes on to the CSR; any other tenant,
        # existing or not, reads as an unknown label.
        [
            f"/.well-known/est/{UNKNOWN}.production/simplereenroll",
            f"/.well-known/est/{BARE}.production/simplereenroll",
        ],
        body=_est_body,
        as_device=True,
    ),
    Case(
        "/api/v1/attestation/{tenant}/{device_id}/nonce",
        "POST",
        [
            f"/api/v1/attestation/{UNKNOWN}/dev-1/nonce",
            f"/api/v1/attestation/{BARE}/dev-1/nonce",
            f"/api/v1/attestation/{KNOWN}/dev-1/nonce",
        ],
        as_device=True,
    ),
    Case(
        "/api/v1/attestation/{tenant}/{device_id}/evidence",
        "POST",
        [
            f"/api/v1/attestation/{UNKNOWN}/dev-1/evidence",
            f"/api/v1/attestation/{BARE}/dev-1/evidence",
            f"/api/v1/attestation/{KNOWN}/dev-1/evidence",
        ],
        body=lambda: {"evidence": "e30.e30.c2ln"},
        as_device=True,
    ),
]


@pytest.fixture
def bare_token(ctx: AppContext) -> str:
    """Tenant ``bare`` (no CAs, no repository) with an admin token; and a
    TUF repository for ``default``, so a known repository lacks the file."""
    with ctx.db.session() as s:
        bare = tenancy.create_tenant(s, name=BARE, actor="test")
        _, token = tenancy.create_token(s, tenant=bare, name="a", role="admin", actor="test")
        ota.ensure_repository(s, ctx.pki.keyring, tenancy.get_tenant_by_name(s, KNOWN))
    return token


def _flat(routes: list[Any]) -> Iterator[Any]:
    """Every route, through included routers (FastAPI keeps those as branches)."""
    for route in routes:
        if hasattr(route, "effective_candidates"):
            yield from _flat(route.effective_candidates())
        else:
            yield route


def _paths(app: Any) -> set[str]:
    return {getattr(r, "path", "") for r in _flat(app.routes)}


def _tenant_naming_routes(*apps: Any) -> set[str]:
    return {p for app in apps for p in _paths(app) if TENANT_PARAM.search(p)}


def test_every_tenant_naming_route_is_covered(
    client: TestClient, device_client: DeviceTestClient
) -> None:
    operator, device = client.app, device_client.app.app  # type: ignore[attr-defined]
    assert "/api/v1/tenant" in _paths(operator)  # the walk found the included routers
    assert "/ocsp" in _paths(device)
    assert _tenant_naming_routes(operator, device) == {c.route for c in CASES}
    assert _tenant_naming_routes(operator) == set()  # all of them are the device's


def _answer(client: TestClient, case: Case, path: str, token: str) -> tuple[Any, ...]:
    body = case.body()
    headers = {"Authorization": f"Bearer {token}"} if case.authenticated else {}
    if isinstance(body, bytes):
        resp = client.request(case.method, path, content=body, headers=headers)
    else:
        resp = client.request(case.method, path, json=body, headers=headers)
    assert resp.status_code >= 400, (path, resp.status_code)
    assert resp.headers["content-type"] == "application/problem+json", path
    problem = resp.json()
    assert problem.pop("instance") == path
    per_request = ("date", "content-length", "x-request-id")
    other_headers = {k: v for k, v in resp.headers.items() if k not in per_request}
    return resp.status_code, problem, other_headers


def _alike(client: TestClient, case: Case, token: str) -> None:
    answers = {path: _answer(client, case, path, token) for path in case.paths}
    first = answers[case.paths[0]]
    for path, answer in answers.items():
        assert answer == first, f"{path} answers differently from {case.paths[0]}"
    assert UNKNOWN not in str(first) and KNOWN not in str(first) and BARE not in str(first)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.route, marks=c.marks) for c in CASES])
def test_unknown_and_known_tenants_answer_alike(
    device_client: DeviceTestClient, ctx: AppContext, bare_token: str, case: Case
) -> None:
    _alike(device_client, case, bare_token)
    if case.as_device:
        enroll(ctx, ["dev-0"])  # a device of KNOWN, asking about dev-1 everywhere
        _alike(device_client.as_device(_pem_of(ctx, "dev-0")), case, bare_token)


def test_public_by_design_answers(device_client: DeviceTestClient, bare_token: str) -> None:
    """What does reveal a tenant, on purpose: its CA certificates and TUF
    metadata, which devices must be able to fetch."""
    assert device_client.get(f"/.well-known/est/{KNOWN}.production/cacerts").status_code == 200
    assert device_client.get(f"/tuf/{KNOWN}/metadata/timestamp.json").status_code == 200


def _pem_of(ctx: AppContext, device_id: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from sqlalchemy import select

    from fleetward.identity.models import CertificateRecord, Device

    with ctx.db.read() as s:
        der = s.execute(
            select(CertificateRecord.der)
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(Device.device_id == device_id, CertificateRecord.status == "good")
        ).scalar_one()
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
