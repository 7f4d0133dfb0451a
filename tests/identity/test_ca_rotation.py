"""A retired issuing CA's dual-trust window: superseded certificates revoked
as devices renew, the CA distrusted when the window closes (or when no
device depends on it), and then trusted by no TLS endpoint."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from fleetward import identity
from fleetward.audit.models import AuditEntry
from fleetward.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    OutOfScopeError,
    PermissionDeniedError,
)
from fleetward.identity import ca_service, publication, rotation
from fleetward.identity.models import CertificateAuthority, CertificateRecord, Device
from fleetward.runtime.context import AppContext
from fleetward.store import utcnow
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal
from tests.response.helpers import ADMIN, enroll, renew

HOUR = dt.timedelta(hours=1)


def rotate(
    ctx: AppContext,
    env: str = "test",
    *,
    window: dt.timedelta = HOUR,
    reason: str = "superseded",
    when_migrated: bool = False,
    tenant_id: int = 1,
) -> tuple[int, int]:
    """Replace ``env``'s issuing CA (root online); returns (old id, new id)."""
    with ctx.db.session() as s:
        tenant = tenancy.get_tenant(s, tenant_id)
        old = ca_service.active_issuing_ca(s, tenant_id=tenant_id, environment=env)
        root = ca_service.root_ca(s, tenant_id=tenant_id)
        ca, csr = ca_service.create_issuing_csr(
            s, ctx.pki, tenant=tenant, environment=env, actor="test"
        )
        cert = ca_service.sign_issuing_csr_offline(
            root_cert_pem=(root.certificate_pem or "").encode(),
            root_signer=ctx.pki.keyring.open(root.key_uri),
            csr_pem=csr,
            environment=env,
        )
        ca_service.import_issuing_certificate(
            s, ctx.pki, tenant_id=tenant_id, ca_id=ca.id, certificate_pem=cert, actor="test",
            trust_window=window, reason=reason, distrust_when_migrated=when_migrated,
        )  # fmt: skip
        return old.id, ca.id


def certs(ctx: AppContext, device_id: str) -> list[tuple[int, str, str | None]]:
    with ctx.db.read() as s:
        return [
            (int(ca), str(status), reason)
            for ca, status, reason in s.execute(
                select(
                    CertificateRecord.ca_id,
                    CertificateRecord.status,
                    CertificateRecord.revocation_reason,
                )
                .join(Device, Device.id == CertificateRecord.device_pk)
                .where(Device.device_id == device_id)
                .order_by(CertificateRecord.not_before, CertificateRecord.ca_id)
            )
        ]


def anchors(ctx: AppContext, env: str) -> list[bytes]:
    """The DER of each CA in ``trust_anchors(environment=env)``."""
    with ctx.db.read() as s:
        pem = publication.trust_anchors(s, environment=env)
    ders = []
    for block in pem.split(b"-----END TRUSTED CERTIFICATE-----")[:-1]:
        body = block.split(b"-----BEGIN TRUSTED CERTIFICATE-----\n")[1]
        import base64

        ders.append(base64.b64decode(body))
    return ders


def ca_der(ctx: AppContext, ca_id: int) -> bytes:
    with ctx.db.read() as s:
        pem = s.get_one(CertificateAuthority, ca_id).certificate_pem or ""
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def trusted(ctx: AppContext, env: str, ca_id: int) -> bool:
    der = ca_der(ctx, ca_id)
    return any(a.startswith(der) for a in anchors(ctx, env))


