"""Evidence signing, verification and appraisal (pure)."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest

from fleetward.attestation.evidence import appraise, claims, sign_evidence, verify_evidence
from fleetward.errors import AttestationError, InvalidInputError, PayloadTooLargeError
from fleetward.keys import generate_ephemeral_signer

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
REF = {s: hashlib.sha256(s.encode()).hexdigest() for s in ("bootloader", "kernel", "application")}


def evidence_claims(**over: object) -> dict[str, object]:
    base = claims(
        nonce=b"n" * 32,
        device_id="d1",
        version="1.0.0",
        measurements=REF,
        secure_boot=True,
        debug_status=3,
        boot_count=7,
        now=NOW,
    )
    base.update(over)
    return base


def test_round_trip_and_pass() -> None:
    signer = generate_ephemeral_signer()
    token = sign_evidence(evidence_claims(), signer)
    data = verify_evidence(token, signer.public_key(), now=NOW)
    assert data["ueid"] == "d1" and data["bootcount"] == 7
    assert appraise(data, reference=REF).result == "pass"


def test_wrong_key_tampered_and_stale_evidence_are_refused() -> None:
    signer, other = generate_ephemeral_signer(), generate_ephemeral_signer()
    token = sign_evidence(evidence_claims(), signer)
    with pytest.raises(AttestationError, match="signature"):
        verify_evidence(token, other.public_key(), now=NOW)
    header, _, sig = token.split(".")
    forged = sign_evidence(evidence_claims(swversion="9.9.9"), other).split(".")[1]
    with pytest.raises(AttestationError):
        verify_evidence(f"{header}.{forged}.{sig}", signer.public_key(), now=NOW)
    with pytest.raises(AttestationError, match="stale"):
        verify_evidence(token, signer.public_key(), now=NOW + dt.timedelta(minutes=10))
    with pytest.raises(AttestationError):
        verify_evidence("not-a-token", signer.public_key(), now=NOW)
    with pytest.raises(PayloadTooLargeError):
        verify_evidence("x" * 9000, signer.public_key(), now=NOW)


@pytest.mark.parametrize(
    ("claim", "value"), [("secboot", "yes"), ("measurements", []), ("dbgstat", None)]
)
def test_malformed_claims_are_refused(claim: str, value: object) -> None:
    signer = generate_ephemeral_signer()
    token = sign_evidence(evidence_claims(**{claim: value}), signer)
    with pytest.raises(AttestationError, match=claim):
        verify_evidence(token, signer.public_key(), now=NOW)


def test_appraisal_names_every_failed_claim() -> None:
    signer = generate_ephemeral_signer()
    bad = dict(REF, bootloader="0" * 64)
    data = verify_evidence(
        sign_evidence(evidence_claims(measurements=bad, secboot=False, dbgstat=0), signer),
        signer.public_key(),
        now=NOW,
    )
    verdict = appraise(data, reference=REF)
    assert verdict.result == "fail"
    assert verdict.failed == ("measurements.bootloader", "secboot", "dbgstat")
    assert appraise(data, reference=None).result == "unknown-firmware"


def test_only_p256_keys_sign_evidence() -> None:
    with pytest.raises(InvalidInputError):
        sign_evidence(evidence_claims(), generate_ephemeral_signer("ed25519"))
