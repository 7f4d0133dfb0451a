"""Where a device lives: the environments a token's scope is checked against.

A device lives in the environments of its good, unexpired certificates; a
device with none (all revoked or expired) still lives in the environment of
its newest certificate, so revoking a production certificate does not free
the device for a test-scoped token; a device with no certificate yet lives
nowhere. A device moved from one environment to another (re-provisioned,
the old certificate revoked) lives in the new one only.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward.identity.models import CertificateRecord

__all__ = ["device_environments", "environments_by_device"]

_CHUNK = 1000


def environments_by_device(
    session: Session, device_pks: list[int], *, now: dt.datetime
) -> dict[int, set[str]]:
    """Each device's environments (devices with no certificate are left out)."""
    found: dict[int, set[str]] = {}
    for start in range(0, len(device_pks), _CHUNK):
        chunk = device_pks[start : start + _CHUNK]
        for pk, env in session.execute(
            select(CertificateRecord.device_pk, CertificateRecord.environment)
            .where(
                CertificateRecord.device_pk.in_(chunk),
                CertificateRecord.status == "good",
                CertificateRecord.not_after > now,
            )
            .distinct()
        ):
            found.setdefault(int(pk), set()).add(str(env))
    rest = [pk for pk in device_pks if pk not in found]
    for start in range(0, len(rest), _CHUNK):
        newest: dict[int, tuple[dt.datetime, str]] = {}
        for pk, env, since in session.execute(
            select(
                CertificateRecord.device_pk,
                CertificateRecord.environment,
                CertificateRecord.not_before,
            ).where(CertificateRecord.device_pk.in_(rest[start : start + _CHUNK]))
        ):
            if int(pk) not in newest or since > newest[int(pk)][0]:
                newest[int(pk)] = (since, str(env))
        for pk, (_, env) in newest.items():
            found[pk] = {env}
    return found


def device_environments(session: Session, device_pks: list[int], *, now: dt.datetime) -> set[str]:
    """Every environment these devices live in."""
    out: set[str] = set()
    for envs in environments_by_device(session, device_pks, now=now).values():
        out |= envs
    return out