def test_a_window_revokes_superseded_certificates_then_distrusts_the_old_ca(
    ctx: AppContext,
) -> None:
    ids = ["w-0", "w-1", "w-2"]
    key = enroll(ctx, ids)
    with ctx.db.read() as s:
        state0 = publication.trust_state(s)
    old, new = rotate(ctx, window=HOUR)
    with ctx.db.read() as s:
        row = s.get_one(CertificateAuthority, old)
        assert row.status == "retired" and row.retirement_reason == "superseded"
        assert row.trusted_until is not None and row.trusted_until > utcnow() + 0.9 * HOUR
        assert identity.dependents(s, ca_id=old) == 3
    # Inside the window both CAs are anchors of the test environment, and
    # nothing is due yet.
    assert trusted(ctx, "test", old) and trusted(ctx, "test", new)
    assert not trusted(ctx, "production", old)
    assert rotation.rotation_round(ctx.db) == []

    assert renew(ctx, key, "w-0").ca_id == new
    [done] = rotation.rotation_round(ctx.db)
    assert (done.kind, done.ca_id, done.revoked) == ("superseded", old, 1)
    assert certs(ctx, "w-0") == [(old, "revoked", "superseded"), (new, "good", None)]
    assert certs(ctx, "w-1") == [(old, "good", None)]
    assert rotation.rotation_round(ctx.db) == []  # nothing new
    with ctx.db.read() as s:
        assert identity.dependents(s, ca_id=old) == 2
        state1 = publication.trust_state(s)
    assert trusted(ctx, "test", old)

    # The deadline passes: the CA is distrusted and the two devices that
    # never renewed are cut off (they must be re-provisioned).
    later = utcnow() + 2 * HOUR
    [closed] = rotation.rotation_round(ctx.db, now=later)
    assert (closed.kind, closed.revoked, closed.stranded) == ("distrusted", 2, ("w-1", "w-2"))
    assert closed.why == "its trust window closed"
    assert certs(ctx, "w-1") == [(old, "revoked", "superseded")]
    with ctx.db.read() as s:
        row = s.get_one(CertificateAuthority, old)
        assert row.status == "distrusted" and row.distrusted_at == later
        state2 = publication.trust_state(s)
        entry = s.execute(select(AuditEntry).where(AuditEntry.action == "ca.distrust")).scalar_one()
        assert entry.actor == "system" and entry.subject == f"ca:{old}"
        retire = s.execute(select(AuditEntry).where(AuditEntry.action == "ca.retire")).scalar_one()
        assert retire.subject == f"ca:{old}"
        # The CRL of the distrusted CA stays published (and is rebuilt with
        # the new revocations).
    assert state0 != state1 != state2
    assert not trusted(ctx, "test", old) and trusted(ctx, "test", new)
    built = publication.publish_crls(ctx.db, ctx.pki)
    assert old in {b.ca_id for b in built}
    with ctx.db.read() as s:
        assert publication.get_crl(s, ca_id=old).entries == 3
        bundle = publication.crl_bundle(s, ctx.pki)
        anchors = {ca.id for ca in publication.trusted_issuing_cas(s)}
    old_key = x509.load_der_x509_certificate(ca_der(ctx, old)).public_key()
    assert isinstance(old_key, ec.EllipticCurvePublicKey)
    crls = [
        x509.load_pem_x509_crl(b"-----BEGIN X509 CRL-----" + part)
        for part in bundle.split(b"-----BEGIN X509 CRL-----")[1:]
    ]
    assert any(c.is_signature_valid(old_key) for c in crls)  # its CRL is still served
    assert old not in anchors  # and it is nobody's trust anchor

    assert rotation.rotation_round(ctx.db, now=later) == []


def test_a_window_that_closes_when_migrated_closes_with_the_last_renewal(
    ctx: AppContext,
) -> None:
    ids = ["m-0", "m-1"]
    key = enroll(ctx, ids, env="drill")
    old, new = rotate(ctx, "drill", window=dt.timedelta(days=7), reason="cACompromise",
                      when_migrated=True)  # fmt: skip
    renew(ctx, key, "m-0")
    [superseded] = rotation.rotation_round(ctx.db)
    assert superseded.kind == "superseded" and trusted(ctx, "drill", old)
    renew(ctx, key, "m-1")
    done = rotation.rotation_round(ctx.db)
    assert [(t.kind, t.revoked) for t in done] == [("superseded", 1), ("distrusted", 0)]
    assert done[1].why == "no device depends on it"
    assert certs(ctx, "m-1") == [(old, "revoked", "cACompromise"), (new, "good", None)]
    assert not trusted(ctx, "drill", old)
    # A distrusted CA signs nothing: renewing with a revoked old certificate fails.
    with pytest.raises(Exception, match="revoked"), ctx.db.session() as s:
        current = (
            s.execute(select(CertificateRecord.der).where(CertificateRecord.ca_id == old))
            .scalars()
            .first()
        )
        assert current is not None
        from fleetward.identity import renewal
        from tests.helpers import csr_pem

        renewal.renew(s, ctx.pki, current=current, csr=csr_pem(key, "m-0"))


def test_rotation_arguments_are_checked(ctx: AppContext) -> None:
    enroll(ctx, ["a-0"])
    for window, reason in [
        (dt.timedelta(seconds=-1), "superseded"),
        (dt.timedelta(days=400), "superseded"),
        (HOUR, "keyCompromise"),
        (HOUR, "x" * 5000),
    ]:
        with pytest.raises(InvalidInputError):
            rotate(ctx, window=window, reason=reason)
    with ctx.db.read() as s:
        assert [c.status for c in ca_service.list_cas(s, tenant_id=1)].count("retired") == 0


