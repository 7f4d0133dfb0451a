"""Compile tenants' policies and the device registry into the broker's ACL table.

Pure. The table (format in ``native/fw_acl.c``) lists each tenant's roles
once and every device that may connect: its MQTT username, the serials of its
current certificates, the roles its selectors gave it (only ``quarantine``
while quarantined) and the values its template variables take. Devices that
are revoked, retired or pending, and certificates that are revoked or
expired, are simply absent: the plugin denies everything to an identity it
does not list and kicks identities that disappear.

fleetward's own identities (:mod:`.identities`) are listed too, each with
the fingerprint of its certificate and the patterns of its job.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from fleetward.comms.identities import ServiceIdentity
from fleetward.comms.policy import QUARANTINE, Policy, Role, Subject

__all__ = ["TABLE_FORMAT", "BrokerDevice", "BrokerService", "compile_table", "mqtt_username"]

TABLE_FORMAT = "3"
_SAFE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{40}$")


def mqtt_username(*, tenant: str, environment: str, device_id: str) -> str:
    """The username Mosquitto derives from a device certificate.

    The broker runs with ``use_subject_as_username``: the subject in RFC 2253
    order. It names the tenant, so equal device ids in two tenants never
    share an MQTT identity (or a client id, which is forced to it).
    """
    return f"O={tenant},OU={environment},CN={device_id}"


@dataclass(frozen=True)
class BrokerDevice:
    """A device identity the broker should accept."""

    subject: Subject
    username: str
    # SHA-1 fingerprint (lowercase hex) of each current certificate: the
    # plugin accepts exactly these certificates, whoever else could mint the
    # same subject. SHA-1 because OpenSSL caches it per certificate, so the
    # per-message check is free; matching an existing certificate would take
    # a second preimage.
    serials: tuple[str, ...]


@dataclass(frozen=True)
class BrokerService:
    """One of fleetward's own identities, as the broker should accept it."""

    identity: ServiceIdentity
    # SHA-1 fingerprints (lowercase hex) of its certificates (see BrokerDevice).
    certificates: tuple[str, ...]


def _service_lines(service: BrokerService) -> list[str]:
    if not service.certificates or not all(_HEX.fullmatch(c) for c in service.certificates):
        raise ValueError(
            f"service identity {service.identity.job!r} needs SHA-1 hex certificate fingerprints"
        )
    lines = [f"I\t{service.identity.username}\t{','.join(service.certificates)}"]
    lines.extend(f"i\tp\t{t}" for t in service.identity.publish)
    lines.extend(f"i\ts\t{t}" for t in service.identity.subscribe)
    return lines


def _role_lines(role: Role) -> list[str]:
    lines = [f"R\t{role.name}"]
    for code, templates in (
        ("p", role.publish),
        ("s", role.subscribe),
        ("P", role.deny_publish),
        ("S", role.deny_subscribe),
    ):
        lines.extend(f"r\t{code}\t{t.text}" for t in templates)
    lines.extend(f"r\tc\t{name}" for name in role.commands)
    lines.extend(f"r\tC\t{name}" for name in role.deny_commands)
    return lines


def _safe(value: str) -> str:
    return value if _SAFE.fullmatch(value) else ""


def compile_table(
    *,
    policies: Mapping[str, Policy],
    devices: Iterable[BrokerDevice],
    services: Iterable[BrokerService] = (),
    generation: int,
    max_payload: int,
) -> str:
    """Render the ACL table.

    Args:
        policies: each tenant's policy by tenant name (a device of a tenant
            missing here gets no roles, so it may do nothing).
        devices: the identities to accept.
        services: fleetward's own identities (each allowed only its job).
        generation: a number that grows with every table (for logs).
        max_payload: the largest PUBLISH payload the broker lets through.

    Raises:
        ValueError: a device's or a service's values could break the table
            format.
    """
    lines = [f"fwacl\t{TABLE_FORMAT}\t{generation}\t{max_payload}"]
    for service in services:
        lines.extend(_service_lines(service))
    lines.extend(_role_lines(QUARANTINE))
    offsets: dict[str, int] = {}
    count = 1
    for tenant, policy in policies.items():
        offsets[tenant] = count
        for role in policy.roles:
            lines.extend(_role_lines(role))
        count += len(policy.roles)
    for device in devices:
        subject = device.subject
        for value in (device.username, subject.tenant, subject.device_id):
            if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
                raise ValueError(f"unsafe value {value!r} for the broker table")
        if not all(_HEX.fullmatch(s) for s in device.serials):
            raise ValueError(
                f"certificates of {subject.device_id!r} must be SHA-1 hex fingerprints"
            )
        own = policies.get(subject.tenant)
        if subject.quarantined:
            roles = [0]
        elif own is None:
            roles = []
        else:
            base = offsets[subject.tenant]
            roles = [base + i for i, r in enumerate(own.roles) if r.selects(subject)]
        labels = ";".join(
            f"{k}={v}"
            for k, v in sorted(subject.labels.items())
            if _SAFE.fullmatch(k) and _SAFE.fullmatch(v)
        )
        lines.append(
            "\t".join(
                (
                    "D",
                    device.username,
                    subject.tenant,
                    subject.device_id,
                    _safe(subject.product),
                    ",".join(device.serials),
                    ",".join(map(str, roles)),
                    labels,
                )
            )
        )
    lines.append("end")  # a table cut short is refused, not half-loaded
    return "\n".join(lines) + "\n"
