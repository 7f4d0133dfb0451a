"""Reading the live facts of one product, one domain at a time (through the faces).

Each function here asks one domain's public face and turns its answer into
the plain values of :class:`~fleetward.trustmap.LiveFacts`; none writes. A
fact the installation cannot tell is returned as ``None`` (unknown), never
guessed, so its check is skipped and its control stays unconfirmed
(``fleetward/trustmap/checks.py``).

How each answer is read:

- **Device keys**: the key origin recorded on the good, unexpired
  certificates of the product's active or quarantined devices
  (``identity.key_origins``); an origin never recorded counts as
  ``unknown``, that is, not hardware-attested.
- **CA keys**: the scheme of the active issuing CA's key URI per
  environment (``file:`` or ``pkcs11:``); the root CA is offline when
  identity holds no key for it (its URI starts with ``identity.OFFLINE``).
- **TUF root**: online when the private half of any root key is reachable
  from this server: a ``pkcs11:`` URI (the installation's token) or a
  ``file:`` path that exists here. Root keys kept with
  ``ota.OfflineKeys`` are recorded by URI only and leave the server with
  their directory; while that directory is still here, they are online.
- **Campaigns**: the product's newest ``RECENT_CAMPAIGNS``, aborted ones
  left out (their release is withdrawn and their devices fell back).
- **Listeners**: each environment's listener CA file is written by the
  broker sync from ``identity.trusted_issuing_cas(environment=…)``; the
  environments of the CAs that query returns are what the listener trusts.
  The rendered file on disk is not read (the path belongs to the broker's
  configuration, which this layer does not reach).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from sqlalchemy.orm import Session

from fleetward import comms, detection, identity, ota, provisioning, tenancy
from fleetward.tenancy import Principal
from fleetward.trustmap._live import BOOT_STAGES, MAX_DEVICE_SAMPLE, MAX_ITEMS, LiveRole
from fleetward.trustmap.schema import DETECTORS, ENVIRONMENTS, RESPONSES

__all__ = [
    "RECENT_CAMPAIGNS",
    "ca_keys",
    "campaigns",
    "detectors",
    "device_keys",
    "factories",
    "listener_trust",
    "newest_measured_stages",
    "policy_roles",
    "reader",
    "release_thresholds",
    "service_identities",
    "tuf_root",
]

RECENT_CAMPAIGNS = 20  # campaigns of the product whose waves and gate are checked
_ACTOR = "system:trustmap"


def reader(session: Session, tenant_id: int) -> Principal:
    """The principal the gathering reads the tenant with (reads only, never a write)."""
    t = tenancy.get_tenant(session, tenant_id)
    return Principal(tenant_id=t.id, tenant_name=t.name, role="admin", actor=_ACTOR)


def device_keys(
    session: Session, *, tenant_id: int, product: str, now: dt.datetime
) -> tuple[dict[tuple[str, str], int], dict[str, tuple[str, ...]]]:
    """``(environment, key origin) -> devices`` and a sample of software-key devices."""
    counts, soft = identity.key_origins(
        session, tenant_id=tenant_id, product=product, now=now, sample=MAX_DEVICE_SAMPLE
    )
    keep = {k: n for k, n in counts.items() if k[0] in ENVIRONMENTS}
    return keep, {e: ids for e, ids in soft.items() if e in ENVIRONMENTS}


def _backend(uri: str) -> str | None:
    scheme = uri.split(":", 1)[0]
    return scheme if scheme in ("file", "pkcs11") else None


def ca_keys(session: Session, *, tenant_id: int) -> tuple[dict[str, str], str | None]:
    """The key backend of each environment's active issuing CA, and the root's custody."""
    backends: dict[str, str] = {}
    root: str | None = None
    for ca in identity.list_cas(session, tenant_id=tenant_id):
        if ca.status != "active":
            continue
        if ca.kind == "root":
            root = "offline" if ca.key_uri.startswith(identity.OFFLINE) else "online"
        elif ca.environment in ENVIRONMENTS and (b := _backend(ca.key_uri)) is not None:
            backends[ca.environment] = b
    return backends, root


def _held_here(uri: str) -> bool:
    """Whether a key's private half is reachable from this server."""
    scheme, _, rest = uri.partition(":")
    if scheme == "pkcs11":
        return True
    return scheme == "file" and Path(rest).is_file()


def tuf_root(session: Session, *, tenant_id: int) -> tuple[int | None, int | None, str | None]:
    """The live root role: threshold, number of keys, ``online``/``offline`` (None: no repo)."""
    root = ota.role_keys(session, tenant_id=tenant_id, role="root")
    if root is None:
        return None, None, None
    threshold, uris = root
    if not uris:
        return threshold, None, None  # no keys recorded: where they are is unknown
    storage = "online" if any(_held_here(u) for u in uris) else "offline"
    return threshold, len(uris), storage


def release_thresholds(session: Session, *, tenant_id: int, product: str) -> dict[str, int]:
    """``product -> threshold`` of its targets role (empty: the product has none)."""
    role = ota.role_keys(session, tenant_id=tenant_id, role=f"product-{product}")
    return {} if role is None else {product: role[0]}


