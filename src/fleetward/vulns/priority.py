"""Prioritisation of vulnerability findings, with the reasons (pure).

A finding (an advisory matched to a component of a release) gets a
:class:`Priority`: a level ``P1`` (most urgent) to ``P4``, a due date, a
deterministic sort ``rank`` and the sentences that explain it. The inputs are
:class:`Signals` (severity, CVSS, CISA KEV, FIRST EPSS, exposure) and a
tenant's :class:`PriorityPolicy`; ``first_seen`` is passed in, the clock is
never read.

The rules, applied in order (:func:`prioritise` reports which ones applied):

1. **Known exploitation on deployed devices is P1.** A finding whose CVE is
   KEV listed, or that an operator marked exploited, and that at least one
   device runs, is P1 whatever its severity: exploitation is evidence, the
   other signals are estimates.
2. **The base level follows the severity**: critical is P1, high P2, medium
   and unknown P3, low and none P4. ``unknown`` (no CVSS yet, as for a fresh
   NVD record) counts as medium so it is neither ignored nor inflated; when
   the severity is unknown but a CVSS score is given, the score's CVSS v3
   band is used.
3. **Likely exploitation raises the level by one** (high becomes P1): an
   EPSS probability at or above ``epss_high`` or a percentile at or above
   ``epss_percentile_high``.
4. **Only non-production devices lower it by one** (a critical finding that
   only test or drill devices run is P2): those fleets are smaller and
   closer to their operators, but still reachable, so one step, no more.
5. **Not deployed is at most P3.** A finding that no device runs is still
   tracked (a release can be rolled out again) but never urgent. A known
   exploited finding that no device runs is exactly P3, so it stays in view.

The due date is ``first_seen`` plus the policy's days for the level (P1 uses
the critical days, P2 high, P3 medium, P4 low). For a KEV listed finding on
deployed devices, CISA's due date (the end of that day, UTC) wins when it is
earlier, **unless it had already passed when the finding was first seen**:
a deadline that is over at the moment of discovery gives nobody time to act
and would fill the overdue list with old catalogue entries, hiding the work
that really is late; the policy's critical days apply instead and a reason
says so.

The ``rank`` orders findings across levels: each level has its own band of
1000 (P1 highest) and within it known exploitation, the CVSS score, the EPSS
probability and the number of devices (logarithmically, production first)
add up to less than 1000, so a P2 never outranks a P1. :func:`order` sorts
by rank, then due date, then id, so the order is total and reproducible.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from fleetward.errors import InvalidInputError
from fleetward.vulns.records import SEVERITIES

__all__ = [
    "DEFAULT_CRITICAL_DAYS",
    "DEFAULT_EPSS_HIGH",
    "DEFAULT_EPSS_PERCENTILE_HIGH",
    "DEFAULT_HIGH_DAYS",
    "DEFAULT_LOW_DAYS",
    "DEFAULT_MEDIUM_DAYS",
    "LEVELS",
    "MAX_DUE_DAYS",
    "Priority",
    "PriorityPolicy",
    "Signals",
    "order",
    "overdue",
    "prioritise",
]

Level = Literal["P1", "P2", "P3", "P4"]
LEVELS: tuple[Level, ...] = ("P1", "P2", "P3", "P4")

# Remediation days per level. Issue 16 names 15 days for critical; the others
# follow common vulnerability-management practice and are configurable.
DEFAULT_CRITICAL_DAYS = 15
DEFAULT_HIGH_DAYS = 30
DEFAULT_MEDIUM_DAYS = 90
DEFAULT_LOW_DAYS = 180
# A policy is operator input: ten years is the longest due period accepted.
MAX_DUE_DAYS = 3650
# EPSS "likely exploitation": a 10 % probability of exploitation within 30
# days is in the top few percent of all CVEs; the percentile catches the rest.
DEFAULT_EPSS_HIGH = 0.1
DEFAULT_EPSS_PERCENTILE_HIGH = 0.95
# Device counts come from the registry; a count beyond this is a bug upstream.
MAX_DEVICES = 10_000_000

_LEVEL_DAYS = {"P1": "critical_days", "P2": "high_days", "P3": "medium_days", "P4": "low_days"}
_BASE_LEVEL = {"critical": 1, "high": 2, "medium": 3, "unknown": 3, "low": 4, "none": 4}
_BAND = 1000.0


@dataclass(frozen=True)
class PriorityPolicy:
    """A tenant's prioritisation policy: due days per level and the EPSS thresholds.

    Raises:
        InvalidInputError: a day count is not an integer in 1..MAX_DUE_DAYS, the
            days do not grow from critical to low, or a threshold is outside [0, 1].
    """

    critical_days: int = DEFAULT_CRITICAL_DAYS
    high_days: int = DEFAULT_HIGH_DAYS
    medium_days: int = DEFAULT_MEDIUM_DAYS
    low_days: int = DEFAULT_LOW_DAYS
    epss_high: float = DEFAULT_EPSS_HIGH
    epss_percentile_high: float = DEFAULT_EPSS_PERCENTILE_HIGH

    def __post_init__(self) -> None:
        days = (self.critical_days, self.high_days, self.medium_days, self.low_days)
        for name, value in zip(_LEVEL_DAYS.values(), days, strict=True):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInputError(f"{name} must be an integer")
            if not 1 <= value <= MAX_DUE_DAYS:
                raise InvalidInputError(f"{name} must be between 1 and {MAX_DUE_DAYS}")
        if list(days) != sorted(days):
            raise InvalidInputError("due days must not shrink from critical to low")
        for name in ("epss_high", "epss_percentile_high"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInputError(f"{name} must be a number")
            if not 0.0 <= value <= 1.0:
                raise InvalidInputError(f"{name} must be between 0 and 1")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PriorityPolicy:
        """Build a policy from a configuration mapping; missing keys take the defaults.

        Raises:
            InvalidInputError: the mapping is not one, has an unknown key, or a
                value is invalid.
        """
        if not isinstance(data, Mapping):
            raise InvalidInputError("a priority policy must be a mapping")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise InvalidInputError(f"unknown priority policy keys: {', '.join(unknown)}")
        return cls(**dict(data))

    def days(self, level: Level) -> int:
        """The due period in days of a level."""
        value: int = getattr(self, _LEVEL_DAYS[level])
        return value


@dataclass(frozen=True)
class Signals:
    """What is known about one finding.

    ``kev_added`` is None when the CVE is not KEV listed; ``kev_due`` is
    CISA's due date (None when the catalogue gives none). ``devices`` run
    the affected release now, ``production_devices`` of them in production.

    Raises:
        TypeError: a field has the wrong type.
        ValueError: a value is out of range or inconsistent.
    """

    severity: str
    cvss_score: float | None = None
    kev_due: dt.date | None = None
    kev_added: dt.date | None = None
    epss: float | None = None
    percentile: float | None = None
    devices: int = 0
    production_devices: int = 0
    exploited_by_operator: bool = False

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")
        for name in ("cvss_score", "epss", "percentile"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"{name} must be a number")
            top = 10.0 if name == "cvss_score" else 1.0
            if not 0.0 <= value <= top:
                raise ValueError(f"{name} must be between 0 and {top:g}")
        for name in ("devices", "production_devices"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer")
            if not 0 <= value <= MAX_DEVICES:
                raise ValueError(f"{name} must be between 0 and {MAX_DEVICES}")
        if self.production_devices > self.devices:
            raise ValueError("production devices are a subset of devices")
        if self.kev_due is not None and self.kev_added is None:
            raise ValueError("a KEV due date needs the date the CVE was added")
        if not isinstance(self.exploited_by_operator, bool):
            raise TypeError("exploited_by_operator must be a bool")

    @property
    def kev_listed(self) -> bool:
        """Whether the CVE is in CISA's KEV catalogue."""
        return self.kev_added is not None

    @property
    def exploited(self) -> bool:
        """Known exploitation: KEV listed or marked exploited by an operator."""
        return self.kev_listed or self.exploited_by_operator

    @property
    def effective_severity(self) -> str:
        """The severity, or the CVSS v3 band of the score when the severity is unknown."""
        if self.severity != "unknown" or self.cvss_score is None:
            return self.severity
        return _cvss_band(self.cvss_score)


