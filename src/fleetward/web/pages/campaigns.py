"""Console pages: campaigns, one campaign's waves and gates, a release's reviews.

- ``/console/campaigns``: the tenant's campaigns, newest first, a page at a
  time (``before``: the last id of the previous page), filtered by state.
- ``/console/campaigns/{id}``: the waves with their devices per state, the
  current wave's health gate, the reason of a halt, the release's controls
  review, and the actions the viewer's role allows: resume and abort
  (``POST /api/v1/campaigns/{id}/state``), run the review, waive it
  (security operators, with a reason), approve an emergency campaign.
- ``/console/releases/{id}``: a release, its campaigns and its reviews.

Every read goes through the ota face with the viewer's principal, so
another tenant's campaign or release is a 404 page; query parameters are
checked here (:func:`query_id`, :func:`query_choice`) and a bad one is a 400
page.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from fleetward import ota
from fleetward.errors import InvalidInputError
from fleetward.tenancy import scope
from fleetward.web._page import show
from fleetward.web._params import query_choice, query_id
from fleetward.web._viewer import Viewer, ViewerDep

__all__ = ["PAGE", "router"]

router = APIRouter(include_in_schema=False)

PAGE = 50  # campaigns per page
STATUS_COLOURS = {
    "planned": "#8c959f",
    "offered": "#3b6ea5",
    "installed": "#9a6700",
    "succeeded": "#1a7f37",
    "failed": "#cf222e",
    "aborted": "#59636e",
}


@router.get("/console/campaigns")
def campaigns(request: Request, who: ViewerDep) -> HTMLResponse:
    """The tenant's campaigns, newest first."""
    q = request.query_params

    def load(session: Session) -> dict[str, Any]:
        state = query_choice(q.get("state"), "state", ota.CAMPAIGN_STATES)
        before = query_id(q.get("before"), "before")
        rows = ota.list_campaigns(
            session, who.principal, state=state, before=before, limit=PAGE + 1
        )
        next_url = None
        if len(rows) > PAGE:
            rows = rows[:PAGE]
            extra = f"&state={state}" if state else ""
            next_url = f"/console/campaigns?before={rows[-1].id}{extra}"
        return {
            "rows": rows,
            "state": state or "",
            "states": ota.CAMPAIGN_STATES,
            "next_url": next_url,
        }

    return show(request, who, "campaigns.html", load)


@router.get("/console/campaigns/{campaign_id}")
def campaign(request: Request, who: ViewerDep, campaign_id: str) -> HTMLResponse:
    """One campaign: waves, gates, the halt's reason, the review, and actions."""

    def load(session: Session) -> dict[str, Any]:
        cid = query_id(campaign_id, "campaign")
        if cid is None:
            raise InvalidInputError("campaign: a positive integer id")
        st = ota.campaign_status(session, who.principal, cid)
        c, r = st.campaign, st.release
        latest = ota.latest_review(session, c.id)
        review = ota.review_dict(latest) if latest is not None else None
        totals = {s: sum(w.statuses.get(s, 0) for w in st.waves) for s in ota.DEVICE_STATUSES}
        gated = not c.emergency and len(st.waves) > 1
        return {
            "c": c,
            "r": r,
            "waves": st.waves,
            "gate": st.gate,
            "review_open": st.review_open,
            "gated": gated,
            "review": review,
            "approvals": json.loads(c.approvals),
            "statuses": ota.DEVICE_STATUSES,
            "chart": [(s, n, STATUS_COLOURS.get(s, "#3b6ea5")) for s, n in totals.items() if n],
            "can": _actions(who, c.state, gated=gated, review=review, review_open=st.review_open),
            "effects": _effects(c.id, c.current_wave, r.product, r.version, review),
        }

    return show(request, who, "campaign.html", load)


def _actions(
    who: Viewer, state: str, *, gated: bool, review: dict[str, Any] | None, review_open: bool
) -> dict[str, bool]:
    """Which actions to offer: what the role allows and the campaign's state admits
    (the API decides all the same)."""
    security = who.principal.role == "security"
    return {
        "resume": state == "halted" and who.can(scope.CAMPAIGN_MANAGE),
        "abort": state not in ("aborted", "completed") and who.can(scope.CAMPAIGN_MANAGE),
        "approve": state == "awaiting-approval" and security and who.can(scope.CAMPAIGN_APPROVE),
        "review": gated and state == "running" and who.can(scope.RELEASE_REVIEW),
        "waive": gated
        and state == "running"
        and security
        and not review_open
        and review is not None
        and review["outcome"] == "failed"
        and who.can(scope.RELEASE_REVIEW_WAIVE),
    }


def _effects(
    cid: int, wave: int, product: str, version: str, review: dict[str, Any] | None
) -> dict[str, str]:
    """What each dangerous action does, stated in its confirmation."""
    failed = [i["name"] for i in review["items"] if not i["ok"]] if review else []
    return {
        "resume": (
            f"Resume campaign {cid}: wave {wave + 1}'s failures are accepted and the campaign "
            f"goes on to offer {product} {version} to the next wave's devices."
        ),
        "abort": (
            f"Abort campaign {cid}: release {product} {version} is withdrawn; the devices "
            "that were offered it or installed it are told to fall back to their previous "
            "firmware, and no other device gets it. This cannot be undone."
        ),
        "approve": (
            f"Approve emergency campaign {cid}: with the second approval, {product} {version} "
            "is offered to every device of the cohort at once."
        ),
        "waive": (
            f"Waive the failed controls review of {product} {version} "
            f"(failed: {', '.join(failed) or 'none'}): campaign {cid} may then go past its "
            "first wave. The waiver and its reason are kept with the release and audited."
        ),
    }


@router.get("/console/releases/{release_id}")
def release(request: Request, who: ViewerDep, release_id: str) -> HTMLResponse:
    """A release, its campaigns, and its controls reviews (newest first)."""

    def load(session: Session) -> dict[str, Any]:
        rid = query_id(release_id, "release")
        if rid is None:
            raise InvalidInputError("release: a positive integer id")
        scope.authorize(who.principal, scope.RELEASE_READ)
        r = ota.get_release(session, who.principal, rid)
        reviews = [ota.review_dict(x) for x in ota.reviews_of_release(session, who.principal, rid)]
        camps = ota.campaigns_of_releases(session, who.principal.tenant_id, [rid]).get(rid, [])
        return {
            "r": r,
            "hardware": json.loads(r.hardware),
            "reviews": reviews,
            "campaigns": camps[:PAGE],
            "more_campaigns": len(camps) > PAGE,
        }

    return show(request, who, "campaign_release.html", load)
