"""Checking a trust map against the live installation.

:func:`live_facts` reads what the installation holds for one product of one
tenant, through the other domains' public faces (:mod:`._gather`, one
function per domain), and returns it as :class:`~fleetward.trustmap.LiveFacts`.
It reads only: no row is written and no audit entry made, so a check can run
as often as wanted. :func:`check_map` loads a map and runs the pure drift
checks (``checks.py``) on those facts; :func:`threat_model` feeds the controls
the checks confirmed into the threat model, so a declared control counts as
a mitigation only once the live system holds it.

Every fact the installation cannot tell stays ``None`` (unknown): no TUF
repository yet leaves the TUF root and release thresholds unknown, no
deployable release leaves the measured boot stages unknown. A map of
another product than asked is checked against that product's facts (the
map names its product).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session

from fleetward.trustmap import _gather as gather
from fleetward.trustmap.checks import CheckResult, LiveFacts, check
from fleetward.trustmap.schema import load
from fleetward.trustmap.threats import ThreatModel, model

__all__ = ["check_map", "live_facts", "threat_model"]


def live_facts(session: Session, *, tenant_id: int, product: str, now: dt.datetime) -> LiveFacts:
    """What the live installation holds for one product of one tenant.

    Args:
        session: an open session (only read).
        tenant_id: the tenant whose objects are read.
        product: the product the map describes (devices, releases, campaigns,
            policy roles selecting it).
        now: the time certificates, batches and tokens are judged at.

    Returns:
        The facts; those the installation cannot tell are ``None``.

    Raises:
        NotFoundError: no such tenant.
    """
    who = gather.reader(session, tenant_id)
    origins, soft = gather.device_keys(session, tenant_id=tenant_id, product=product, now=now)
    backends, root_ca = gather.ca_keys(session, tenant_id=tenant_id)
    threshold, keys, storage = gather.tuf_root(session, tenant_id=tenant_id)
    first, attested = gather.campaigns(session, tenant_id=tenant_id, product=product)
    enabled, responses = gather.detectors(session, tenant_id=tenant_id)
    envs, unbound, batches = gather.factories(session, who, now=now)
    return LiveFacts(
        device_key_origins=origins,
        software_key_devices=soft,
        ca_key_backends=backends,
        root_ca=root_ca,
        tuf_root_threshold=threshold,
        tuf_root_keys=keys,
        tuf_root_storage=storage,
        # Without a repository no product role exists either: unknown, not zero.
        release_thresholds=(
            gather.release_thresholds(session, tenant_id=tenant_id, product=product)
            if threshold is not None
            else None
        ),
        boot_stages_measured=gather.newest_measured_stages(
            session, tenant_id=tenant_id, product=product
        ),
        campaign_first_wave_percent=first,
        campaign_require_attestation=attested,
        detectors_enabled=enabled,
        detector_responses=responses,
        policy_roles=gather.policy_roles(session, tenant_id=tenant_id, product=product),
        listener_trust=gather.listener_trust(session),
        service_identities=gather.service_identities(),
        factory_environments=envs,
        factory_unbound_tokens=unbound,
        factory_open_batches=batches,
    )


def check_map(
    session: Session, *, tenant_id: int, map_text: str | bytes, now: dt.datetime
) -> CheckResult:
    """Load a trust map and compare it with the live facts of its product.

    Args:
        session: an open session (only read).
        tenant_id: the tenant the map describes.
        map_text: the map, YAML or JSON (at most ``schema.MAX_MAP_BYTES``).
        now: the time the facts are judged at.

    Returns:
        The drifts (most severe first), confirmed controls and checks run.

    Raises:
        InvalidInputError: the map is malformed (the bad nodes named).
        PayloadTooLargeError: the map is too large.
        NotFoundError: no such tenant.
    """
    m = load(map_text)
    return check(m, live_facts(session, tenant_id=tenant_id, product=m.product, now=now))


def threat_model(
    session: Session, *, tenant_id: int, map_text: str | bytes, now: dt.datetime
) -> ThreatModel:
    """The map's threat model with the live-confirmed controls as mitigations.

    Args and Raises: as :func:`check_map`.

    Returns:
        The threat model; a declared control counts only when a live check holds it.
    """
    m = load(map_text)
    facts = live_facts(session, tenant_id=tenant_id, product=m.product, now=now)
    return model(m, confirmed=check(m, facts).confirmed)
