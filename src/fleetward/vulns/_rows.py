"""The advisories and components findings point to, read in chunks.

Every listing, refresh, review and VEX document reads the advisory and the
component of many findings at once: one chunked ``IN (...)`` query per
table, under the bound-parameter limits of SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward.vulns.models import Advisory, Finding, SbomComponent

__all__ = ["advisories_of", "components_of"]

_CHUNK = 5000


def advisories_of(session: Session, findings: Iterable[Finding]) -> dict[int, Advisory]:
    """The advisory of each finding, by its key."""
    keys = sorted({f.advisory_pk for f in findings})
    out: dict[int, Advisory] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        out.update(
            (a.id, a)
            for a in session.execute(select(Advisory).where(Advisory.id.in_(chunk))).scalars()
        )
    return out


def components_of(session: Session, findings: Iterable[Finding]) -> dict[int, SbomComponent]:
    """The component of each finding, by its key."""
    keys = sorted({f.component_pk for f in findings})
    out: dict[int, SbomComponent] = {}
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        out.update(
            (c.id, c)
            for c in session.execute(
                select(SbomComponent).where(SbomComponent.id.in_(chunk))
            ).scalars()
        )
    return out