@dataclass(frozen=True)
class Priority:
    """The decision: level, sort rank (higher first), due date (UTC) and why."""

    level: Level
    rank: float
    due: dt.datetime
    reasons: tuple[str, ...]


def prioritise(signals: Signals, *, policy: PriorityPolicy, first_seen: dt.datetime) -> Priority:
    """Decide a finding's priority by the numbered rules of this module.

    Args:
        signals: what is known about the finding.
        policy: the tenant's policy.
        first_seen: when fleetward first saw the finding (timezone-aware).

    Returns:
        The level, rank, due date (UTC) and the reasons, most important first.

    Raises:
        ValueError: ``first_seen`` is naive.
    """
    if first_seen.tzinfo is None or first_seen.utcoffset() is None:
        raise ValueError("first_seen must be timezone-aware")
    seen = first_seen.astimezone(dt.UTC)
    reasons: list[str] = []
    severity = signals.effective_severity
    likely = _likely(signals, policy)

    if signals.kev_added is not None:
        due_text = f"CISA due {signals.kev_due.isoformat()}" if signals.kev_due else "no CISA due"
        reasons.append(f"KEV listed since {signals.kev_added.isoformat()}, {due_text}")
    if signals.exploited_by_operator:
        reasons.append("an operator marked it exploited")
    if signals.epss is not None or signals.percentile is not None:
        reasons.append(_epss_text(signals) + (" (likely exploitation)" if likely else ""))
    reasons.append(_severity_text(signals, severity))
    reasons.append(_exposure_text(signals))

    if signals.exploited and signals.devices > 0:
        number = 1
        reasons.append("rule 1: known exploitation on deployed devices: P1")
    elif signals.exploited:
        number = 3
        reasons.append("rule 5: known exploitation but not deployed: P3")
    else:
        number = _BASE_LEVEL[severity]
        reasons.append(f"rule 2: {severity} severity: P{number}")
        if likely and number > 1:
            number -= 1
            reasons.append(f"rule 3: likely exploitation raises it to P{number}")
        if signals.devices > 0 and signals.production_devices == 0 and number < 4:
            number += 1
            reasons.append(f"rule 4: no production device runs it: P{number}")
        if signals.devices == 0 and number < 3:
            number = 3
            reasons.append("rule 5: not deployed: at most P3")
    level = LEVELS[number - 1]

    due = seen + dt.timedelta(days=policy.days(level))
    due_reason = f"due {due.date().isoformat()}: {policy.days(level)} days for {level}"
    if signals.kev_due is not None and signals.devices > 0:
        kev_due = dt.datetime.combine(signals.kev_due, dt.time(23, 59, 59), dt.UTC)
        if kev_due < seen:
            due_reason += f" (the CISA due date {signals.kev_due.isoformat()} passed before"
            due_reason += " the finding was seen)"
        elif kev_due < due:
            due = kev_due
            due_reason = f"due {signals.kev_due.isoformat()}: the CISA KEV due date"
    reasons.append(due_reason)
    return Priority(level=level, rank=_rank(number, signals), due=due, reasons=tuple(reasons))


