"""Key-origin attestation statements: what verifies and what is refused."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleetward.errors import AttestationError, PayloadTooLargeError
from fleetward.provisioning.attestation import parse_statement, verify_statement
from tests.provisioning.chips import NOW, Vendor


def spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def vendor() -> Vendor:
    return Vendor.create()


def test_genuine_statement_verifies(vendor: Vendor) -> None:
    identity = ec.generate_private_key(ec.SECP256R1())
    chip = vendor.chip("0001")
    st = parse_statement(chip.statement_json(nonce=b"n" * 16, identity_spki_der=spki(identity)))
    got = verify_statement(
        st, identity_spki_der=spki(identity), expected_nonce=b"n" * 16, roots=[vendor.root], now=NOW
    )
    assert got.chip == "CN=chip 0001"


def test_refusals(vendor: Vendor) -> None:
    identity = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    chip = vendor.chip("0002")
    good = chip.statement(nonce=b"n" * 16, identity_spki_der=spki(identity))

    def check(
        statement: object,
        *,
        key: bytes = spki(identity),
        nonce: bytes = b"n" * 16,
        roots: list[object] | None = None,
    ) -> None:
        verify_statement(
            parse_statement(json.dumps(statement)),
            identity_spki_der=key,
            expected_nonce=nonce,
            roots=roots if roots is not None else [vendor.root],  # type: ignore[arg-type]
            now=NOW,
        )

    with pytest.raises(AttestationError, match="nonce"):
        check(good, nonce=b"x" * 16)  # replayed: not the nonce issued now
    with pytest.raises(AttestationError, match="does not cover"):
        check(good, key=spki(other))  # statement for another key
    with pytest.raises(AttestationError, match="registered vendor root"):
        check(good, roots=[Vendor.create("Other Vendor").root])
    forged = vendor.chip("0003")
    forged.chain = chip.chain  # a key the vendor never certified, claiming chip 0002
    with pytest.raises(AttestationError, match="does not cover"):
        check(forged.statement(nonce=b"n" * 16, identity_spki_der=spki(identity)))
    expired = vendor.chip("0004", expired=True)
    with pytest.raises(AttestationError, match="validity"):
        check(expired.statement(nonce=b"n" * 16, identity_spki_der=spki(identity)))
    broken = dict(good, chain=[good["chain"][0]])  # type: ignore[index]
    with pytest.raises(AttestationError, match="registered vendor root"):
        check(broken)
    with pytest.raises(AttestationError, match="format"):
        check(dict(good, format="v0"))
    with pytest.raises(AttestationError, match="malformed"):
        check(dict(good, signature="%%%"))
    with pytest.raises(PayloadTooLargeError):
        parse_statement("x" * 20000)
    with pytest.raises(AttestationError, match="not JSON"):
        parse_statement("{")
