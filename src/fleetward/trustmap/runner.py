"""The trust map worker's round: review campaigns at the gate, check maps.

Run by the runtime's ``trustmap`` worker under a lease (one host). Each
step commits on its own, so a failing map or campaign does not hold the
others back.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from fleetward.store import Database, utcnow
from fleetward.trustmap import maps, review

__all__ = ["RoundOutcome", "check_maps", "review_gates"]


@dataclass
class RoundOutcome:
    """What a round did."""

    reviewed: int = 0
    checked: int = 0


def review_gates(db: Database, *, now: dt.datetime | None = None) -> int:
    """Review every campaign waiting after its first wave; returns how many."""
    with db.session() as s:
        return review.review_round(s, now=now or utcnow())


def check_maps(db: Database, *, now: dt.datetime | None = None) -> int:
    """Check every registered map against the live system (drifts alerted)."""
    with db.session() as s:
        return maps.check_round(s, now=now or utcnow())
