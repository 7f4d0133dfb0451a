"""The two planes, served for real: the device plane over TLS (openssl,
curl), client certificates, the trusted-proxy header, route separation, and
trust that follows the database without a restart."""

from __future__ import annotations

import base64
import datetime as dt
import json
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import NameOID

from fleetward.api.serve import PlaneServers
from fleetward.identity import ca_service, issuance
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal
from tests.conftest import DeviceTestClient
from tests.helpers import csr_pem
from tests.response.helpers import enroll

pytestmark = pytest.mark.paused_workers


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def _status(result: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    body, _, code = result.stdout.rpartition("\n")
    return int(code or 0), body


def _csr_b64(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    der = x509.load_pem_x509_csr(csr_pem(key, device_id)).public_bytes(Encoding.DER)
    return base64.b64encode(der)


def _certs(body: str) -> list[x509.Certificate]:
    return pkcs7.load_der_pkcs7_certificates(base64.b64decode(body))


def _device_files(
    tmp: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, name: str
) -> tuple[Path, Path]:
    cert_path, key_path = tmp / f"{name}.crt", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _enroll_est(
    live_device: str, service_ca: Path, token: str, tmp: Path, device_id: str
) -> tuple[ec.EllipticCurvePrivateKey, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = tmp / f"{device_id}.b64"
    csr.write_bytes(_csr_b64(key, device_id))
    code, body = _status(
        _curl(
            "--cacert",
            str(service_ca),
            "-u",
            f"station:{token}",
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            f"@{csr}",
            f"{live_device}/.well-known/est/test/simpleenroll",
        )
    )
    assert code == 200, body
    [cert] = _certs(body)
    cert_path, key_path = _device_files(tmp, key, cert, device_id)
    return key, cert_path, key_path


def _reenroll(
    live_device: str,
    service_ca: Path,
    tmp: Path,
    key: ec.EllipticCurvePrivateKey,
    device_id: str,
    *extra: str,
) -> tuple[int, str]:
    csr = tmp / f"{device_id}-re.b64"
    csr.write_bytes(_csr_b64(key, device_id))
    return _status(
        _curl(
            "--cacert",
            str(service_ca),
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            f"@{csr}",
            *extra,
            f"{live_device}/.well-known/est/simplereenroll",
        )
    )


def test_device_plane_presents_the_service_certificate(
    live_device: str, service_ca: Path, ctx: AppContext
) -> None:
    port = live_device.rsplit(":", 1)[1]
    for name in ctx.settings.service_names:
        flag = "-verify_ip" if name[0].isdigit() else "-verify_hostname"
        result = subprocess.run(
            [
                "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile",
                str(service_ca), "-verify_return_error", flag, name, "-brief",
            ],
            input="",
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "Verification: OK" in result.stderr, result.stderr
    # A name not in the settings does not verify.
    bad = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(service_ca),
            "-verify_return_error", "-verify_hostname", "evil.example", "-brief",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )  # fmt: skip
    assert bad.returncode != 0


def test_device_plane_is_tls_only(live_device: str) -> None:
    plain = live_device.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/healthz", timeout=5)


def test_est_enroll_and_reenroll_over_tls(
    live_device: str, service_ca: Path, admin_token: str, tmp_path: Path, ctx: AppContext
) -> None:
    key, cert, cert_key = _enroll_est(live_device, service_ca, admin_token, tmp_path, "est-1")
    # Reenroll with the TLS client certificate: a new certificate, same device.
    code, body = _reenroll(
        live_device, service_ca, tmp_path, key, "est-1", "--cert", str(cert), "--key",
        str(cert_key),
    )  # fmt: skip
    assert code == 200, body
    [renewed] = _certs(body)
    assert renewed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "est-1"
    # Without a client certificate: refused, with a clear problem.
    code, body = _reenroll(live_device, service_ca, tmp_path, key, "est-1")
    assert code == 401
    assert json.loads(body)["type"].endswith("client-certificate-required")
    # An operator token is not a device credential.
    code, body = _reenroll(
        live_device,
        service_ca,
        tmp_path,
        key,
        "est-1",
        "-H",
        f"Authorization: Bearer {admin_token}",
    )
    assert code == 401
    assert "not a device credential" in json.loads(body)["detail"]


def test_forged_header_refused_unless_from_a_trusted_proxy(
    live_device: str, service_ca: Path, admin_token: str, tmp_path: Path, ctx: AppContext
) -> None:
    key, cert, _ = _enroll_est(live_device, service_ca, admin_token, tmp_path, "hdr-1")
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(Encoding.DER)
    header = f"X-Fleetward-Client-Cert: {base64.b64encode(der).decode()}"
    code, body = _reenroll(live_device, service_ca, tmp_path, key, "hdr-1", "-H", header)
    assert code == 401
    assert json.loads(body)["type"].endswith("untrusted-certificate-header")
    ctx.settings = ctx.settings.replace(trusted_proxies=("127.0.0.1",))
    code, body = _reenroll(live_device, service_ca, tmp_path, key, "hdr-1", "-H", header)
    assert code == 200, body
    # Rubbish from a trusted proxy is still refused, never a 500.
    code, body = _reenroll(
        live_device, service_ca, tmp_path, key, "hdr-1", "-H", "X-Fleetward-Client-Cert: @@@"
    )
    assert code == 401, body


def test_each_plane_serves_only_its_routes(
    live: str, live_device: str, service_ca: Path, admin_token: str
) -> None:
    auth = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(verify=ssl.create_default_context(cafile=service_ca), timeout=20) as http:
        assert http.get(f"{live}/api/v1/devices", headers=auth).status_code == 200
        assert http.get(f"{live_device}/api/v1/devices", headers=auth).status_code == 404
        assert http.get(f"{live_device}/api/v1/openapi.json").status_code == 404
        assert http.get(f"{live_device}/metrics").status_code == 404
        for path in ("/.well-known/est/cacerts", "/tuf/default/metadata/1.root.json"):
            assert http.get(f"{live}{path}").status_code == 404, path
        assert http.post(f"{live}/api/v1/renew", json={}).status_code == 404
        assert http.get(f"{live_device}/.well-known/est/cacerts").status_code == 200
        assert http.get(f"{live_device}/healthz").status_code == 200
        assert http.get(f"{live}/healthz").status_code == 200


def test_revoked_certificate_refused(
    live: str, live_device: str, service_ca: Path, admin_token: str, tmp_path: Path
) -> None:
    key, cert, cert_key = _enroll_est(live_device, service_ca, admin_token, tmp_path, "rev-1")
    resp = httpx.post(
        f"{live}/api/v1/devices/rev-1/revocation",
        json={"reason": "keyCompromise"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status_code == 200, resp.text
    code, body = _reenroll(
        live_device, service_ca, tmp_path, key, "rev-1", "--cert", str(cert), "--key",
        str(cert_key),
    )  # fmt: skip
    assert code == 401
    assert "revoked" in json.loads(body)["detail"]


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return _device_files(tmp, key, cert, "rogue")


def test_untrusted_ca_fails_the_handshake(
    live_device: str, service_ca: Path, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    result = _curl(
        "--cacert", str(service_ca), "--cert", str(cert), "--key", str(key),
        f"{live_device}/.well-known/est/cacerts",
    )  # fmt: skip
    code, _ = _status(result)
    assert result.returncode != 0 and code == 0, result


def test_new_tenant_ca_trusted_without_restart(
    planes: PlaneServers, live_device: str, service_ca: Path, tmp_path: Path, ctx: AppContext
) -> None:
    before = planes.tls.generation
    with ctx.db.session() as s:
        tenant = tenancy.create_tenant(s, name="newco", actor="test")
        ca_service.create_tenant_pki(s, ctx.pki, tenant=tenant, actor="test")
        tenant_id = tenant.id
    key = ec.generate_private_key(ec.SECP256R1())
    who = Principal(tenant_id, "newco", "admin", "token:test")
    [result] = issuance.enroll_many(
        ctx.db,
        ctx.pki,
        who,
        items=[issuance.BatchItem(device_id="n-1", csr=csr_pem(key, "n-1"))],
        environment="test",
    )
    assert result.error is None and result.issued is not None
    cert_path, key_path = _device_files(
        tmp_path, key, x509.load_der_x509_certificate(result.issued.der), "n-1"
    )
    deadline = time.monotonic() + 10
    while planes.tls.generation == before:
        assert time.monotonic() < deadline, "the device plane did not pick up the new CA"
        time.sleep(0.05)
    # curl to an IP address sends no SNI: the callback still swaps the context.
    code, body = _reenroll(
        live_device, service_ca, tmp_path, key, "n-1", "--cert", str(cert_path), "--key",
        str(key_path),
    )  # fmt: skip
    assert code == 200, body


def test_attestation_is_bound_to_the_certificate(
    device_client: DeviceTestClient, ctx: AppContext
) -> None:
    key = enroll(ctx, ["att-1", "att-2"])
    del key
    pem = _pem_of(ctx, "att-1")
    me = device_client.as_device(pem)
    assert me.post("/api/v1/attestation/default/att-1/nonce").status_code == 200
    other = me.post("/api/v1/attestation/default/att-2/nonce")
    assert other.status_code == 403, other.text
    junk = me.post("/api/v1/attestation/default/att-2/evidence", json={"evidence": "x.y.z"})
    assert junk.status_code == 403
    anonymous = device_client.post(
        "/api/v1/attestation/default/att-1/evidence", json={"evidence": "x.y.z"}
    )
    assert anonymous.status_code == 401
    # Nothing was written for the refused requests.
    with ctx.db.read() as s:
        from fleetward import telemetry

        events = telemetry.query(s, _admin(), type_prefix="attestation.", limit=10)
    assert events == []


def test_device_telemetry_is_about_the_caller(
    device_client: DeviceTestClient, client: httpx.Client, ctx: AppContext, admin_token: str
) -> None:
    enroll(ctx, ["tel-1"])
    me = device_client.as_device(_pem_of(ctx, "tel-1"))
    resp = me.post(
        "/api/v1/device/telemetry", json={"events": [{"type": "boot.ok", "fields": {"n": 1}}]}
    )
    assert resp.status_code == 201, resp.text
    assert device_client.post("/api/v1/device/telemetry", json={"events": []}).status_code == 401
    forged = me.post("/api/v1/device/telemetry", json={"events": [{"type": "attestation.pass"}]})
    assert forged.status_code == 400
    flood = me.post("/api/v1/device/telemetry", json={"events": [{"type": "a"}] * 1001})
    assert flood.status_code == 422
    got = client.get(
        "/api/v1/telemetry/events",
        params={"type": "boot."},
        headers={"Authorization": f"Bearer {admin_token}"},
    ).json()["items"]
    assert [(e["device"], e["type"]) for e in got] == [("tel-1", "boot.ok")]
    # The device plane's token route does not exist; a device certificate
    # means nothing on the operator plane.
    assert me.post("/api/v1/telemetry/events", json={"events": []}).status_code == 404


def _admin() -> Principal:
    return Principal(1, "default", "admin", "token:test")


def _pem_of(ctx: AppContext, device_id: str) -> bytes:
    from sqlalchemy import select

    from fleetward.identity.models import CertificateRecord, Device

    with ctx.db.read() as s:
        der = s.execute(
            select(CertificateRecord.der)
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(Device.device_id == device_id, CertificateRecord.status == "good")
        ).scalar_one()
    return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
