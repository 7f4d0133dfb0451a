"""The controls review gate: no campaign goes past its first wave unreviewed.

When a campaign's first (canary) wave passes its health gate, the campaign
waits until a **controls review** of its release passed or was waived. The
checklist is computed above this domain (the trust map's
``fleetward.trustmap.review`` reads the map and the live system and records
the result here with :func:`record_review`); this module keeps the reviews
with their release, decides the gate (:func:`gate_open`), and takes a
``security`` operator's waiver of a failed review (:func:`waive_review`,
audited, with its reason). Every review row stays: the release's history of
reviews is its evidence.

Emergency campaigns are one wave of 100% behind two security approvals:
there is no "after the first wave" for them, so the gate never applies.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward import audit
from fleetward.errors import ConflictError, InvalidInputError, PermissionDeniedError
from fleetward.ota.models import Campaign, ReleaseReview
from fleetward.ota.service import get_release
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

__all__ = [
    "OUTCOMES",
    "ReviewItem",
    "campaigns_at_review_gate",
    "gate_open",
    "latest_review",
    "record_review",
    "review_dict",
    "reviewable",
    "reviews_of_release",
    "waive_review",
]

OUTCOMES = ("passed", "failed", "waived")
MAX_ITEMS = 64  # checklist items of one review (the checklist has a handful)
MAX_DETAIL = 2000  # characters of one item's detail
MAX_REASON = 2000  # characters of a waiver's reason
OPEN = ("passed", "waived")  # outcomes that let a campaign past its first wave
# The campaign's reason while it waits at the gate.
WAITING = "wave 1 passed; waiting for the release's controls review"


@dataclass(frozen=True)
class ReviewItem:
    """One line of the checklist: what was checked, whether it held, and why."""

    name: str
    ok: bool
    detail: str

    def __post_init__(self) -> None:
        if not self.name or len(self.name) > 64:
            raise InvalidInputError("a review item's name has 1-64 characters")
        if len(self.detail) > MAX_DETAIL:
            raise InvalidInputError(f"a review item's detail has at most {MAX_DETAIL} characters")


def _waves(c: Campaign) -> list[float]:
    waves: list[float] = json.loads(c.waves)
    return waves


def reviewable(c: Campaign) -> None:
    """Refuse to review (or waive) a campaign that has no gate, or no gate any more.

    Raises:
        ConflictError: an emergency or one-wave campaign, or one not running.
    """
    if c.emergency or len(_waves(c)) < 2:
        raise ConflictError(
            f"campaign {c.id} has one wave (an emergency campaign: two security approvals): "
            "there is no controls review gate"
        )
    if c.state != "running":
        raise ConflictError(f"campaign {c.id} is {c.state}: only a running campaign is reviewed")


def latest_review(session: Session, campaign_id: int) -> ReleaseReview | None:
    """The newest review recorded for the campaign (None: none yet)."""
    return session.scalars(
        select(ReleaseReview)
        .where(ReleaseReview.campaign_id == campaign_id)
        .order_by(ReleaseReview.id.desc())
        .limit(1)
    ).first()


def gate_open(session: Session, c: Campaign) -> bool:
    """Whether the campaign may start its second wave: its newest review passed,
    or one was waived."""
    if c.emergency or len(_waves(c)) < 2:
        return True
    review = latest_review(session, c.id)
    if review is not None and review.outcome in OPEN:
        return True
    # A waiver stands for its campaign: a later review that fails is kept as
    # history but does not close the gate again.
    waived = session.scalar(
        select(ReleaseReview.id)
        .where(ReleaseReview.campaign_id == c.id, ReleaseReview.outcome == "waived")
        .limit(1)
    )
    return waived is not None


def campaigns_at_review_gate(session: Session, *, limit: int = 100) -> list[Campaign]:
    """Running campaigns in their first wave whose gate is not open yet (any tenant).

    The review worker reviews them; a campaign whose canary wave is still
    running is among them too, since "canary wave healthy" is an item of the
    checklist (it fails until the wave's health gate passes).
    """
    rows = session.scalars(
        select(Campaign)
        .where(
            Campaign.state == "running",
            Campaign.current_wave == 0,
            Campaign.emergency.is_(False),
        )
        .order_by(Campaign.id)
        .limit(limit * 4)
    ).all()
    return [c for c in rows if not gate_open(session, c)][:limit]


def record_review(
    session: Session,
    c: Campaign,
    *,
    items: list[ReviewItem],
    map_digest: str | None,
    now: dt.datetime | None = None,
) -> ReleaseReview:
    """Record a computed review of the campaign's release (``passed`` when every item held).

    A review identical to the newest one (same outcome, items and map) is
    not recorded again: the worker re-reviews every round, the history keeps
    changes. Audited as ``ota.review``.

    Raises:
        InvalidInputError: no items, or too many.
    """
    if not items or len(items) > MAX_ITEMS:
        raise InvalidInputError(f"a review has 1-{MAX_ITEMS} items")
    now = now or utcnow()
    outcome = "passed" if all(i.ok for i in items) else "failed"
    body = json.dumps(
        [{"name": i.name, "ok": i.ok, "detail": i.detail} for i in items], sort_keys=True
    )
    last = latest_review(session, c.id)
    if (
        last is not None
        and last.outcome == outcome
        and last.items == body
        and last.map_digest == map_digest
    ):
        return last
    review = ReleaseReview(
        tenant_id=c.tenant_id,
        release_id=c.release_id,
        campaign_id=c.id,
        outcome=outcome,
        items=body,
        map_digest=map_digest,
        actor="system",
        reason="",
        created_at=now,
    )
    session.add(review)
    session.flush()
    audit.append(
        session,
        actor="system",
        action="ota.review",
        subject=f"release:{c.release_id}",
        tenant_id=c.tenant_id,
        details={
            "review": review.id,
            "campaign": c.id,
            "outcome": outcome,
            "failed": [i.name for i in items if not i.ok],
            "map_digest": map_digest,
        },
        now=now,
    )
    return review


def waive_review(
    session: Session,
    principal: Principal,
    c: Campaign,
    *,
    reason: str,
    now: dt.datetime | None = None,
) -> ReleaseReview:
    """A ``security`` operator waives the campaign's failed review, with a reason.

    The waiver is a new review row (outcome ``waived``, the failed items
    kept) naming the operator; audited as ``ota.review.waive``.

    Raises:
        PermissionDeniedError: not a security operator.
        InvalidInputError: an empty or too long reason.
        ConflictError: no failed review to waive (none yet, or it passed).
    """
    scope.authorize(principal, scope.RELEASE_REVIEW_WAIVE)
    if principal.role != "security":
        raise PermissionDeniedError("controls reviews are waived by security operators")
    reason = reason.strip()
    if not reason or len(reason) > MAX_REASON:
        raise InvalidInputError(f"a waiver needs a reason of 1-{MAX_REASON} characters")
    if any(ch < " " and ch not in "\n\t" for ch in reason):
        raise InvalidInputError("a waiver's reason holds no control characters")
    if c.tenant_id != principal.tenant_id:
        raise RuntimeError("broken invariant, expected: the campaign is the principal's")
    reviewable(c)
    now = now or utcnow()
    last = latest_review(session, c.id)
    if last is None:
        raise ConflictError(f"campaign {c.id} has no controls review yet: run it first")
    if last.outcome != "failed":
        raise ConflictError(f"the controls review of campaign {c.id} is {last.outcome}")
    if gate_open(session, c):
        raise ConflictError(f"the controls review of campaign {c.id} was waived already")
    review = ReleaseReview(
        tenant_id=c.tenant_id,
        release_id=c.release_id,
        campaign_id=c.id,
        outcome="waived",
        items=last.items,
        map_digest=last.map_digest,
        actor=principal.actor,
        reason=reason,
        created_at=now,
    )
    session.add(review)
    session.flush()
    failed = [i["name"] for i in json.loads(last.items) if not i["ok"]]
    audit.append(
        session,
        actor=principal.actor,
        action="ota.review.waive",
        subject=f"release:{c.release_id}",
        tenant_id=c.tenant_id,
        details={"review": review.id, "campaign": c.id, "waived": failed, "reason": reason},
        now=now,
    )
    return review


def reviews_of_release(
    session: Session, principal: Principal, release_id: int, *, limit: int = 100
) -> list[ReleaseReview]:
    """The release's reviews, newest first.

    Raises:
        NotFoundError: no such release in the principal's tenant.
    """
    get_release(session, principal, release_id)  # tenant check, release.read
    return list(
        session.scalars(
            select(ReleaseReview)
            .where(ReleaseReview.release_id == release_id)
            .order_by(ReleaseReview.id.desc())
            .limit(limit)
        )
    )


def review_dict(r: ReleaseReview) -> dict[str, Any]:
    """A review as plain data (API and CLI)."""
    return {
        "id": r.id,
        "release_id": r.release_id,
        "campaign_id": r.campaign_id,
        "outcome": r.outcome,
        "items": json.loads(r.items),
        "map_digest": r.map_digest,
        "actor": r.actor,
        "reason": r.reason,
        "created_at": r.created_at,
    }
