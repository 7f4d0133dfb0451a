"""Findings from the database: components meet advisories on their keys.

The join is done by the database (components and affected entries share a
package key or a CPE key, both indexed), so the cost is the candidates, not
components x advisories; each candidate is then decided by the pure
:mod:`fleetward.vulns.match`. :func:`reconcile` runs for a scope (some
releases, or some advisories): every pair in the scope that matches has an
open finding afterwards, and every open finding in the scope whose pair no
longer matches is closed with its reason (withdrawn, or no longer affected).
A closed finding whose pair matches again is reopened.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from fleetward.vulns import match as m
from fleetward.vulns._store import affected_from_row
from fleetward.vulns.models import Advisory, Affected, Finding, SbomComponent
from fleetward.vulns.records import AffectedPackage, Component

__all__ = ["MatchOutcome", "reconcile"]

_CHUNK = 2000
MAX_UNEVALUABLE_SAMPLES = 20  # reasons kept per round (the count is complete)


@dataclasses.dataclass
class MatchOutcome:
    """What a reconcile did."""

    candidates: int = 0
    matched: int = 0
    new: list[int] = dataclasses.field(default_factory=list)  # finding ids
    reopened: list[int] = dataclasses.field(default_factory=list)
    closed: int = 0
    unevaluable: int = 0
    samples: list[str] = dataclasses.field(default_factory=list)


def _chunks(keys: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(keys), _CHUNK):
        yield keys[start : start + _CHUNK]


def _component(row: SbomComponent) -> Component:
    return Component(
        name=row.name, version=row.version, purl=row.purl, cpe=row.cpe,
        ecosystem=row.ecosystem, package=row.package, bom_ref=row.bom_ref,
    )  # fmt: skip


def reconcile(
    session: Session,
    tenant_id: int,
    *,
    release_ids: Collection[int] | None = None,
    advisory_pks: Collection[int] | None = None,
    now: dt.datetime,
    cache: m.VersionCache | None = None,
) -> MatchOutcome:
    """Bring findings in line with components and advisories, for releases or
    for advisories (exactly one of the two)."""
    if (release_ids is None) == (advisory_pks is None):
        raise ValueError("reconcile takes release_ids or advisory_pks")
    cache = cache or m.VersionCache()
    out = MatchOutcome()
    # 1. The components and affected entries in scope.
    comps: dict[int, SbomComponent] = {}
    affected: dict[int, tuple[int, str, str, str]] = {}  # affected id -> (adv pk, kind, key, spec)
    if release_ids is not None:
        for chunk in _chunks(sorted(release_ids)):
            comps.update(
                (c.id, c)
                for c in session.execute(
                    select(SbomComponent).where(
                        SbomComponent.tenant_id == tenant_id, SbomComponent.release_id.in_(chunk)
                    )
                ).scalars()
            )
        keys = {c.key for c in comps.values() if c.key} | {
            c.cpe_key for c in comps.values() if c.cpe_key
        }
        for chunk in _chunks(sorted(keys)):
            for aid, apk, kind, key, spec in session.execute(
                select(
                    Affected.id, Affected.advisory_pk, Affected.kind, Affected.key, Affected.spec
                )
                .join(Advisory, Advisory.id == Affected.advisory_pk)
                .where(
                    Affected.tenant_id == tenant_id,
                    Affected.key.in_(chunk),
                    Advisory.withdrawn.is_(None),
                )
            ):
                affected[aid] = (apk, kind, key, spec)
        scope: tuple[Any, Collection[int]] = (Finding.release_id, release_ids)
    else:
        assert advisory_pks is not None  # noqa: S101 - narrowed by the check above
        for chunk in _chunks(sorted(advisory_pks)):
            for aid, apk, kind, key, spec in session.execute(
                select(
                    Affected.id, Affected.advisory_pk, Affected.kind, Affected.key, Affected.spec
                )
                .join(Advisory, Advisory.id == Affected.advisory_pk)
                .where(Affected.advisory_pk.in_(chunk), Advisory.withdrawn.is_(None))
            ):
                affected[aid] = (apk, kind, key, spec)
        pkg_keys = sorted({a[2] for a in affected.values() if a[1] == "package"})
        cpe_keys = sorted({a[2] for a in affected.values() if a[1] == "cpe"})
        for chunk in _chunks(pkg_keys):
            comps.update(
                (c.id, c)
                for c in session.execute(
                    select(SbomComponent).where(
                        SbomComponent.tenant_id == tenant_id, SbomComponent.key.in_(chunk)
                    )
                ).scalars()
            )
        for chunk in _chunks(cpe_keys):
            comps.update(
                (c.id, c)
                for c in session.execute(
                    select(SbomComponent).where(
                        SbomComponent.tenant_id == tenant_id, SbomComponent.cpe_key.in_(chunk)
                    )
                ).scalars()
            )
        scope = (Finding.advisory_pk, advisory_pks)
    # 2. Decide every candidate pair.
    by_key: dict[tuple[str, str], list[tuple[int, Any]]] = defaultdict(list)
    for apk, kind, key, spec in affected.values():
        by_key[(kind, key)].append((apk, affected_from_row(kind, spec)))
    ids = _advisory_ids(session, {a[0] for a in affected.values()})
    matches: dict[tuple[int, int, int], m.Match] = {}  # (release, component, advisory pk)
    for c in comps.values():
        comp = _component(c)
        for kind, ckey in (("package", c.key), ("cpe", c.cpe_key)):
            if ckey is None:
                continue
            for apk, entry in by_key.get((kind, ckey), ()):
                out.candidates += 1
                try:
                    if isinstance(entry, AffectedPackage):
                        hit = m.match_package(comp, ids[apk], entry, cache=cache)
                    else:
                        hit = m.match_cpe(comp, ids[apk], entry, cache=cache)
                except m.UnevaluableError as exc:
                    out.unevaluable += 1
                    if len(out.samples) < MAX_UNEVALUABLE_SAMPLES:
                        out.samples.append(f"{ids[apk]} x {c.name} {c.version}: {exc}")
                    continue
                if hit is not None:
                    matches.setdefault((c.release_id, c.id, apk), hit)
    out.matched = len(matches)
    _write(session, tenant_id, scope, matches, ids, now, out)
    return out


def _advisory_ids(session: Session, pks: Collection[int]) -> dict[int, str]:
    ids: dict[int, str] = {}
    for chunk in _chunks(sorted(pks)):
        ids.update(
            (int(pk), str(aid))
            for pk, aid in session.execute(
                select(Advisory.id, Advisory.advisory_id).where(Advisory.id.in_(chunk))
            )
        )
    return ids


def _write(
    session: Session,
    tenant_id: int,
    scope: tuple[Any, Collection[int]],
    matches: dict[tuple[int, int, int], m.Match],
    ids: dict[int, str],
    now: dt.datetime,
    out: MatchOutcome,
) -> None:
    column, keys = scope
    existing: dict[tuple[int, int, int], tuple[int, str, str | None]] = {}
    for chunk in _chunks(sorted(keys)):
        for r in session.execute(
            select(
                Finding.id, Finding.release_id, Finding.component_pk, Finding.advisory_pk,
                Finding.state, Finding.close_reason,
            ).where(Finding.tenant_id == tenant_id, column.in_(chunk))
        ):  # fmt: skip
            existing[(r.release_id, r.component_pk, r.advisory_pk)] = (
                r.id, r.state, r.close_reason,
            )  # fmt: skip
    fresh = []
    for pair, hit in matches.items():
        old = existing.get(pair)
        if old is None:
            fresh.append(
                {
                    "tenant_id": tenant_id, "release_id": pair[0], "component_pk": pair[1],
                    "advisory_pk": pair[2], "advisory_id": ids[pair[2]], "state": "open",
                    "analysis": "in_triage", "detail": "", "exploited": False, "via": hit.via,
                    "reason": hit.reason[:2000], "fixed_versions": json.dumps(list(hit.fixed)[:20]),
                    "priority": "P4", "rank": 0.0, "reasons": "[]", "due_at": now,
                    "devices": 0, "peak_devices": 0, "first_seen": now, "updated_at": now,
                }
            )  # fmt: skip
        elif old[1] == "closed" and old[2] != "remediated":
            session.execute(
                update(Finding)
                .where(Finding.id == old[0])
                .values(state="open", close_reason=None, closed_at=None, updated_at=now,
                        reason=hit.reason[:2000])
            )  # fmt: skip
            out.reopened.append(old[0])
    for start in range(0, len(fresh), _CHUNK):
        rows = session.execute(
            insert(Finding).returning(Finding.id), fresh[start : start + _CHUNK]
        ).scalars()
        out.new.extend(int(i) for i in rows)
    gone = [
        fid for pair, (fid, state, _) in existing.items() if state == "open" and pair not in matches
    ]
    if gone:
        gone_set = set(gone)
        candidates = sorted({p[2] for p, v in existing.items() if v[0] in gone_set})
        withdrawn: set[int] = set()
        for chunk in _chunks(candidates):
            withdrawn.update(
                session.execute(
                    select(Advisory.id).where(
                        Advisory.id.in_(chunk), Advisory.withdrawn.is_not(None)
                    )
                ).scalars()
            )
        by_reason: dict[str, list[int]] = defaultdict(list)
        for pair, (fid, _, _) in existing.items():
            if fid in gone_set:
                by_reason["withdrawn" if pair[2] in withdrawn else "no-longer-affected"].append(fid)
        for reason, fids in by_reason.items():
            for chunk in _chunks(fids):
                session.execute(
                    update(Finding)
                    .where(Finding.id.in_(chunk))
                    .values(state="closed", close_reason=reason, closed_at=now, updated_at=now)
                )
        out.closed += len(gone)
