"""OCSP answers and CRL publication, through the API."""

from __future__ import annotations

import base64
import datetime as dt
import urllib.parse

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from fastapi.testclient import TestClient

from fleetward.identity import ca as ca_profile
from fleetward.identity import publication
from fleetward.keys import generate_ephemeral_signer, sign_certificate
from fleetward.runtime.context import AppContext
from tests.helpers import csr_pem, new_key
from tests.identity.test_api import auth, cas, enroll


def issue(
    client: TestClient, token: str, device_id: str
) -> tuple[x509.Certificate, x509.Certificate]:
    body = enroll(client, token, device_id, csr_pem(new_key(), device_id)).json()
    return x509.load_pem_x509_certificate(body["certificate"].encode()), cas(client, token)[
        "production"
    ]


def ask(
    client: TestClient,
    cert: x509.Certificate,
    issuer: x509.Certificate,
    *,
    nonce: bytes | None = None,
    get: bool = False,
) -> ocsp.OCSPResponse:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    der = builder.build().public_bytes(Encoding.DER)
    if get:
        resp = client.get("/ocsp/" + urllib.parse.quote(base64.b64encode(der).decode(), safe=""))
    else:
        resp = client.post(
            "/ocsp", content=der, headers={"content-type": "application/ocsp-request"}
        )
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/ocsp-response"
    return ocsp.load_der_ocsp_response(resp.content)


def test_ocsp_good_revoked_unknown_and_nonce(
    client: TestClient, admin_token: str, device_client: TestClient
) -> None:
    cert, issuer = issue(client, admin_token, "o1")
    answer = ask(device_client, cert, issuer, nonce=b"0123456789abcdef")
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert (
        answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"0123456789abcdef"
    )
    issuer_key = issuer.public_key()
    assert isinstance(issuer_key, ec.EllipticCurvePublicKey)
    issuer_key.verify(answer.signature, answer.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))
    client.post(
        f"/api/v1/certificates/{format(cert.serial_number, 'x')}/revocation",
        json={"reason": "superseded"},
        headers=auth(admin_token),
    )
    answer = ask(device_client, cert, issuer, get=True)
    assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert answer.revocation_reason == x509.ReasonFlags.superseded
    # Same issuer, a serial fleetward never issued.
    known = ocsp.load_der_ocsp_request(
        ocsp.OCSPRequestBuilder()
        .add_certificate(cert, issuer, hashes.SHA256())
        .build()
        .public_bytes(Encoding.DER)
    )
    req = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(
            issuer_name_hash=known.issuer_name_hash,
            issuer_key_hash=known.issuer_key_hash,
            serial_number=12345,
            algorithm=hashes.SHA256(),
        )
        .build()
    )
    resp = device_client.post("/ocsp", content=req.public_bytes(Encoding.DER))
    assert (
        ocsp.load_der_ocsp_response(resp.content).certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    )


def test_ocsp_unknown_issuer_and_malformed(
    client: TestClient, admin_token: str, device_client: TestClient
) -> None:
    cert, _ = issue(client, admin_token, "o2")
    signer = generate_ephemeral_signer()
    foreign = sign_certificate(
        ca_profile.root_ca_certificate(
            public_key=signer.public_key(), tenant="evil", serial=9, now=dt.datetime.now(dt.UTC)
        ),
        signer,
    )
    answer = ask(device_client, cert, foreign)
    assert answer.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED
    resp = device_client.post("/ocsp", content=b"\x30\x00garbage")
    assert (
        ocsp.load_der_ocsp_response(resp.content).response_status
        == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
    # Past the request limit the listener refuses before reading (api/limits.py):
    # an HTTP 413 problem, not an OCSP answer.
    resp = device_client.post("/ocsp", content=b"\x30" * 5000)
    assert resp.status_code == 413
    assert resp.headers["content-type"].startswith("application/problem+json")


def test_revocation_leaves_the_crl_to_the_publisher(
    client: TestClient, ctx: AppContext, admin_token: str, device_client: TestClient
) -> None:
    cert, issuer = issue(client, admin_token, "c1")
    ca_id = 3
    before = x509.load_der_x509_crl(device_client.get(f"/crl/{ca_id}.crl").content)
    assert before.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    client.post(
        f"/api/v1/certificates/{format(cert.serial_number, 'x')}/revocation",
        json={"reason": "keyCompromise"},
        headers=auth(admin_token),
    )
    unchanged = x509.load_der_x509_crl(device_client.get(f"/crl/{ca_id}.crl").content)
    assert unchanged.get_revoked_certificate_by_serial_number(cert.serial_number) is None
    client.app.state.runtime.step("publisher")  # type: ignore[attr-defined]
    after = x509.load_der_x509_crl(device_client.get(f"/crl/{ca_id}.crl").content)
    entry = after.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert (
        entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        == x509.ReasonFlags.key_compromise
    )

    def number(crl: x509.CertificateRevocationList) -> int:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    assert number(after) == number(before) + 1
    assert after.next_update_utc is not None and after.next_update_utc > dt.datetime.now(
        dt.UTC
    ) + dt.timedelta(hours=23)
    assert publication.publish_crls(ctx.db, ctx.pki) == []  # nothing changed: nothing rebuilt


def test_tenant_lifetime_policy_applies(client: TestClient, admin_token: str) -> None:
    resp = client.patch(
        "/api/v1/tenant", json={"cert_lifetime_days": 30}, headers=auth(admin_token)
    )
    assert resp.json()["cert_lifetime_days"] == 30
    cert, _ = issue(client, admin_token, "p1")
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) <= life <= dt.timedelta(days=30, minutes=6)
    bad = client.patch(
        "/api/v1/tenant", json={"cert_lifetime_days": 5000}, headers=auth(admin_token)
    )
    assert bad.status_code == 400


