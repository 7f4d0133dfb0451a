"""CA keys on a PKCS#11 token (SoftHSM2): issuance, CRL and OCSP signed on the token."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from fleetward.config import Settings
from fleetward.identity import ca_service, issuance, publication, service
from fleetward.keys import verify_signature
from fleetward.runtime.installation import initialise
from fleetward.tenancy import service as tenancy
from tests.helpers import csr_pem, new_key
from tests.hsm import SoftHsm

pytestmark = pytest.mark.hsm


def test_pkcs11_issuing_cas_sign_certificates_crls_and_ocsp(
    softhsm: SoftHsm, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWARD_PKCS11_TOKEN", softhsm.token_label)
    monkeypatch.setenv("FLEETWARD_PKCS11_PIN", softhsm.pin)
    settings = Settings(home=tmp_path / "home", database_url=db_url, public_url="http://fw")
    ctx, token = initialise(settings, actor="test", key_backend="pkcs11")
    try:
        with ctx.db.session() as s:
            cas = ca_service.list_cas(s, tenant_id=1)
            assert {c.key_uri.split(":")[0] for c in cas} == {"pkcs11"}
            assert not list((settings.keys_dir).glob("default-*.pem"))  # no CA key on disk
            who = tenancy.authenticate(s, token)
            record = issuance.enroll(
                s,
                ctx.pki,
                who,
                device_id="hsm-1",
                csr=csr_pem(new_key(), "hsm-1"),
                environment="test",
            )
            issuer = ctx.pki.certificate(ca_service.get_ca(s, tenant_id=1, ca_id=record.ca_id))
        cert = x509.load_der_x509_certificate(record.der)
        cert.verify_directly_issued_by(issuer)

        with ctx.db.session() as s:
            service.revoke_certificate(s, who, record.serial, reason="keyCompromise")
        assert [b.ca_id for b in publication.publish_crls(ctx.db, ctx.pki)] == [record.ca_id]
        with ctx.db.session() as s:
            crl = x509.load_der_x509_crl(
                publication.published_der(ctx.pki, publication.get_crl(s, ca_id=record.ca_id))
            )
            req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256()).build()
            answer = ocsp.load_der_ocsp_response(
                publication.ocsp_answer(s.connection(), ctx.pki, req.public_bytes(Encoding.DER))
            )
        assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
        assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
        assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
        assert answer.revocation_reason == x509.ReasonFlags.key_compromise
        issuer_key = issuer.public_key()
        assert isinstance(issuer_key, ec.EllipticCurvePublicKey)
        verify_signature(issuer_key, signature=answer.signature, data=answer.tbs_response_bytes)
    finally:
        ctx.db.dispose()