def newest_measured_stages(
    session: Session, *, tenant_id: int, product: str
) -> frozenset[str] | None:
    """Boot stages with reference values on the newest deployable release (None: none yet)."""
    deployable = [
        r
        for r in ota.list_releases_of_tenant(session, tenant_id)
        if r.product == product and r.state == "deployable"
    ]
    if not deployable:
        return None
    newest = max(deployable, key=lambda r: r.id)
    values = json.loads(newest.measurements or "{}")
    if not isinstance(values, dict):
        return frozenset()
    return frozenset(s for s in BOOT_STAGES if values.get(s))


def campaigns(
    session: Session, *, tenant_id: int, product: str
) -> tuple[dict[str, float], dict[str, bool]]:
    """First-wave percent and ``require_attestation`` of the product's recent campaigns.

    An aborted campaign is left out: aborting withdrew its release and sent
    its devices back to their fallback, so its waves and gate no longer act
    on the fleet (aborting is how an operator undoes such a drift).
    """
    first: dict[str, float] = {}
    attested: dict[str, bool] = {}
    for c in ota.recent_campaigns(
        session, tenant_id=tenant_id, product=product, limit=RECENT_CAMPAIGNS
    ):
        if c.state == "aborted":
            continue
        cid = f"campaign-{c.id}"
        waves = json.loads(c.waves)
        if isinstance(waves, list) and waves:
            first[cid] = float(waves[0])
        gate = json.loads(c.gate)
        attested[cid] = bool(isinstance(gate, dict) and gate.get("require_attestation"))
    return first, attested


def detectors(session: Session, *, tenant_id: int) -> tuple[frozenset[str], dict[str, str]]:
    """The detectors that run (every kind of ``detection.KINDS``) and their responses."""
    enabled = frozenset(k for k in detection.KINDS if k in DETECTORS)
    configured = detection.responses(session, tenant_id=tenant_id)
    answers = {k: a for k, a in configured.items() if k in DETECTORS and a in RESPONSES}
    return enabled, answers


def policy_roles(session: Session, *, tenant_id: int, product: str) -> dict[str, LiveRole]:
    """The tenant's live policy roles that can apply to the product's devices.

    A role selecting another product never reaches this product's devices;
    the built-in quarantine role is not the tenant's and is left out. Deny
    rules only narrow a role, so the allows are compared (conservative).
    """
    out: dict[str, LiveRole] = {}
    for role in comms.current_policy(session, tenant_id).policy.roles:
        if role.name == comms.QUARANTINE.name or role.product not in (None, product):
            continue
        out[role.name] = LiveRole(
            publish=tuple(t.text for t in role.publish),
            subscribe=tuple(t.text for t in role.subscribe),
            commands=tuple(role.commands),
        )
    return out


def listener_trust(session: Session) -> dict[str, frozenset[str]]:
    """``listener environment -> environments`` of the issuing CAs in its CA file."""
    out: dict[str, frozenset[str]] = {}
    for env in ENVIRONMENTS:
        cas = identity.trusted_issuing_cas(session, environment=env)
        if cas:
            out[env] = frozenset(str(ca.environment) for ca in cas)
    return out


def service_identities() -> frozenset[str]:
    """fleetward's own broker identities (one per job)."""
    return frozenset(comms.SERVICE_JOBS)


def factories(
    session: Session, who: Principal, *, now: dt.datetime
) -> tuple[dict[str, frozenset[str]], dict[str, tuple[str, ...]], dict[str, int]]:
    """Per factory: the environments it can provision, unbound tokens, open batches.

    A factory provisions its own environment, those of its open batches and
    those of the tokens bound to it. A live ``factory-operator`` token bound
    to no factory can enroll on any line of its environment (every
    environment when unscoped) outside the batches: it is named under each
    such factory.
    """
    rows = provisioning.list_factories(session, who)[:MAX_ITEMS]
    by_id = {f.id: f for f in rows}
    envs: dict[str, set[str]] = {f.name: {f.environment} for f in rows}
    open_batches: dict[str, int] = {f.name: 0 for f in rows}
    for b in provisioning.list_batches(session, who):
        f = by_id.get(b.factory_id)
        if f is not None and b.status == "open" and b.expires_at > now:
            envs[f.name].add(b.environment)
            open_batches[f.name] += 1
    unbound: dict[str, list[str]] = {}
    for t in tenancy.list_tokens(session, who):
        live = t.revoked_at is None and (t.expires_at is None or t.expires_at > now)
        if not live or t.role != "factory-operator":
            continue
        if t.factory_id is not None:
            if (f := by_id.get(t.factory_id)) is not None and t.environment is not None:
                envs[f.name].add(t.environment)
            continue
        for f in rows:
            if t.environment in (None, f.environment):
                unbound.setdefault(f.name, []).append(t.id)
    clean = {n: frozenset(e for e in es if e in ENVIRONMENTS) for n, es in envs.items()}
    tokens = {n: tuple(ids[:MAX_ITEMS]) for n, ids in unbound.items()}
    return clean, tokens, open_batches
