"""Who holds a certificate: the device a presented client certificate speaks for.

The device plane (EST re-enrollment, renewal, attestation, device telemetry)
authenticates a caller by its TLS client certificate. The handshake proved
possession of the key and a chain to a trusted issuing CA;
:func:`certificate_holder` adds what only the registry knows: the
certificate is one fleetward issued (same serial and same bytes), still good
and unexpired, and its device may act (active, or quarantined: a quarantined
device may still attest and renew to get out).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy.orm import Session

from fleetward import tenancy
from fleetward.errors import AuthenticationError
from fleetward.identity.models import CertificateRecord, Device
from fleetward.store import utcnow

__all__ = ["ACTING_STATES", "DeviceIdentity", "certificate_holder"]

ACTING_STATES = ("active", "quarantined")  # device states whose certificate authenticates


@dataclass(frozen=True)
class DeviceIdentity:
    """The device a request comes from (its current, good certificate)."""

    tenant_id: int
    tenant: str
    device_id: str
    device_pk: int
    serial: str
    environment: str
    certificate: bytes  # DER

    @property
    def actor(self) -> str:
        """The audit actor of this device."""
        return f"device:{self.device_id}"


def certificate_holder(
    session: Session, der: bytes, *, now: dt.datetime | None = None
) -> DeviceIdentity:
    """The device whose current certificate ``der`` is.

    Raises:
        AuthenticationError: malformed, not issued by fleetward, revoked,
            expired, or of a device that may not act.
    """
    now = now or utcnow()
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise AuthenticationError("the client certificate is malformed") from exc
    record = session.get(CertificateRecord, format(cert.serial_number, "x"))
    if record is None or record.der != cert.public_bytes(Encoding.DER):
        raise AuthenticationError("the client certificate was not issued by fleetward")
    if record.status != "good":
        raise AuthenticationError(f"the client certificate is {record.status}")
    if record.not_after <= now:
        raise AuthenticationError("the client certificate has expired")
    device = session.get(Device, record.device_pk)
    if device is None or device.state not in ACTING_STATES:
        state = device.state if device is not None else "unknown"
        raise AuthenticationError(f"the certificate's device is {state}")
    tenant = tenancy.get_tenant(session, record.tenant_id)
    return DeviceIdentity(
        tenant_id=record.tenant_id,
        tenant=tenant.name,
        device_id=device.device_id,
        device_pk=device.id,
        serial=record.serial,
        environment=record.environment,
        certificate=record.der,
    )