def test_tokens_over_the_api(client: TestClient, admin_token: str) -> None:
    resp = client.post(
        "/api/v1/tokens",
        json={
            "name": "line 1",
            "role": "factory-operator",
            "environment": "test",
            "expires_in_days": 7,
        },
        headers=auth(admin_token),
    )
    assert resp.status_code == 201
    created = resp.json()
    assert created["token"].startswith("fwt_")
    listed = client.get("/api/v1/tokens", headers=auth(admin_token)).json()["items"]
    assert all(t["token"] is None for t in listed)
    assert (
        client.get("/api/v1/tenant", headers=auth(created["token"])).json()["role"]
        == "factory-operator"
    )
    assert (
        client.delete(f"/api/v1/tokens/{created['id']}", headers=auth(admin_token)).status_code
        == 204
    )
    assert client.get("/api/v1/tenant", headers=auth(created["token"])).status_code == 401
    assert (
        client.post(
            "/api/v1/tokens", json={"name": "x", "role": "root"}, headers=auth(admin_token)
        ).status_code
        == 400
    )


def test_crl_rebuilds_append_only_new_revocations(
    client: TestClient, ctx: AppContext, admin_token: str, device_client: TestClient
) -> None:
    first, _ = issue(client, admin_token, "inc1")
    second, _ = issue(client, admin_token, "inc2")
    for cert in (first, second):
        client.post(
            f"/api/v1/certificates/{format(cert.serial_number, 'x')}/revocation",
            json={"reason": "keyCompromise"},
            headers=auth(admin_token),
        )
        [build] = publication.publish_crls(ctx.db, ctx.pki)
        assert build.revocations_seen == ctx.pki.crl_entries[build.ca_id].upto
    crl = x509.load_der_x509_crl(device_client.get("/crl/3.crl").content)
    assert {r.serial_number for r in crl} == {first.serial_number, second.serial_number}
    assert ctx.pki.crl_entries[3].count == 2
    # A publisher without the cache (another process) builds the same list in full.
    ctx.pki.crl_entries.clear()
    [full] = [b for b in publication.publish_crls(ctx.db, ctx.pki, force=True) if b.ca_id == 3]
    assert {r.serial_number for r in x509.load_der_x509_crl(full.der)} == {
        first.serial_number,
        second.serial_number,
    }


def test_cohort_revocation_is_one_transaction_and_audited(ctx: AppContext) -> None:
    import pytest

    from fleetward.audit import service as audit_service
    from fleetward.errors import NotFoundError
    from fleetward.identity import issuance
    from fleetward.identity import service as identity
    from fleetward.identity.models import CertificateRecord, Device
    from tests.broker import admin_of

    admin_p = admin_of(ctx)
    ids = [f"bulk-{i}" for i in range(30)]
    with ctx.db.session() as s:
        for d in ids:
            issuance.enroll(
                s, ctx.pki, admin_p, device_id=d, csr=csr_pem(new_key(), d), environment="test"
            )
    with ctx.db.session() as s, pytest.raises(NotFoundError):
        identity.revoke_devices(s, admin_p, [*ids[:3], "ghost"])
    with ctx.db.read() as s:
        assert s.query(Device).filter(Device.state == "revoked").count() == 0  # nothing changed
    with ctx.db.session() as s:
        identity.revoke_device(s, admin_p, ids[0], reason="keyCompromise")
    with ctx.db.session() as s:
        revoked = identity.revoke_devices(s, admin_p, ids, reason="keyCompromise")
    assert revoked == ids[1:]  # the one already revoked is skipped
    with ctx.db.read() as s:
        certs = s.query(CertificateRecord).all()
        assert {c.status for c in certs} == {"revoked"}
        seqs = sorted(c.revocation_seq for c in certs if c.revocation_seq is not None)
        assert seqs == list(range(1, len(ids) + 1))  # one block, no gaps, no repeats
        assert audit_service.verify(s, public_key=ctx.checkpoint_public_key()).entries > 0
