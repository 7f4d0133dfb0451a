"""Configuration and platform lines of the conformance evidence (read at gather time).

These are the lines the audit log cannot reproduce: listener trust, CA key
custody, the TUF root's storage, detectors and responses, the live policy
roles, measured boot stages and the operator plane's settings, read through
the other domains' faces (and :mod:`._gather`, the trust map's readers);
and the platform facts, what this version of fleetward always does.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session

from fleetward import comms, ota
from fleetward.config import Settings
from fleetward.trustmap import _gather
from fleetward.trustmap._live import BOOT_STAGES
from fleetward.trustmap.conformance import MAX_BREAKDOWN, PLATFORM_CONTROLS, EvidenceLine, Value

__all__ = ["MAX_LABEL", "config_lines", "label", "platform_lines"]

MAX_LABEL = 64  # breakdown labels can carry tenant text (names in the log, roles): cut there
_DETECTORS = ("authz-failures", "boot-integrity-cohort", "vulnerability-exploited")

_PLATFORM = {
    "platform.no-default-credentials": "no-default-credentials",
    "platform.device-mtls": "device-mtls",
    "platform.scoped-tokens": "scoped-tokens",
    "platform.audit-chain": "audit-chain",
    "platform.flood-limits": "flood-limits",
    "platform.input-limits": "input-limits",
}


def label(value: object) -> str:
    """A breakdown label: printable characters only, at most :data:`MAX_LABEL`."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return text[:MAX_LABEL]


def _cfg(
    key: str, text: str, value: Value, rows: Iterable[tuple[str, int]] = (), scope: str = "tenant"
) -> EvidenceLine:
    breakdown = tuple(sorted((label(a), n) for a, n in rows))[:MAX_BREAKDOWN]
    return EvidenceLine(key=key, text=text, source="configuration", scope=scope, value=value,
                        breakdown=breakdown)  # fmt: skip


def _measured(session: Session, *, tenant_id: int, product: str | None) -> bool | None:
    products = (
        [product] if product is not None
        else sorted({r.product for r in ota.list_releases_of_tenant(session, tenant_id)})
    )  # fmt: skip
    stages = [_gather.newest_measured_stages(session, tenant_id=tenant_id, product=p)
              for p in products]  # fmt: skip
    known = [s for s in stages if s is not None]
    return None if not known else all(len(s) == len(BOOT_STAGES) for s in known)


def config_lines(
    session: Session, *, tenant_id: int, product: str | None, settings: Settings | None
) -> list[EvidenceLine]:
    """The configuration lines (``config.*``), read now.

    Args:
        session: an open session (only read).
        tenant_id: whose configuration.
        product: narrows the policy roles and measured boot to one product.
        settings: the installation's settings (``None``: operator TLS and
            login limits are unknown).

    Returns:
        One line per configuration fact; what cannot be told is ``None``.
    """
    trust = _gather.listener_trust(session)
    backends, root = _gather.ca_keys(session, tenant_id=tenant_id)
    _, _, storage = _gather.tuf_root(session, tenant_id=tenant_id)
    enabled, responses = _gather.detectors(session, tenant_id=tenant_id)
    roles = [
        r for r in comms.current_policy(session, tenant_id).policy.roles
        if r.name != comms.QUARANTINE.name and (product is None or r.product in (None, product))
    ]  # fmt: skip
    topics = [t.text for r in roles for t in (*r.publish, *r.subscribe)]
    limits = (
        None if settings is None
        else f"{settings.auth_failures_per_source} per source, "
        f"{settings.auth_failures_per_identity} per identity, "
        f"per {settings.auth_failure_window:g} s"
    )  # fmt: skip
    return [
        _cfg("config.listener-per-environment",
             "each broker listener trusts its own environment's issuing CAs only",
             bool(trust) and all(v == {k} for k, v in trust.items()),
             ((f"{k} trusts {', '.join(sorted(v))}", len(v)) for k, v in trust.items()),
             "installation"),
        _cfg("config.hsm-ca-keys", "every active issuing CA key is on a PKCS#11 token",
             bool(backends) and all(b == "pkcs11" for b in backends.values()),
             ((f"{e}: {b}", 1) for e, b in backends.items())),
        _cfg("config.root-ca-offline", "the root CA key is offline",
             None if root is None else root == "offline"),
        _cfg("config.tuf-root-offline", "no TUF root key is reachable from this server",
             None if storage is None else storage == "offline"),
        _cfg("config.measured-boot",
             "the newest deployable release of each product measures every boot stage",
             _measured(session, tenant_id=tenant_id, product=product)),
        _cfg("config.detectors", "authz, boot-integrity and exploited-vulnerability detectors run",
             all(d in enabled for d in _DETECTORS),
             ((f"{k} (response {responses.get(k, 'none')})", 1) for k in sorted(enabled))),
        _cfg("config.least-privilege-topics",
             "every live device role publishes and subscribes under its own device only",
             all("{device}" in t for t in topics), ((r.name, 1) for r in roles)),
        _cfg("config.command-allow-list",
             "no live device role subscribes to raw command topics (commands are allow-listed)",
             not any("cmd" in t.text for r in roles for t in r.subscribe)),
        _cfg("config.operator-tls", "the operator plane serves TLS",
             None if settings is None else settings.operator_tls, (), "installation"),
        _cfg("config.auth-failure-limits", "failed operator logins allowed before refusal",
             limits, (), "installation"),
    ]  # fmt: skip


def platform_lines() -> list[EvidenceLine]:
    """The platform lines (``platform.*``): what this version always does."""
    return [
        EvidenceLine(key=key, text=PLATFORM_CONTROLS[control], source="platform",
                     scope="installation", value=True)
        for key, control in _PLATFORM.items()
    ]  # fmt: skip
