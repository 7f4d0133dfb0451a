"""Rows in and out: advisories, KEV entries and EPSS scores, incrementally.

An import compares each parsed advisory's digest (of its normalised form)
with the stored one: unchanged records cost one dictionary lookup, changed
ones replace their row and their affected entries, new ones are added.
Only the advisories that were added or changed are matched again, which is
what makes re-importing a 200,000-record feed with 1,000 changes cheap.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from fleetward.vulns.models import Advisory, AdvisoryAlias, Affected, Epss, Kev
from fleetward.vulns.records import (
    Advisory as AdvisoryRecord,
)
from fleetward.vulns.records import (
    AffectedPackage,
    CpeMatch,
    EpssScore,
    KevEntry,
    OsvRange,
)

__all__ = [
    "MAX_ALIASES",
    "MAX_REFERENCES",
    "UpsertCounts",
    "advisory_digest",
    "affected_from_row",
    "store_advisories",
    "store_epss",
    "store_kev",
]

MAX_REFERENCES = 20  # reference URLs kept per advisory (the rest are in the feed)
MAX_ALIASES = 100  # aliases (and CVE join rows) kept per advisory; real ones have a few
_CHUNK = 2000


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


def advisory_digest(a: AdvisoryRecord) -> str:
    """SHA-256 of the normalised advisory: equal digests, nothing to redo."""
    blob = json.dumps(_jsonable(a), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _affected_rows(tenant_id: int, pk: int, a: AdvisoryRecord) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for p in a.affected:
        try:
            key = p.key
        except ValueError:
            continue  # no ecosystem or name: nothing can match it
        spec = {
            "ecosystem": p.ecosystem,
            "name": p.name,
            "ranges": [{"type": r.type, "events": [list(e) for e in r.events]} for r in p.ranges],
            "versions": list(p.versions),
        }
        rows.append(
            {"tenant_id": tenant_id, "advisory_pk": pk, "kind": "package", "key": key,
             "spec": json.dumps(spec)}
        )  # fmt: skip
    for c in a.cpes:
        try:
            key = c.key
        except ValueError:
            continue
        rows.append(
            {"tenant_id": tenant_id, "advisory_pk": pk, "kind": "cpe", "key": key,
             "spec": json.dumps(_jsonable(c))}
        )  # fmt: skip
    return rows


def affected_from_row(kind: str, spec: str) -> AffectedPackage | CpeMatch:
    """The value object a stored affected row holds."""
    d = json.loads(spec)
    if kind == "package":
        return AffectedPackage(
            ecosystem=d["ecosystem"],
            name=d["name"],
            ranges=tuple(
                OsvRange(r["type"], tuple((str(k), str(v)) for k, v in r["events"]))
                for r in d["ranges"]
            ),
            versions=tuple(d["versions"]),
        )
    return CpeMatch(**d)


@dataclasses.dataclass
class UpsertCounts:
    """What an import did to the stored records."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    changed_pks: list[int] = dataclasses.field(default_factory=list)


def _clean(text: str) -> str:
    """Free text as PostgreSQL stores it (no NUL)."""
    return text.replace("\x00", "")


def _row(tenant_id: int, a: AdvisoryRecord, digest: str, import_id: int) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "advisory_id": a.id,
        "source": a.source,
        "summary": _clean(a.summary)[:4000],
        "aliases": json.dumps([_clean(x) for x in a.aliases[:MAX_ALIASES]]),
        "severity": a.severity,
        "cvss_score": a.cvss_score,
        "cvss_vector": (a.cvss_vector or None) and a.cvss_vector[:200],
        "references": json.dumps([_clean(x) for x in a.references[:MAX_REFERENCES]]),
        "published": a.published,
        "modified": a.modified,
        "withdrawn": a.withdrawn,
        "digest": digest,
        "import_id": import_id,
    }


