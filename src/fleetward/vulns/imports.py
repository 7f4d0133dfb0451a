"""Vulnerability operations: SBOM indexing and feed imports.

A release's SBOM is indexed when it is uploaded (and, for releases from
before, by the vulnerability round); its components are matched at once.
An import is one transaction: a file that cannot be read at all is refused
before anything is written, a bad record is skipped with its reason in the
import report, and an error midway rolls everything back, so there is never
a half-imported feed. Only added or changed advisories are matched again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import stat
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from fleetward import audit, ota
from fleetward.errors import InvalidInputError, NotFoundError, PayloadTooLargeError
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal
from fleetward.vulns import _cases, _store, feeds, sbom
from fleetward.vulns._exposure import RefreshOutcome, refresh
from fleetward.vulns._matching import MatchOutcome, reconcile
from fleetward.vulns.models import FeedImport, Finding, SbomComponent, SbomIndex
from fleetward.vulns.records import Advisory as AdvisoryRecord
from fleetward.vulns.records import SkippedRecord

__all__ = [
    "FEED_KINDS",
    "ImportReport",
    "detect_kind",
    "get_import",
    "import_feed",
    "index_pending",
    "index_release",
    "list_imports",
    "rematch_all",
]

FEED_KINDS = ("osv", "nvd", "kev", "epss")
BATCH = 2000  # advisories stored per round trip during an import
MAX_PROBLEMS = 200  # per-record reasons kept in an import report (the count is complete)
Progress = Callable[[int], None]


def _problems(errors: list[SkippedRecord]) -> str:
    return json.dumps([{"where": e.where, "reason": e.reason} for e in errors[:MAX_PROBLEMS]])


# --- SBOM indexing --------------------------------------------------------------------------


def index_release(session: Session, release: ota.Release, *, now: dt.datetime) -> SbomIndex:
    """Index (or re-index) a release's stored SBOM and match its components.

    A missing or invalid SBOM is recorded as such (the release's review gate
    says the same); it never raises for the SBOM's content.
    """
    old = session.execute(
        select(SbomIndex).where(SbomIndex.release_id == release.id)
    ).scalar_one_or_none()
    if old is not None:
        session.delete(old)
        session.execute(delete(SbomComponent).where(SbomComponent.release_id == release.id))
        session.flush()
    row = SbomIndex(tenant_id=release.tenant_id, release_id=release.id, indexed_at=now)
    if release.sbom is None:
        row.status, row.problems = "missing", json.dumps(["the release has no SBOM"])
        session.add(row)
        session.flush()
        return row
    data = release.sbom.encode()
    row.digest = hashlib.sha256(data).hexdigest()
    try:
        parsed = sbom.parse_sbom(data)
    except InvalidInputError as exc:
        row.status, row.problems = "invalid", json.dumps([exc.detail])
        session.add(row)
        session.flush()
        return row
    row.status, row.format, row.spec_version = "indexed", parsed.format, parsed.spec_version
    row.components = len(parsed.components)
    row.problems = json.dumps(list(parsed.skipped[:MAX_PROBLEMS]))
    session.add(row)
    rows = []
    for c in parsed.components:
        rows.append(
            {
                "tenant_id": release.tenant_id, "release_id": release.id,
                "name": c.name[:256], "version": (c.version or None) and c.version[:128],
                "purl": c.purl, "cpe": c.cpe, "ecosystem": c.ecosystem,
                "package": c.package and c.package[:256], "key": c.key and c.key[:300],
                "cpe_key": c.cpe_key and c.cpe_key[:300],
                "bom_ref": c.bom_ref and c.bom_ref[:256],
            }
        )  # fmt: skip
    for start in range(0, len(rows), BATCH):
        session.execute(insert(SbomComponent), rows[start : start + BATCH])
    session.flush()
    reconcile(session, release.tenant_id, release_ids=[release.id], now=now)
    _after_match(session, release.tenant_id, now=now, releases=[release.id])
    return row


def index_pending(session: Session, *, now: dt.datetime | None = None, limit: int = 50) -> int:
    """Index releases that have none yet (releases from before this feature,
    or created by a path that did not index); returns how many."""
    now = now or utcnow()
    done = 0
    for release in ota.releases_without(session, select(SbomIndex.release_id), limit=limit):
        index_release(session, release, now=now)
        done += 1
    return done


def _after_match(
    session: Session,
    tenant_id: int,
    *,
    now: dt.datetime,
    releases: Collection[int] | None = None,
    advisories: Collection[int] | None = None,
) -> RefreshOutcome:
    """Refresh the findings a change touched (of these releases, or of these
    advisories; every finding of the tenant when neither is given: KEV and
    EPSS move every priority). The worker refreshes the rest every round."""
    ids: list[int] | None = None
    if releases is not None or advisories is not None:
        column = Finding.release_id if releases is not None else Finding.advisory_pk
        keys = sorted(releases if releases is not None else advisories or ())
        ids = []
        for start in range(0, len(keys), BATCH):
            ids.extend(
                session.execute(
                    select(Finding.id).where(
                        Finding.tenant_id == tenant_id, column.in_(keys[start : start + BATCH])
                    )
                ).scalars()
            )
    result = refresh(session, tenant_id, now=now, finding_ids=ids)
    _cases.open_for_findings(session, tenant_id, result.exploited, now=now)
    return result


# --- feed imports ---------------------------------------------------------------------------


@dataclasses.dataclass
class ImportReport:
    """What one import did (also kept as a ``vuln_imports`` row)."""

    id: int
    kind: str
    name: str
    total: int
    added: int
    updated: int
    unchanged: int
    skipped: int
    problems: list[dict[str, str]]
    findings_new: int
    findings_closed: int
    unevaluable: int


def _iter_records(kind: str, path: Path) -> Iterator[AdvisoryRecord | SkippedRecord]:
    if kind == "osv":
        yield from feeds.iter_osv(path)
        return
    data = _read_limited(path, feeds.MAX_NVD_BYTES)
    advisories, errors = feeds.parse_nvd(data, where=path.name)
    yield from errors
    yield from advisories


def _read_limited(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise PayloadTooLargeError(f"{path.name}: a feed file of this kind is limited to "
                                       f"{limit} bytes")  # fmt: skip
        return path.read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path.name}: {exc.strerror}") from exc


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(path.rglob("*.json")):
            if not p.is_file():  # a FIFO or a device would block the read
                continue
            h.update(p.name.encode())
            h.update(p.read_bytes())
        return h.hexdigest()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_file(path: Path) -> os.stat_result:
    """A directory or a regular file (a FIFO or a device would block a read)."""
    try:
        st = path.stat()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path.name}: {exc.strerror}") from exc
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        raise InvalidInputError(f"{path.name} is not a regular file or a directory")
    return st


def detect_kind(path: Path) -> str:
    """The kind of feed a file is (``osv`` for a directory)."""
    if stat.S_ISDIR(_check_file(path).st_mode):
        return "osv"
    try:
        with path.open("rb") as fh:
            head = fh.read(feeds.MAX_HEAD_BYTES)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path.name}: {exc.strerror}") from exc
    return feeds.detect_kind(path.name, head)


def import_feed(
    session: Session,
    principal: Principal,
    path: Path,
    *,
    kind: str | None = None,
    name: str | None = None,
    now: dt.datetime | None = None,
    progress: Progress | None = None,
) -> ImportReport:
    """Import one downloaded feed file (or OSV directory), incrementally.

    Raises:
        InvalidInputError: an unknown kind, or a file that is not that feed at all.
        PayloadTooLargeError: a file over its kind's limit.
    """
    scope.authorize(principal, scope.VULN_IMPORT)
    now = now or utcnow()
    _check_file(path)
    kind = kind or detect_kind(path)
    if kind not in FEED_KINDS:
        raise InvalidInputError(f"unknown feed kind {kind!r}: one of {', '.join(FEED_KINDS)}")
    tenant_id = principal.tenant_id
    row = FeedImport(
        tenant_id=tenant_id, kind=kind, name=(name or path.name)[:256], digest=_digest(path),
        actor=principal.actor, started_at=now, finished_at=now,
    )  # fmt: skip
    session.add(row)
    session.flush()
    errors: list[SkippedRecord] = []
    counts = _store.UpsertCounts()
    total = 0
    outcome = MatchOutcome()
    if kind in ("osv", "nvd"):
        batch: list[AdvisoryRecord] = []
        for rec in _iter_records(kind, path):
            total += 1
            if isinstance(rec, SkippedRecord):
                errors.append(rec)
                continue
            batch.append(rec)
            if len(batch) >= BATCH:
                _store.store_advisories(session, tenant_id, batch, import_id=row.id, counts=counts)
                batch = []
                if progress is not None:
                    progress(total)
        _store.store_advisories(session, tenant_id, batch, import_id=row.id, counts=counts)
        if progress is not None:
            progress(total)
        if total == len(errors):  # nothing readable: refused whole, nothing recorded
            first = f" ({errors[0].where}: {errors[0].reason})" if errors else ""
            raise InvalidInputError(f"{row.name}: no readable {kind.upper()} record in it{first}")
        outcome = reconcile(session, tenant_id, advisory_pks=counts.changed_pks, now=now)
    elif kind == "kev":
        entries, errs = feeds.parse_kev(_read_limited(path, feeds.MAX_KEV_BYTES))
        errors.extend(errs)
        total = len(entries) + len(errs)
        counts.added, counts.updated, counts.unchanged, _ = _store.store_kev(
            session, tenant_id, entries, now=now
        )
    else:
        scores, errs = feeds.parse_epss(_read_limited(path, feeds.MAX_EPSS_BYTES))
        errors.extend(errs)
        total = len(scores) + len(errs)
        counts.added, counts.updated, counts.unchanged = _store.store_epss(
            session, tenant_id, scores
        )
    result = _after_match(
        session, tenant_id, now=now,
        advisories=counts.changed_pks if kind in ("osv", "nvd") else None,
    )  # fmt: skip
    row.total, row.added, row.updated, row.unchanged = (
        total,
        counts.added,
        counts.updated,
        (counts.unchanged),
    )
    row.skipped = len(errors)
    row.problems = _problems(errors)
    row.findings_new = len(outcome.new)
    row.findings_closed = outcome.closed + len(result.remediated)
    row.finished_at = utcnow() if now is None else now
    audit.append(
        session,
        actor=principal.actor,
        action="vulns.import",
        subject=f"vuln-import:{row.id}",
        tenant_id=tenant_id,
        details={
            "kind": kind, "name": row.name, "sha256": row.digest, "total": total,
            "added": counts.added, "updated": counts.updated, "skipped": len(errors),
            "findings_new": row.findings_new, "findings_closed": row.findings_closed,
        },
        now=now,
    )  # fmt: skip
    return ImportReport(
        id=row.id, kind=kind, name=row.name, total=total, added=counts.added,
        updated=counts.updated, unchanged=counts.unchanged, skipped=len(errors),
        problems=json.loads(row.problems), findings_new=row.findings_new,
        findings_closed=row.findings_closed, unevaluable=outcome.unevaluable,
    )  # fmt: skip


def rematch_all(session: Session, tenant_id: int, *, now: dt.datetime) -> MatchOutcome:
    """Match every indexed release again (after a matcher change)."""
    ids = list(
        session.execute(
            select(SbomIndex.release_id).where(
                SbomIndex.tenant_id == tenant_id, SbomIndex.status == "indexed"
            )
        ).scalars()
    )
    outcome = reconcile(session, tenant_id, release_ids=ids, now=now)
    _after_match(session, tenant_id, now=now)
    return outcome


def list_imports(session: Session, principal: Principal, *, limit: int = 50) -> list[FeedImport]:
    """The tenant's imports, newest first."""
    scope.authorize(principal, scope.VULN_READ)
    return list(
        session.execute(
            select(FeedImport)
            .where(FeedImport.tenant_id == principal.tenant_id)
            .order_by(FeedImport.id.desc())
            .limit(limit)
        ).scalars()
    )


def get_import(session: Session, principal: Principal, import_id: int) -> FeedImport:
    """One import of the tenant."""
    scope.authorize(principal, scope.VULN_READ)
    row = session.get(FeedImport, import_id)
    if row is None or row.tenant_id != principal.tenant_id:
        raise NotFoundError(f"no import {import_id}")
    return row
