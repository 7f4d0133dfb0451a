"""Helpers for response tests: enrolled devices and operators, in process."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select

from fleetward.identity import issuance, renewal
from fleetward.identity.models import CertificateRecord, Device
from fleetward.runtime.context import AppContext
from fleetward.tenancy.roles import Principal
from tests.helpers import csr_pem

ADMIN = Principal(1, "default", "admin", "token:admin")
SEC = Principal(1, "default", "security", "token:sec-1")
SEC2 = Principal(1, "default", "security", "token:sec-2")
SEC3 = Principal(1, "default", "security", "token:sec-3")
AUDITOR = Principal(1, "default", "auditor", "token:aud")


def enroll(
    ctx: AppContext,
    ids: list[str],
    *,
    env: str = "test",
    product: str = "thermo",
    labels: dict[str, str] | None = None,
    batch: int | None = None,
) -> ec.EllipticCurvePrivateKey:
    """Enroll ``ids`` (in process) with one fresh software key; returns it."""
    key = ec.generate_private_key(ec.SECP256R1())
    items = [
        issuance.BatchItem(
            device_id=d, csr=csr_pem(key, d), product=product,
            labels=labels or {"hardware": "board-a"}, batch_id=batch,
        )
        for d in ids
    ]  # fmt: skip
    for start in range(0, len(items), issuance.MAX_BATCH):
        results = issuance.enroll_many(
            ctx.db, ctx.pki, ADMIN, items=items[start : start + issuance.MAX_BATCH], environment=env
        )
        assert all(r.error is None for r in results), [r.error for r in results][:3]
    return key


def renew(ctx: AppContext, key: ec.EllipticCurvePrivateKey, device_id: str) -> issuance.Issued:
    """What the agent does on the ``renew`` command: present its good
    certificate and a CSR from the same key."""
    with ctx.db.session() as s:
        current = s.execute(
            select(CertificateRecord.der)
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(Device.device_id == device_id, CertificateRecord.status == "good")
        ).scalar_one()
        return renewal.renew(s, ctx.pki, current=current, csr=csr_pem(key, device_id))