def overdue(priority_due: dt.datetime, now: dt.datetime) -> bool:
    """Whether ``now`` is past the due date (due at that instant is not overdue yet).

    Raises:
        ValueError: either datetime is naive.
    """
    if priority_due.tzinfo is None or now.tzinfo is None:
        raise ValueError("due and now must be timezone-aware")
    return now > priority_due


def order(items: Iterable[tuple[str, Priority]]) -> list[tuple[str, Priority]]:
    """Sort (id, priority) pairs most urgent first: rank, then due date, then id."""
    return sorted(items, key=lambda item: (-item[1].rank, item[1].due, item[0]))


def _likely(signals: Signals, policy: PriorityPolicy) -> bool:
    if signals.epss is not None and signals.epss >= policy.epss_high:
        return True
    return signals.percentile is not None and signals.percentile >= policy.epss_percentile_high


def _cvss_band(score: float) -> str:
    # CVSS v3.x qualitative severity rating scale (FIRST, CVSS v3.1 section 5).
    if score >= 9.0:
        return "critical"
    if score >= 7.0:
        return "high"
    if score >= 4.0:
        return "medium"
    return "low" if score > 0.0 else "none"


def _rank(number: int, signals: Signals) -> float:
    # Within a band: exploitation 400, CVSS up to 300, EPSS up to 200, devices
    # up to 50 (production) + 20 (all): at most 970, below the band width.
    within = 400.0 if signals.exploited else 0.0
    within += 30.0 * (signals.cvss_score or 0.0)
    within += 200.0 * (signals.epss or 0.0)
    within += 10.0 * min(math.log10(1 + signals.production_devices), 5.0)
    within += 4.0 * min(math.log10(1 + signals.devices), 5.0)
    return round((4 - number) * _BAND + within, 6)


def _ordinal(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


def _epss_text(signals: Signals) -> str:
    parts = []
    if signals.epss is not None:
        parts.append(f"EPSS {signals.epss:.2g}")
    if signals.percentile is not None:
        pct = f"{_ordinal(math.floor(signals.percentile * 100))} percentile"
        parts.append(f"({pct})" if parts else f"EPSS {pct}")
    return " ".join(parts)


def _severity_text(signals: Signals, severity: str) -> str:
    if signals.cvss_score is not None:
        return f"CVSS {signals.cvss_score:.1f} {severity}"
    return f"severity {severity}, no CVSS score"


def _exposure_text(signals: Signals) -> str:
    if signals.devices == 0:
        return "no device runs it"
    runs = "1 device runs it" if signals.devices == 1 else f"{signals.devices} devices run it"
    prod = signals.production_devices
    return f"{runs}, {prod if prod else 'none'} in production"