def test_an_operator_closes_a_window_early_and_is_refused_what_it_may_not(
    ctx: AppContext,
) -> None:
    key = enroll(ctx, ["o-0", "o-1"], env="production")
    old, new = rotate(ctx, "production", window=dt.timedelta(days=7))
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="other", actor="test")
        ca_service.create_tenant_pki(s, ctx.pki, tenant=other, actor="test")
        other_ca = ca_service.active_issuing_ca(s, tenant_id=other.id, environment="test").id
        root = ca_service.root_ca(s, tenant_id=1).id
    refusals: list[tuple[Principal, int, type[Exception], str]] = [
        (ADMIN, new, ConflictError, "active production issuing CA"),
        (ADMIN, root, ConflictError, "root"),
        (ADMIN, other_ca, NotFoundError, "not found"),
        (ADMIN, 2**63, NotFoundError, "not found"),
        (ADMIN, -1, NotFoundError, "not found"),
        (ADMIN, 0, NotFoundError, "not found"),
        (ADMIN, old, ConflictError, "2 device"),
        (Principal(1, "default", "security", "token:sec"), old, PermissionDeniedError, "role"),
        (Principal(1, "default", "admin", "token:t", "test"), old, OutOfScopeError, "scoped"),
    ]
    for who, ca_id, error, match in refusals:
        with ctx.db.session() as s, pytest.raises(error, match=match):
            rotation.distrust_ca(s, who, ca_id)
    assert trusted(ctx, "production", old)
    renew(ctx, key, "o-0")
    # o-0 still holds its old certificate too.
    with ctx.db.session() as s, pytest.raises(ConflictError, match="2 device"):
        rotation.distrust_ca(s, ADMIN, old)
    rotation.rotation_round(ctx.db)  # which is revoked as superseded
    with ctx.db.session() as s:
        with pytest.raises(ConflictError, match=r"1 device\(s\) still depend .*o-1"):
            rotation.distrust_ca(s, ADMIN, old)
        done = rotation.distrust_ca(s, ADMIN, old, force=True)
    assert done.kind == "distrusted" and done.revoked == 1 and "forced" in done.why
    assert done.stranded == ("o-1",)
    assert not trusted(ctx, "production", old)
    with ctx.db.session() as s, pytest.raises(ConflictError, match="already distrusted"):
        rotation.distrust_ca(s, ADMIN, old, force=True)
    with ctx.db.read() as s:
        entry = s.execute(select(AuditEntry).where(AuditEntry.action == "ca.distrust")).scalar_one()
        assert entry.actor == "token:admin"


# --------------------------------------------------------------------------- TLS


def _files(
    tmp: Path, name: str, key: ec.EllipticCurvePrivateKey, der: bytes, chain: list[bytes]
) -> tuple[Path, Path]:
    cert = tmp / f"{name}.pem"
    pem = x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM)
    cert.write_bytes(pem + b"".join(chain))
    keyfile = tmp / f"{name}.key"
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, keyfile


def handshake(ctx: AppContext, anchors_pem: bytes, cert: Path, key: Path, tmp: Path) -> bool:
    """Whether a TLS server that trusts ``anchors_pem`` (as the device
    listeners do) accepts a client presenting ``cert``."""
    cafile = tmp / "anchors.pem"
    cafile.write_bytes(anchors_pem)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pair = ctx.service_pki.server()
    server_ctx.load_cert_chain(pair.cert, pair.key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cafile=str(cafile))
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cadata=ctx.service_pki.ca_pem.decode())
    client_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[bool] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
                accepted.append(True)
        except (ssl.SSLError, OSError):
            accepted.append(False)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"x")
            tls.recv(1)
    except (ssl.SSLError, OSError):
        pass
    thread.join(5)
    listener.close()
    return accepted == [True]


def test_after_the_window_a_certificate_of_the_retired_ca_fails_the_handshake(
    ctx: AppContext, tmp_path: Path
) -> None:
    key = enroll(ctx, ["t-0", "t-1"])
    with ctx.db.read() as s:
        old_der = s.execute(
            select(CertificateRecord.der)
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(Device.device_id == "t-1")
        ).scalar_one()
        root_pem = (ca_service.root_ca(s, tenant_id=1).certificate_pem or "").encode()
    old, _new = rotate(ctx, window=HOUR)
    old_pem = x509.load_der_x509_certificate(ca_der(ctx, old)).public_bytes(
        serialization.Encoding.PEM
    )
    new_der = renew(ctx, key, "t-0").der
    # The device sends its whole chain: still no anchor once the CA is out.
    old_files = _files(tmp_path, "old", key, old_der, [old_pem, root_pem])
    new_files = _files(tmp_path, "new", key, new_der, [])

    def bundle() -> bytes:
        with ctx.db.read() as s:
            return publication.trust_anchors(s, environment="test")

    assert handshake(ctx, bundle(), *old_files, tmp_path)  # inside the window
    assert handshake(ctx, bundle(), *new_files, tmp_path)
    rotation.rotation_round(ctx.db, now=utcnow() + 2 * HOUR)
    assert not handshake(ctx, bundle(), *old_files, tmp_path)
    assert handshake(ctx, bundle(), *new_files, tmp_path)
    # And no other environment's listener takes either.
    for env in ("production", "drill"):
        with ctx.db.read() as s:
            other = publication.trust_anchors(s, environment=env)
        assert not handshake(ctx, other, *old_files, tmp_path)
        assert not handshake(ctx, other, *new_files, tmp_path)
