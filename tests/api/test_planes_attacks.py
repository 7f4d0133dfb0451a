"""Hostile callers of the two planes, against the real servers on loopback
(the ``planes`` fixture: uvicorn, the device plane over TLS).

Checks that held are kept as regression tests; the weaknesses found are
``xfail(strict=True)`` with the code that is responsible in their reason, so
they turn into failures (and must be unmarked) once fixed."""

from __future__ import annotations

import base64
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import func, select

from fleetward.api.serve import PlaneServers
from fleetward.audit.models import AuditEntry
from fleetward.identity import ca_service, issuance
from fleetward.runtime.context import AppContext
from fleetward.telemetry.models import Event
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal
from tests.api.test_planes import _pem_of
from tests.helpers import csr_pem
from tests.response.helpers import enroll

pytestmark = pytest.mark.paused_workers

CERT_HEADER = "X-Fleetward-Client-Cert"
TELEMETRY = "/api/v1/device/telemetry"


def _files(tmp: Path, key: ec.EllipticCurvePrivateKey, pem: bytes, name: str) -> tuple[str, str]:
    cert, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert.write_bytes(pem)
    key_path.write_bytes(
        key.private_bytes(
            Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert), str(key_path)


def _tls(service_ca: Path, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=service_ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


def _device(live_device: str, service_ca: Path, cert: tuple[str, str] | None) -> httpx.Client:
    """A fresh HTTPS client of the device plane (one connection per client, so
    a connection the server closes after a 500 does not leak into the next
    check)."""
    return httpx.Client(base_url=live_device, verify=_tls(service_ca, cert), timeout=20)


@pytest.fixture
def device_cert(ctx: AppContext, tmp_path: Path) -> tuple[str, str]:
    """Cert and key files of device ``atk-1`` (tenant ``default``, test)."""
    key = enroll(ctx, ["atk-1", "atk-2"])
    return _files(tmp_path, key, _pem_of(ctx, "atk-1"), "atk-1")


@pytest.fixture
def trusted_loopback(ctx: AppContext) -> Iterator[None]:
    """127.0.0.1 as a trusted proxy (the live server reads ``ctx.settings``)."""
    before = ctx.settings
    ctx.settings = ctx.settings.replace(trusted_proxies=("127.0.0.1",))
    yield
    ctx.settings = before


def _post(live_device: str, service_ca: Path, cert: tuple[str, str] | None, body: str) -> int:
    with _device(live_device, service_ca, cert) as c:
        return c.post(
            TELEMETRY, content=body, headers={"content-type": "application/json"}
        ).status_code


# --------------------------------------------------------------------- held


def test_operator_surface_is_absent_from_the_device_plane(
    live_device: str, service_ca: Path, admin_token: str, device_cert: tuple[str, str]
) -> None:
    auth = {"Authorization": f"Bearer {admin_token}"}
    with _device(live_device, service_ca, device_cert) as c:
        for path in (
            "/api/v1/docs",
            "/docs",
            "/redoc",
            "/openapi.json",
            "/api/v1/openapi.json",
            "/metrics",
            "/api/v1/cas",
            "/api/v1/tokens",
            "/api/v1/devices",
            "/api/v1/telemetry/events",
        ):
            assert c.get(path, headers=auth).status_code == 404, path
        assert c.post("/api/v1/cas/1/distrust", json={}, headers=auth).status_code == 404


def test_device_certificate_means_nothing_on_the_operator_plane(live: str) -> None:
    resp = httpx.get(f"{live}/api/v1/devices", timeout=10)
    assert resp.status_code == 401
    assert httpx.post(f"{live}{TELEMETRY}", json={"events": []}, timeout=10).status_code == 404


def test_operator_token_is_no_device_credential(
    live_device: str, service_ca: Path, admin_token: str
) -> None:
    auth = {"Authorization": f"Bearer {admin_token}"}
    with _device(live_device, service_ca, None) as c:
        for path, body in (
            (TELEMETRY, {"events": []}),
            ("/api/v1/renew", {"csr": "x"}),
            ("/api/v1/attestation/default/atk-1/nonce", None),
        ):
            resp = c.post(path, json=body, headers=auth)
            assert resp.status_code == 401, (path, resp.text)
            assert resp.json()["type"].endswith("client-certificate-required")


def test_service_identity_certificate_fails_the_device_handshake(
    live_device: str, service_ca: Path, ctx: AppContext
) -> None:
    pair = ctx.service_pki.client("ingest")
    with (
        _device(live_device, service_ca, (str(pair.cert), str(pair.key))) as c,
        pytest.raises(httpx.TransportError),
    ):
        c.post(TELEMETRY, json={"events": []})


def test_another_tenants_device_cannot_act_for_this_tenant(
    planes: PlaneServers,
    live_device: str,
    service_ca: Path,
    ctx: AppContext,
    tmp_path: Path,
    device_cert: tuple[str, str],
) -> None:
    before = planes.tls.generation
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="test")
        ca_service.create_tenant_pki(s, ctx.pki, tenant=other, actor="test")
        other_id = other.id
    key = ec.generate_private_key(ec.SECP256R1())
    [res] = issuance.enroll_many(
        ctx.db,
        ctx.pki,
        Principal(other_id, "other", "admin", "token:test"),
        items=[issuance.BatchItem(device_id="atk-1", csr=csr_pem(key, "atk-1"))],
        environment="test",
    )
    assert res.issued is not None, res.error
    pem = x509.load_der_x509_certificate(res.issued.der).public_bytes(Encoding.PEM)
    theirs = _files(tmp_path, key, pem, "other-atk-1")
    deadline = time.monotonic() + 10
    while planes.tls.generation == before:
        assert time.monotonic() < deadline, "the new tenant's CA was not picked up"
        time.sleep(0.05)
    with _device(live_device, service_ca, theirs) as c:
        # Same device id, other tenant: refused before anything is written.
        for op in ("nonce", "evidence"):
            resp = c.post(f"/api/v1/attestation/default/atk-1/{op}", json={"evidence": "x.y.z"})
            assert resp.status_code == 403, (op, resp.text)
        assert c.post("/api/v1/attestation/other/atk-1/nonce").status_code == 200
        # An EST label naming another tenant answers like an unknown label.
        resp = c.post("/.well-known/est/default.test/simplereenroll", content=b"AAAA")
        assert resp.status_code == 404 and resp.json()["detail"] == "unknown EST label"
        # Its own tenant's label goes on to the CSR (junk here: 400).
        assert (
            c.post("/.well-known/est/other.test/simplereenroll", content=b"AAAA").status_code == 400
        )


def test_tls_certificate_wins_over_the_header_even_from_a_trusted_proxy(
    live_device: str,
    service_ca: Path,
    ctx: AppContext,
    device_cert: tuple[str, str],
    trusted_loopback: None,
) -> None:
    other = x509.load_pem_x509_certificate(_pem_of(ctx, "atk-2")).public_bytes(Encoding.DER)
    header = {CERT_HEADER: base64.b64encode(other).decode()}
    with _device(live_device, service_ca, device_cert) as c:
        resp = c.post("/api/v1/attestation/default/atk-2/nonce", headers=header)
        assert resp.status_code == 403, resp.text


def test_header_from_an_untrusted_peer_is_refused(
    live_device: str, service_ca: Path, ctx: AppContext, device_cert: tuple[str, str]
) -> None:
    der = x509.load_pem_x509_certificate(_pem_of(ctx, "atk-1")).public_bytes(Encoding.DER)
    with _device(live_device, service_ca, None) as c:
        resp = c.post(
            TELEMETRY, json={"events": []}, headers={CERT_HEADER: base64.b64encode(der).decode()}
        )
    assert resp.status_code == 401
    assert resp.json()["type"].endswith("untrusted-certificate-header")


@pytest.mark.parametrize(
    "value",
    ["A" * 60000, "%%%%", "", "-----BEGIN CERTIFICATE-----", "QUJD"],
    ids=["huge", "not-base64", "empty", "pem-text", "base64-not-der"],
)
def test_rubbish_header_from_a_trusted_proxy_is_a_401(
    live_device: str, service_ca: Path, trusted_loopback: None, value: str
) -> None:
    with _device(live_device, service_ca, None) as c:
        resp = c.post(TELEMETRY, json={"events": []}, headers={CERT_HEADER: value})
    assert resp.status_code == 401, resp.text


def test_revoked_device_is_refused_on_every_device_route(
    live: str,
    live_device: str,
    service_ca: Path,
    admin_token: str,
    device_cert: tuple[str, str],
) -> None:
    resp = httpx.post(
        f"{live}/api/v1/devices/atk-1/state",
        json={"state": "retired"},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    with _device(live_device, service_ca, device_cert) as c:
        for path, body in (
            (TELEMETRY, {"events": []}),
            ("/api/v1/renew", {"csr": "x"}),
            ("/api/v1/attestation/default/atk-1/nonce", None),
        ):
            resp = c.post(path, json=body)
            assert resp.status_code == 401, (path, resp.text)
        resp = c.post("/.well-known/est/simplereenroll", content=b"AAAA")
        assert resp.status_code == 401, resp.text


def test_plain_http_and_any_server_name_at_the_tls_port(live_device: str, service_ca: Path) -> None:
    port = int(live_device.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not raw.recv(100).startswith(b"HTTP/")  # closed, nothing served in clear
    for name in (None, "evil.example"):
        context = _tls(service_ca)
        context.check_hostname = False
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=name) as tls,
        ):
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert tls.recv(40).startswith(b"HTTP/1.1 200"), name


@pytest.mark.parametrize("ca_id", ["0", "-1", str(2**31), str(2**63), "x", "1e3", "%00"])
def test_hostile_ca_ids_on_distrust(live: str, admin_token: str, ca_id: str) -> None:
    resp = httpx.post(
        f"{live}/api/v1/cas/{ca_id}/distrust",
        json={"force": True},
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert resp.status_code == 422, resp.text


def test_est_reenroll_answers_before_reading_a_huge_body(
    live_device: str, service_ca: Path
) -> None:
    assert _headers_only(live_device, service_ca, "/.well-known/est/simplereenroll") == 401


# --------------------------------------------------------------- weaknesses


def test_device_telemetry_with_a_naive_time_is_a_4xx(
    live_device: str, service_ca: Path, device_cert: tuple[str, str]
) -> None:
    body = '{"events":[{"type":"boot.x","at":"2020-01-01T00:00:00"}]}'
    assert _post(live_device, service_ca, device_cert, body) in (400, 422)


def test_device_telemetry_with_an_out_of_range_time_is_a_4xx(
    live_device: str, service_ca: Path, device_cert: tuple[str, str]
) -> None:
    for at in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"):
        body = f'{{"events":[{{"type":"boot.x","at":"{at}"}}]}}'
        assert _post(live_device, service_ca, device_cert, body) in (400, 422), at


def test_device_cannot_break_the_operators_event_list(
    live: str,
    live_device: str,
    service_ca: Path,
    admin_token: str,
    device_cert: tuple[str, str],
) -> None:
    body = '{"events":[{"type":"boot.sur","fields":{"x":"\\ud800"}}]}'
    stored = _post(live_device, service_ca, device_cert, body)
    listed = httpx.get(
        f"{live}/api/v1/telemetry/events",
        headers={"Authorization": f"Bearer {admin_token}"},
        timeout=10,
    )
    assert stored in (400, 422) or listed.status_code == 200, (stored, listed.status_code)
    assert listed.status_code == 200


def test_non_ascii_header_from_a_trusted_proxy_is_a_401(
    live_device: str, service_ca: Path, trusted_loopback: None
) -> None:
    with _device(live_device, service_ca, None) as c:
        resp = c.post(
            TELEMETRY,
            json={"events": []},
            headers=[(CERT_HEADER.encode(), "\xff\xff\xff\xff".encode("latin-1"))],
        )
    assert resp.status_code == 401, resp.text


@pytest.mark.parametrize(
    "path",
    [TELEMETRY, "/api/v1/renew", "/api/v1/attestation/default/atk-1/evidence"],
)
def test_anonymous_body_is_not_read_before_the_certificate_check(
    live_device: str, service_ca: Path, path: str
) -> None:
    assert _headers_only(live_device, service_ca, path) == 401


def test_a_device_flooding_refused_renewals_does_not_flood_the_audit_log(
    live_device: str, service_ca: Path, ctx: AppContext, device_cert: tuple[str, str]
) -> None:
    n = 20
    before = _count(ctx, AuditEntry)
    with _device(live_device, service_ca, device_cert) as c:
        for _ in range(n):
            assert c.post("/api/v1/renew", json={"csr": "junk"}).status_code == 400
            resp = c.post(
                "/.well-known/est/simplereenroll",
                content=b"AAAA",
                headers={"X-Fleetward-Renewal-Proof": "@@"},
            )
            assert resp.status_code == 400
    # One entry per route at once (the first refusal), one with the count later.
    assert _count(ctx, AuditEntry) - before <= 2
    ctx.flush_refusals(everything=True)
    assert _count(ctx, AuditEntry) - before <= 4


def test_a_device_flooding_junk_evidence_does_not_add_a_row_each(
    live_device: str, service_ca: Path, ctx: AppContext, device_cert: tuple[str, str]
) -> None:
    n = 30
    before = _count(ctx, Event)
    with _device(live_device, service_ca, device_cert) as c:
        for _ in range(n):
            resp = c.post("/api/v1/attestation/default/atk-1/evidence", json={"evidence": "x.y.z"})
            assert resp.status_code == 422
    assert _count(ctx, Event) - before == 1  # the first; the rest are counted
    ctx.flush_refusals(everything=True)
    with ctx.db.read() as s:
        counts = s.scalars(select(Event.count).where(Event.type == "attestation.refused")).all()
    assert sorted(counts) == [1, n - 1]


# ------------------------------------------------------------------ helpers


def _count(ctx: AppContext, model: type[AuditEntry] | type[Event]) -> int:
    with ctx.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def _headers_only(live_device: str, service_ca: Path, path: str) -> int:
    """The status a request gets that announces 100 MB and sends none of it
    (0: no answer within 3 s, the server waits for the body)."""
    port = int(live_device.rsplit(":", 1)[1])
    context = _tls(service_ca)
    context.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Content-Length: 104857600\r\n\r\n".encode()
        )
        tls.settimeout(3)
        try:
            head = tls.recv(64)
        except TimeoutError:
            return 0
    return int(head.split()[1]) if head.startswith(b"HTTP/1.1 ") else -1
