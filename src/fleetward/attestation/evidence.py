"""Boot evidence: EAT claims (RFC 9711) in a JWT signed by the device identity key,
and their appraisal against reference values (RATS roles, RFC 9334).

Pure. The device (attester) builds claims with :func:`claims` and signs them
with :func:`sign_evidence` using any :class:`fleetward.keys.Signer` (its
keystore key, PKCS#11 included). The verifier checks the signature with the
device certificate's public key (:func:`verify_evidence`) and appraises the
claims against the release the device claims to run (:func:`appraise`).

Claims used (names from RFC 9711 where one exists):

- ``eat_nonce``: the verifier's nonce (base64url), single use;
- ``ueid``: the device id as fleetward names it;
- ``swversion``: the firmware version running;
- ``measurements``: ``{stage: sha256 hex}`` for ``bootloader``, ``kernel``,
  ``application``;
- ``secboot``: whether secure boot is enforced;
- ``dbgstat``: RFC 9711 debug status (0 enabled, 1 disabled, 2 disabled
  since boot, 3 disabled permanently, 4 disabled fully and permanently);
- ``bootcount``: boots since manufacture;
- ``iat``: when the evidence was made.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from fleetward.errors import AttestationError, InvalidInputError, PayloadTooLargeError
from fleetward.keys import Signer

__all__ = [
    "MAX_EVIDENCE_BYTES",
    "STAGES",
    "Verdict",
    "appraise",
    "claims",
    "sign_evidence",
    "verify_evidence",
]

MAX_EVIDENCE_BYTES = 8 * 1024  # a few claims and a signature; more is abuse
MAX_AGE = dt.timedelta(minutes=5)  # evidence older than this is stale
STAGES = ("bootloader", "kernel", "application")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(
    *,
    nonce: bytes,
    device_id: str,
    version: str,
    measurements: Mapping[str, str],
    secure_boot: bool,
    debug_status: int,
    boot_count: int,
    now: dt.datetime,
) -> dict[str, Any]:
    """The claims a device makes about its boot."""
    return {
        "eat_nonce": _b64(nonce),
        "ueid": device_id,
        "swversion": version,
        "measurements": dict(measurements),
        "secboot": secure_boot,
        "dbgstat": debug_status,
        "bootcount": boot_count,
        "iat": int(now.timestamp()),
    }


def sign_evidence(payload: Mapping[str, Any], signer: Signer) -> str:
    """A compact JWS (ES256) over the claims, signed by ``signer``.

    The signing input is made here so any signer works, including a token
    key that only returns DER ECDSA signatures (JWS wants raw r||s).
    """
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise InvalidInputError("boot evidence is signed with a P-256 identity key (ES256)")
    header = _b64(json.dumps({"alg": "ES256", "typ": "eat+jwt"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(dict(payload), separators=(",", ":"), sort_keys=True).encode())
    r, s = decode_dss_signature(signer.sign(f"{header}.{body}".encode()))
    return f"{header}.{body}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def verify_evidence(token: str, public_key: PublicKeyTypes, *, now: dt.datetime) -> dict[str, Any]:
    """Check the signature and freshness of evidence; return its claims.

    Raises:
        PayloadTooLargeError: over :data:`MAX_EVIDENCE_BYTES`.
        AttestationError: bad signature, malformed, or stale (``iat``).
    """
    if len(token) > MAX_EVIDENCE_BYTES:
        raise PayloadTooLargeError(f"evidence is limited to {MAX_EVIDENCE_BYTES} bytes")
    try:
        data: dict[str, Any] = jwt.decode(
            token,
            key=public_key,  # type: ignore[arg-type]
            algorithms=["ES256"],
            options={"require": ["iat"], "verify_iat": False},
        )
    except jwt.InvalidSignatureError as exc:
        raise AttestationError("evidence signature does not verify with the device key") from exc
    except jwt.PyJWTError as exc:
        raise AttestationError(f"evidence is not a valid signed token: {exc}") from exc
    iat = data.get("iat")
    if not isinstance(iat, int):
        raise AttestationError("claim iat must be an integer")
    made = dt.datetime.fromtimestamp(iat, tz=dt.UTC)
    if made < now - MAX_AGE or made > now + dt.timedelta(minutes=1):
        raise AttestationError("evidence is stale or from the future (iat)")
    for name, kind in (
        ("eat_nonce", str),
        ("ueid", str),
        ("swversion", str),
        ("measurements", dict),
        ("secboot", bool),
        ("dbgstat", int),
        ("bootcount", int),
    ):
        if not isinstance(data.get(name), kind):
            raise AttestationError(f"claim {name} is missing or not a {kind.__name__}")
    return data


@dataclass(frozen=True)
class Verdict:
    """``pass``, ``fail`` (each failed claim named) or ``unknown-firmware``."""

    result: Literal["pass", "fail", "unknown-firmware"]
    failed: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON shape for events and the API."""
        return {"verdict": self.result, "failed": list(self.failed), **self.details}


def appraise(
    data: Mapping[str, Any], *, reference: Mapping[str, str] | None, withdrawn: bool = False
) -> Verdict:
    """Compare claims with the reference measurements of the claimed version.

    ``reference`` is ``None`` when no signed release of the device's product
    has the claimed version: the verdict is then ``unknown-firmware``. A
    version whose release was withdrawn fails (claim ``swversion``) even
    when it measures as built.
    """
    version = str(data["swversion"])
    if reference is None:
        return Verdict("unknown-firmware", (), {"swversion": version})
    failed = ["swversion"] if withdrawn else []
    measured = data["measurements"]
    for stage in STAGES:
        got = measured.get(stage)
        if not isinstance(got, str) or not _HEX64.fullmatch(got) or got != reference.get(stage):
            failed.append(f"measurements.{stage}")
    if data["secboot"] is not True:
        failed.append("secboot")
    if data["dbgstat"] < 1:
        failed.append("dbgstat")
    return Verdict("fail" if failed else "pass", tuple(failed), {"swversion": version})