def store_advisories(
    session: Session, tenant_id: int, batch: Sequence[AdvisoryRecord], *, import_id: int,
    counts: UpsertCounts,
) -> None:  # fmt: skip
    """Add or replace a batch of advisories (an older ``modified`` never
    replaces a newer stored one)."""
    if not batch:
        return
    latest: dict[str, AdvisoryRecord] = {}
    for a in batch:  # the same id twice in one batch: the newest wins
        if a.id not in latest or a.modified >= latest[a.id].modified:
            latest[a.id] = a
    stored = {
        aid: (pk, digest, modified)
        for aid, pk, digest, modified in session.execute(
            select(Advisory.advisory_id, Advisory.id, Advisory.digest, Advisory.modified).where(
                Advisory.tenant_id == tenant_id, Advisory.advisory_id.in_(list(latest))
            )
        )
    }
    new_rows: list[tuple[AdvisoryRecord, dict[str, Any]]] = []
    replaced: list[tuple[int, AdvisoryRecord, dict[str, Any]]] = []
    for aid, a in latest.items():
        digest = advisory_digest(a)
        old = stored.get(aid)
        if old is None:
            new_rows.append((a, _row(tenant_id, a, digest, import_id)))
        elif old[1] == digest or a.modified < old[2]:
            counts.unchanged += 1
        else:
            replaced.append((old[0], a, _row(tenant_id, a, digest, import_id)))
    if new_rows:
        pks = session.execute(
            insert(Advisory).returning(Advisory.id, Advisory.advisory_id),
            [r for _, r in new_rows],
        ).all()
        by_id = {aid: pk for pk, aid in pks}
        _children(session, tenant_id, [(by_id[a.id], a) for a, _ in new_rows])
        counts.added += len(new_rows)
        counts.changed_pks.extend(by_id.values())
    if replaced:
        pks_r = [pk for pk, _, _ in replaced]
        session.execute(delete(Affected).where(Affected.advisory_pk.in_(pks_r)))
        session.execute(delete(AdvisoryAlias).where(AdvisoryAlias.advisory_pk.in_(pks_r)))
        for pk, _, row in replaced:
            session.execute(update(Advisory).where(Advisory.id == pk).values(**row))
        _children(session, tenant_id, [(pk, a) for pk, a, _ in replaced])
        counts.updated += len(replaced)
        counts.changed_pks.extend(pks_r)


def _children(
    session: Session, tenant_id: int, items: Iterable[tuple[int, AdvisoryRecord]]
) -> None:
    affected: list[dict[str, Any]] = []
    aliases: list[dict[str, Any]] = []
    for pk, a in items:
        affected.extend(_affected_rows(tenant_id, pk, a))
        aliases.extend(
            {"tenant_id": tenant_id, "advisory_pk": pk, "cve": c[:64]} for c in a.cves[:MAX_ALIASES]
        )
    for start in range(0, len(affected), _CHUNK):
        session.execute(insert(Affected), affected[start : start + _CHUNK])
    for start in range(0, len(aliases), _CHUNK):
        session.execute(insert(AdvisoryAlias), aliases[start : start + _CHUNK])


def store_kev(
    session: Session, tenant_id: int, entries: Sequence[KevEntry], *, now: dt.datetime
) -> tuple[int, int, int, list[str]]:
    """Add or update KEV entries; returns (added, updated, unchanged, new CVEs)."""
    stored = {
        k.cve: k for k in session.execute(select(Kev).where(Kev.tenant_id == tenant_id)).scalars()
    }
    added = updated = unchanged = 0
    new: list[str] = []
    for e in entries:
        cve = e.cve.upper()
        row = stored.get(cve)
        values = {
            "vendor": e.vendor[:200], "product": e.product[:200], "name": e.name[:2000],
            "date_added": e.date_added, "due_date": e.due_date, "ransomware": e.ransomware,
            "required_action": e.required_action[:2000],
        }  # fmt: skip
        if row is None:
            row = Kev(tenant_id=tenant_id, cve=cve, imported_at=now, **values)
            session.add(row)
            stored[cve] = row
            added += 1
            new.append(cve)
        elif any(getattr(row, k) != v for k, v in values.items()):
            for k, v in values.items():
                setattr(row, k, v)
            updated += 1
        else:
            unchanged += 1
    session.flush()
    return added, updated, unchanged, new


def store_epss(
    session: Session, tenant_id: int, scores: Sequence[EpssScore]
) -> tuple[int, int, int]:
    """Add or update EPSS scores; returns (added, updated, unchanged)."""
    latest = {s.cve.upper(): s for s in scores}
    added = updated = unchanged = 0
    keys = list(latest)
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        stored = {
            cve: (pk, e, p, d)
            for pk, cve, e, p, d in session.execute(
                select(Epss.id, Epss.cve, Epss.epss, Epss.percentile, Epss.score_date).where(
                    Epss.tenant_id == tenant_id, Epss.cve.in_(chunk)
                )
            )
        }
        fresh = []
        for cve in chunk:
            s = latest[cve]
            old = stored.get(cve)
            if old is None:
                fresh.append(
                    {"tenant_id": tenant_id, "cve": cve, "epss": s.epss,
                     "percentile": s.percentile, "score_date": s.score_date}
                )  # fmt: skip
            elif (old[1], old[2], old[3]) == (s.epss, s.percentile, s.score_date):
                unchanged += 1
            else:
                session.execute(
                    update(Epss)
                    .where(Epss.id == old[0])
                    .values(epss=s.epss, percentile=s.percentile, score_date=s.score_date)
                )
                updated += 1
        if fresh:
            session.execute(insert(Epss), fresh)
            added += len(fresh)
    return added, updated, unchanged
