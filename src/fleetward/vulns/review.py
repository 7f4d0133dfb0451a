"""The periodic vulnerability review report (pure).

Vulnerability operations run on a rhythm: every review period a tenant looks
at what is **new**, what is **overdue**, what was **fixed** since the last
review, how many findings are **open** per priority, how the **exposure**
moved (devices that run at least one open finding, per environment, now and
at the last review) and which **CRA cases** are open with their next
deadline. The service gathers those facts into a :class:`ReviewData`;
:func:`render` turns it into Markdown for people and a JSON document for
archives and machines, from the same ordered data so the two never disagree.

Ordering is deterministic: findings by priority rank (higher first), then
id; CRA cases by next deadline (cases without one last), then id; counts by
level and environments by name. The JSON round-trips through ``json.dumps``
and dates are ISO 8601 in UTC. The Markdown lists at most
:data:`MAX_MARKDOWN_ROWS` findings per section (the JSON has them all) and
escapes table cells, since component names and summaries come from SBOMs and
feeds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fleetward.errors import InvalidInputError
from fleetward.vulns.priority import LEVELS

__all__ = ["MAX_MARKDOWN_ROWS", "CraCaseLine", "ReviewData", "ReviewFinding", "render"]

# A review is read by people: longer sections are cut in the Markdown (the
# JSON keeps every row).
MAX_MARKDOWN_ROWS = 200
# Cell text from SBOMs and feeds is cut to this many characters in tables.
MAX_CELL = 120


@dataclass(frozen=True)
class ReviewFinding:
    """One finding as the review lists it."""

    id: str
    advisory: str
    component: str  # e.g. "openssl 3.0.1"
    release: str  # e.g. "gateway 2.4.0"
    level: str  # P1..P4
    rank: float
    due: dt.datetime | None = None
    devices: int = 0
    production_devices: int = 0
    fixed_at: dt.datetime | None = None
    note: str = ""  # e.g. "KEV listed", "fixed by 2.4.1"

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown priority level {self.level!r}")
        for value in (self.due, self.fixed_at):
            if value is not None and value.tzinfo is None:
                raise ValueError("review datetimes must be timezone-aware")


@dataclass(frozen=True)
class CraCaseLine:
    """An open CRA Article 14 case and its next deadline (None when all are submitted)."""

    id: str
    advisories: tuple[str, ...]
    aware_at: dt.datetime
    next_kind: str | None = None
    next_due: dt.datetime | None = None
    submitted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.next_kind is None) != (self.next_due is None):
            raise ValueError("next_kind and next_due come together")
        for value in (self.aware_at, self.next_due):
            if value is not None and value.tzinfo is None:
                raise ValueError("review datetimes must be timezone-aware")


@dataclass
class ReviewData:
    """Everything one review reports, gathered by the service."""

    tenant: str
    period_start: dt.datetime
    period_end: dt.datetime
    new: list[ReviewFinding] = field(default_factory=list)
    overdue: list[ReviewFinding] = field(default_factory=list)
    fixed: list[ReviewFinding] = field(default_factory=list)
    open_by_priority: dict[str, int] = field(default_factory=dict)
    exposure_now: dict[str, int] = field(default_factory=dict)  # environment -> devices
    exposure_last: dict[str, int] = field(default_factory=dict)  # at the last review
    cra_cases: list[CraCaseLine] = field(default_factory=list)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat()


def _finding_key(f: ReviewFinding) -> tuple[float, str]:
    return (-f.rank, f.id)


def _finding_json(f: ReviewFinding) -> dict[str, Any]:
    return {
        "id": f.id,
        "advisory": f.advisory,
        "component": f.component,
        "release": f.release,
        "level": f.level,
        "rank": f.rank,
        "due": _iso(f.due),
        "devices": f.devices,
        "production_devices": f.production_devices,
        "fixed_at": _iso(f.fixed_at),
        "note": f.note,
    }


def _case_key(c: CraCaseLine) -> tuple[bool, dt.datetime, str]:
    far = dt.datetime.max.replace(tzinfo=dt.UTC)
    return (c.next_due is None, c.next_due or far, c.id)


def _validate(data: ReviewData) -> None:
    for name in ("period_start", "period_end"):
        value = getattr(data, name)
        if value.tzinfo is None or value.utcoffset() is None:
            raise InvalidInputError(f"{name} must be timezone-aware")
    if data.period_end < data.period_start:
        raise InvalidInputError("a review period ends after it starts")
    unknown = sorted(k for k in data.open_by_priority if k not in LEVELS)
    if unknown:
        raise InvalidInputError(f"unknown priority levels: {', '.join(unknown)}")
    counts = [*data.open_by_priority.values(), *data.exposure_now.values()]
    counts += data.exposure_last.values()
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in counts):
        raise InvalidInputError("counts are non-negative integers")


def render(data: ReviewData) -> tuple[str, dict[str, Any]]:
    """Render a review as Markdown and as a JSON-ready dict.

    Args:
        data: the review's facts.

    Returns:
        ``(markdown, document)``; ``json.dumps(document)`` works and loads
        back equal.

    Raises:
        InvalidInputError: naive or reversed period, unknown level, or a
            negative count.
    """
    _validate(data)
    new = sorted(data.new, key=_finding_key)
    overdue = sorted(data.overdue, key=_finding_key)
    fixed = sorted(data.fixed, key=_finding_key)
    cases = sorted(data.cra_cases, key=_case_key)
    envs = sorted(set(data.exposure_now) | set(data.exposure_last))
    exposure = {
        env: {
            "now": data.exposure_now.get(env, 0),
            "last_review": data.exposure_last.get(env, 0),
            "change": data.exposure_now.get(env, 0) - data.exposure_last.get(env, 0),
        }
        for env in envs
    }
    total_now = sum(data.exposure_now.values())
    total_last = sum(data.exposure_last.values())
    doc: dict[str, Any] = {
        "tenant": data.tenant,
        "period": {"start": _iso(data.period_start), "end": _iso(data.period_end)},
        "summary": {
            "new": len(new),
            "overdue": len(overdue),
            "fixed": len(fixed),
            "open": sum(data.open_by_priority.values()),
        },
        "open_by_priority": {lv: data.open_by_priority.get(lv, 0) for lv in LEVELS},
        "exposure": {
            "by_environment": exposure,
            "total": {
                "now": total_now,
                "last_review": total_last,
                "change": total_now - total_last,
            },
        },
        "new": [_finding_json(f) for f in new],
        "overdue": [_finding_json(f) for f in overdue],
        "fixed": [_finding_json(f) for f in fixed],
        "cra_cases": [
            {
                "id": c.id,
                "advisories": list(c.advisories),
                "aware_at": _iso(c.aware_at),
                "next_report": c.next_kind,
                "next_due": _iso(c.next_due),
                "submitted": sorted(c.submitted),
            }
            for c in cases
        ],
    }
    return _markdown(doc), doc


def _cell(value: object) -> str:
    text = " ".join(("" if value is None else str(value)).split())
    if len(text) > MAX_CELL:
        text = text[: MAX_CELL - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _findings(title: str, items: list[dict[str, Any]], when: str) -> list[str]:
    lines = ["", f"## {title} ({len(items)})", ""]
    if not items:
        return [*lines, "None."]
    header = ("Level", "Advisory", "Component", "Release", "Devices (production)", when, "Note")
    rows = [
        (
            f["level"],
            f["advisory"],
            f["component"],
            f["release"],
            f"{f['devices']} ({f['production_devices']})",
            (f["fixed_at"] if when == "Fixed" else f["due"]) or "",
            f["note"],
        )
        for f in items[:MAX_MARKDOWN_ROWS]
    ]
    lines += _table(header, rows)
    if len(items) > MAX_MARKDOWN_ROWS:
        lines += ["", f"… and {len(items) - MAX_MARKDOWN_ROWS} more (see the JSON report)."]
    return lines


def _markdown(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    lines = [
        f"# Vulnerability review: {_cell(doc['tenant'])}",
        "",
        f"Period {doc['period']['start']} to {doc['period']['end']}.",
        "",
        f"- New findings: {s['new']}",
        f"- Overdue: {s['overdue']}",
        f"- Fixed since the last review: {s['fixed']}",
        f"- Open: {s['open']} ("
        + ", ".join(f"{lv} {n}" for lv, n in doc["open_by_priority"].items())
        + ")",
        "",
        "## Exposure (devices running at least one open finding)",
        "",
    ]
    rows = [
        (env, e["now"], e["last_review"], f"{e['change']:+d}")
        for env, e in doc["exposure"]["by_environment"].items()
    ]
    total = doc["exposure"]["total"]
    rows.append(("total", total["now"], total["last_review"], f"{total['change']:+d}"))
    lines += _table(("Environment", "Now", "Last review", "Change"), rows)
    lines += _findings("New", doc["new"], "Due")
    lines += _findings("Overdue", doc["overdue"], "Due")
    lines += _findings("Fixed", doc["fixed"], "Fixed")
    lines += ["", f"## Open CRA cases ({len(doc['cra_cases'])})", ""]
    if doc["cra_cases"]:
        lines += _table(
            ("Case", "Advisories", "Aware since", "Next report", "Due", "Submitted"),
            [
                (
                    c["id"],
                    ", ".join(c["advisories"]),
                    c["aware_at"],
                    c["next_report"] or "all submitted",
                    c["next_due"] or "",
                    ", ".join(c["submitted"]),
                )
                for c in doc["cra_cases"]
            ],
        )
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"
