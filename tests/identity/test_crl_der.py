"""The fast CRL encoder yields CRLs that pyca and openssl read back exactly."""

from __future__ import annotations

import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fleetward.errors import SignatureError
from fleetward.identity import ca as ca_profile
from fleetward.identity import crl_der, revocation
from fleetward.keys import generate_ephemeral_signer, sign_certificate, sign_crl

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("algorithm", ["ec-p256", "ec-p384", "ed25519"])
def test_entries_round_trip(algorithm: str, tmp_path: Path) -> None:
    signer = generate_ephemeral_signer(algorithm)
    issuer = sign_certificate(
        ca_profile.root_ca_certificate(
            public_key=signer.public_key(), tenant="t", serial=1, now=NOW
        ),
        signer,
    )
    rows: list[tuple[str, dt.datetime | str, str | None]] = [
        ("1", NOW, None),
        ("ff", "2026-01-02 03:04:05.123456", "keyCompromise"),  # high bit: needs a 0x00
        ("7" + "a" * 39, NOW.replace(year=2051), "superseded"),  # GeneralizedTime after 2049
        ("abc", "2030-12-31 23:59:59", "cessationOfOperation"),  # odd hex length
        ("10", NOW, "unspecified"),
    ]
    entries, count = crl_der.encode_entries(rows)
    assert count == len(rows)
    empty = sign_crl(
        revocation.crl_builder(
            issuer=issuer, number=7, this_update=NOW, next_update=NOW + dt.timedelta(days=1)
        ),
        signer,
    )
    der = crl_der.assemble_crl(
        empty=empty,
        entries=crl_der.revoked_certificates(entries),
        sign=signer.sign,
        public_key=signer.public_key(),
    )
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(signer.public_key())
    got = {
        format(r.serial_number, "x"): (
            r.revocation_date_utc,
            next(
                (e.value.reason.value for e in r.extensions if isinstance(e.value, x509.CRLReason)),
                None,
            ),
        )
        for r in crl
    }
    assert got == {
        "1": (NOW, None),
        "ff": (dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), "keyCompromise"),
        "7" + "a" * 39: (NOW.replace(year=2051), "superseded"),
        "abc": (dt.datetime(2030, 12, 31, 23, 59, 59, tzinfo=dt.UTC), "cessationOfOperation"),
        "10": (NOW, None),
    }
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    path = tmp_path / "crl.der"
    path.write_bytes(der)
    out = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(path), "-noout", "-text"],
        capture_output=True,
        check=True,
    )
    assert out.stdout.count(b"Serial Number:") == len(rows)
    assert b"Key Compromise" in out.stdout


def test_empty_list_omits_the_field_and_wrong_signer_is_caught() -> None:
    signer, other = generate_ephemeral_signer(), generate_ephemeral_signer()
    issuer = sign_certificate(
        ca_profile.root_ca_certificate(
            public_key=signer.public_key(), tenant="t", serial=1, now=NOW
        ),
        signer,
    )
    empty = sign_crl(
        revocation.crl_builder(
            issuer=issuer, number=1, this_update=NOW, next_update=NOW + dt.timedelta(days=1)
        ),
        signer,
    )
    entries, count = crl_der.encode_entries([])
    assert (entries, count) == (b"", 0)
    der = crl_der.assemble_crl(
        empty=empty, entries=entries, sign=signer.sign, public_key=signer.public_key()
    )
    assert der == empty.public_bytes(Encoding.DER) or len(x509.load_der_x509_crl(der)) == 0
    with pytest.raises(SignatureError):
        crl_der.assemble_crl(
            empty=empty, entries=entries, sign=other.sign, public_key=signer.public_key()
        )
