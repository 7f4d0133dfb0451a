"""The EU Cyber Resilience Act Article 14 clock and report drafts (pure).

Regulation (EU) 2024/2847, Article 14(2): a manufacturer that becomes aware
of an **actively exploited vulnerability** in its product notifies it
(through the single reporting platform) with

(a) an **early warning** within 24 hours of becoming aware, indicating where
    applicable the Member States where the product has been made available;
(b) a **vulnerability notification** within 72 hours of becoming aware, with
    general information about the product, the general nature of the exploit
    and of the vulnerability, corrective or mitigating measures taken and
    that users can take, and how sensitive the manufacturer considers the
    information to be;
(c) a **final report** no later than 14 days after a corrective or mitigating
    measure is available: a description of the vulnerability including its
    severity and impact, information on any malicious actor where available,
    and details of the security update or other corrective measures.

:func:`deadlines` computes the three instants from ``aware_at`` (and the fix
date for the final report) in UTC: the periods are elapsed hours, so the
arithmetic is done on UTC instants and is unaffected by daylight-saving
changes in the caller's zone. :func:`alerts_due` says which reminders to
send (``due-soon`` within a lead time before a deadline, ``overdue`` after
it), each once. :func:`draft` assembles what fleetward knows for a report as
JSON and Markdown. It never invents: anything that needs a person's judgement
(the nature of the exploit, sensitivity, impact, the actor) is marked
:data:`TO_BE_COMPLETED`. Article 14(4)(a) asks severe-incident early
warnings whether an unlawful or malicious act is suspected; the early
warning draft carries that question too, for the manufacturer to answer.

Member States come from devices' **market labels**: a label that is an EU
Member State's ISO 3166 code counts as that state; ``EU`` says "somewhere in
the Union" and leaves the states to the manufacturer; other labels are
listed as markets outside the Union or unknown.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.vulns.records import SEVERITIES

__all__ = [
    "DEFAULT_LEAD",
    "EARLY_WARNING",
    "EU_MEMBER_STATES",
    "FINAL_AFTER_FIX",
    "NOTIFICATION",
    "REPORT_KINDS",
    "TO_BE_COMPLETED",
    "AffectedProduct",
    "CaseFacts",
    "Deadlines",
    "Draft",
    "alerts_due",
    "deadlines",
    "draft",
    "next_deadline",
]

EARLY_WARNING = dt.timedelta(hours=24)
NOTIFICATION = dt.timedelta(hours=72)
FINAL_AFTER_FIX = dt.timedelta(days=14)
REPORT_KINDS = ("early-warning", "notification", "final")
ALERT_STATES = ("due-soon", "overdue")
# Reminder lead times before each deadline (configurable per call).
DEFAULT_LEAD: Mapping[str, dt.timedelta] = {
    "early-warning": dt.timedelta(hours=6),
    "notification": dt.timedelta(hours=12),
    "final": dt.timedelta(days=3),
}
TO_BE_COMPLETED = "TO BE COMPLETED BY THE MANUFACTURER"
# ISO 3166-1 alpha-2 codes of the 27 Member States; Greece also as "EL", the
# code EU institutions use.
_EU_CODES = "AT BE BG CY CZ DE DK EE EL ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK"
EU_MEMBER_STATES = frozenset(_EU_CODES.split())

# Limits on case facts, which come from operators and feeds: a draft is read
# by people and pasted into a form, so anything beyond these is refused.
MAX_TEXT = 8_000  # characters of the summary
MAX_SHORT = 256  # characters of a name, id, version, label or trigger
MAX_ITEMS = 200  # entries of any list or mapping
MAX_LEAD = dt.timedelta(days=30)


@dataclass(frozen=True)
class Deadlines:
    """The Article 14 deadlines of one case, in UTC (``final`` None until a fix exists)."""

    aware_at: dt.datetime
    early_warning: dt.datetime
    notification: dt.datetime
    final: dt.datetime | None
    fix_available_at: dt.datetime | None = None

    def due(self, kind: str) -> dt.datetime | None:
        """The deadline of a report kind (one of :data:`REPORT_KINDS`)."""
        if kind not in REPORT_KINDS:
            raise ValueError(f"unknown report kind {kind!r}")
        return {
            "early-warning": self.early_warning,
            "notification": self.notification,
            "final": self.final,
        }[kind]


def _utc(name: str, value: dt.datetime) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{name} must be a datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
    return value.astimezone(dt.UTC)


def deadlines(*, aware_at: dt.datetime, fix_available_at: dt.datetime | None) -> Deadlines:
    """Compute the Article 14(2) deadlines of a case.

    Args:
        aware_at: when the manufacturer became aware of the exploitation.
        fix_available_at: when a corrective or mitigating measure became
            available, or None.

    Returns:
        The deadlines in UTC.

    Raises:
        ValueError: a datetime is naive.
    """
    aware = _utc("aware_at", aware_at)
    fix = None if fix_available_at is None else _utc("fix_available_at", fix_available_at)
    # A fix can exist before the case does (the vulnerability was patched,
    # then found exploited in old releases); the final report is then due 14
    # days after awareness at the earliest, since it cannot precede the case.
    final = None if fix is None else max(fix, aware) + FINAL_AFTER_FIX
    return Deadlines(
        aware_at=aware,
        early_warning=aware + EARLY_WARNING,
        notification=aware + NOTIFICATION,
        final=final,
        fix_available_at=fix,
    )


def next_deadline(
    deadlines: Deadlines, *, submitted: frozenset[str]
) -> tuple[str, dt.datetime] | None:
    """The earliest deadline of a report not yet submitted, or None."""
    pending = [
        (due, kind)
        for kind in REPORT_KINDS
        if kind not in submitted and (due := deadlines.due(kind)) is not None
    ]
    if not pending:
        return None
    due, kind = min(pending)
    return kind, due


def alerts_due(
    deadlines: Deadlines,
    *,
    submitted: frozenset[str],
    alerted: frozenset[str],
    now: dt.datetime,
    lead: Mapping[str, dt.timedelta] = DEFAULT_LEAD,
) -> list[tuple[str, str]]:
    """The reminders to send now: (kind, ``due-soon`` | ``overdue``), each once.

    A report is ``overdue`` once ``now`` is past its deadline (at the deadline
    itself it is still on time) and ``due-soon`` from ``lead[kind]`` before
    it. A reminder whose key ``"<kind>:<state>"`` is in ``alerted`` is not
    repeated; an overdue report does not also get a late ``due-soon``.
    Submitted reports and a final report without a fix get none.

    Args:
        deadlines: the case's deadlines.
        submitted: report kinds already submitted.
        alerted: alert keys already sent, e.g. ``"early-warning:due-soon"``.
        now: the current time.
        lead: lead time per kind; missing kinds take :data:`DEFAULT_LEAD`.

    Returns:
        The reminders in :data:`REPORT_KINDS` order.

    Raises:
        InvalidInputError: an unknown kind or alert key, or a lead outside
            0..MAX_LEAD.
    """
    current = _utc("now", now)
    unknown = sorted(k for k in submitted if k not in REPORT_KINDS)
    if unknown:
        raise InvalidInputError(f"unknown report kinds: {', '.join(unknown)}")
    valid_keys = {f"{k}:{s}" for k in REPORT_KINDS for s in ALERT_STATES}
    bad = sorted(a for a in alerted if a not in valid_keys)
    if bad:
        raise InvalidInputError(f"unknown alert keys: {', '.join(bad)}")
    for kind, value in lead.items():
        if kind not in REPORT_KINDS:
            raise InvalidInputError(f"unknown report kind {kind!r} in lead times")
        if not dt.timedelta(0) <= value <= MAX_LEAD:
            raise InvalidInputError(f"a lead time is between 0 and {MAX_LEAD.days} days")
    out: list[tuple[str, str]] = []
    for kind in REPORT_KINDS:
        due = deadlines.due(kind)
        if due is None or kind in submitted:
            continue
        if current > due:
            state = "overdue"
        elif current >= due - lead.get(kind, DEFAULT_LEAD[kind]):
            state = "due-soon"
        else:
            continue
        if f"{kind}:{state}" not in alerted:
            out.append((kind, state))
    return out


@dataclass(frozen=True)
class AffectedProduct:
    """A product and its affected versions (releases)."""

    name: str
    versions: tuple[str, ...]


@dataclass(frozen=True)
class CaseFacts:
    """What fleetward knows about one Article 14 case.

    ``trigger`` is ``kev`` (the CVE entered CISA's KEV catalogue),
    ``operator`` (an operator marked it exploited) or ``incident:<id>``.
    ``devices_by_market`` counts devices per market label (``{"DE": 80,
    "EU": 40, "US": 40, "unlabelled": 3}``); market labels are the proxy for
    the Member States where the product is made available. ``submitted``
    maps report kinds to when they were submitted.

    Raises:
        TypeError, ValueError: a field has a wrong type or value.
        PayloadTooLargeError: a field exceeds its named limit.
    """

    manufacturer: str
    products: tuple[AffectedProduct, ...]
    advisory_ids: tuple[str, ...]
    summary: str
    aware_at: dt.datetime
    trigger: str
    severity: str = "unknown"
    cvss_score: float | None = None
    cvss_vector: str | None = None
    kev_added: dt.date | None = None
    kev_ransomware: bool | None = None  # None: not KEV listed or not stated
    devices_by_environment: Mapping[str, int] = field(default_factory=dict)
    devices_by_market: Mapping[str, int] = field(default_factory=dict)
    mitigations: tuple[str, ...] = ()
    fix_release: str | None = None
    fix_available_at: dt.datetime | None = None
    campaign_state: str | None = None
    campaign_updated: int = 0
    campaign_total: int = 0
    submitted: Mapping[str, dt.datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _utc("aware_at", self.aware_at)
        if self.fix_available_at is not None:
            _utc("fix_available_at", self.fix_available_at)
        if not self.manufacturer or not self.products or not self.advisory_ids:
            raise ValueError("a case needs a manufacturer, a product and an advisory id")
        if self.trigger not in ("kev", "operator") and not (
            self.trigger.startswith("incident:") and len(self.trigger) > len("incident:")
        ):
            raise ValueError("trigger is 'kev', 'operator' or 'incident:<id>'")
        if self.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {self.severity!r}")
        if self.cvss_score is not None and not 0.0 <= self.cvss_score <= 10.0:
            raise ValueError("a CVSS base score is between 0 and 10")
        if len(self.summary) > MAX_TEXT:
            raise PayloadTooLargeError(f"a case summary is at most {MAX_TEXT} characters")
        shorts = [self.manufacturer, self.trigger, self.fix_release or "", self.cvss_vector or ""]
        shorts += [self.campaign_state or "", *self.advisory_ids]
        for product in self.products:
            shorts += [product.name, *product.versions]
            if len(product.versions) > MAX_ITEMS:
                raise PayloadTooLargeError(f"at most {MAX_ITEMS} versions per product")
        for seq in (self.products, self.advisory_ids, self.mitigations):
            if len(seq) > MAX_ITEMS:
                raise PayloadTooLargeError(f"at most {MAX_ITEMS} entries per list")
        for counts in (self.devices_by_environment, self.devices_by_market):
            if len(counts) > MAX_ITEMS:
                raise PayloadTooLargeError(f"at most {MAX_ITEMS} entries per mapping")
            shorts += list(counts)
            for n in counts.values():
                if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                    raise ValueError("device counts are non-negative integers")
        if any(len(s) > MAX_SHORT for s in shorts):
            raise PayloadTooLargeError(f"names, ids and labels are at most {MAX_SHORT} characters")
        if any(len(m) > MAX_TEXT for m in self.mitigations):
            raise PayloadTooLargeError(f"a mitigation is at most {MAX_TEXT} characters")
        if not 0 <= self.campaign_updated <= self.campaign_total:
            raise ValueError("campaign progress is 0 <= updated <= total")
        for kind, at in self.submitted.items():
            if kind not in REPORT_KINDS:
                raise ValueError(f"unknown report kind {kind!r}")
            _utc(f"submitted[{kind}]", at)


@dataclass(frozen=True)
class Draft:
    """A report draft: the JSON document and the same content as Markdown."""

    kind: str
    json: dict[str, Any]
    markdown: str


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat()


def _markets(facts: CaseFacts) -> dict[str, Any]:
    states: dict[str, int] = {}
    union = 0
    others: dict[str, int] = {}
    for label, count in sorted(facts.devices_by_market.items()):
        code = label.strip().upper()
        if code in EU_MEMBER_STATES:
            code = "GR" if code == "EL" else code
            states[code] = states.get(code, 0) + count
        elif code == "EU":
            union += count
        else:
            others[label] = count
    listed: list[str] | str = sorted(states)
    if union or not states:
        # "EU" without a state, or no EU label at all: only a person can say
        # which Member States the product was made available in.
        listed = [*sorted(states), TO_BE_COMPLETED] if states else TO_BE_COMPLETED
    return {
        "member_states": listed,
        "devices_by_member_state": dict(sorted(states.items())),
        "devices_labelled_eu_without_state": union,
        "devices_in_other_or_unlabelled_markets": others,
    }


def _evidence(facts: CaseFacts) -> list[str]:
    out = []
    if facts.trigger == "kev" or facts.kev_added is not None:
        added = facts.kev_added.isoformat() if facts.kev_added else "date unknown"
        out.append(f"listed in CISA's Known Exploited Vulnerabilities catalogue ({added})")
    if facts.kev_ransomware:
        out.append("CISA KEV states known use in ransomware campaigns")
    if facts.trigger == "operator":
        out.append("an operator marked the vulnerability exploited")
    if facts.trigger.startswith("incident:"):
        out.append(f"fleetward incident {facts.trigger.split(':', 1)[1]}")
    return out


def _products(facts: CaseFacts) -> list[dict[str, Any]]:
    return [{"name": p.name, "affected_versions": list(p.versions)} for p in facts.products]


def _vulnerability(facts: CaseFacts) -> dict[str, Any]:
    return {
        "ids": list(facts.advisory_ids),
        "summary": facts.summary or TO_BE_COMPLETED,
        "severity": facts.severity,
        "cvss_score": facts.cvss_score,
        "cvss_vector": facts.cvss_vector,
    }


def _measures_taken(facts: CaseFacts) -> list[str]:
    out = list(facts.mitigations)
    if facts.fix_release:
        out.append(f"security update released: {facts.fix_release}")
    if facts.campaign_state:
        out.append(
            f"update campaign {facts.campaign_state}: {facts.campaign_updated} of "
            f"{facts.campaign_total} devices updated"
        )
    return out or [TO_BE_COMPLETED]


def draft(kind: str, facts: CaseFacts, *, now: dt.datetime) -> Draft:
    """Draft one Article 14(2) report from the facts of a case.

    Args:
        kind: one of :data:`REPORT_KINDS`.
        facts: the case.
        now: when the draft is made (recorded in it).

    Returns:
        The draft as a JSON-ready dict and as Markdown.

    Raises:
        InvalidInputError: an unknown kind.
        ValueError: ``now`` is naive.
    """
    if kind not in REPORT_KINDS:
        raise InvalidInputError(f"unknown report kind {kind!r}")
    dl = deadlines(aware_at=facts.aware_at, fix_available_at=facts.fix_available_at)
    article = {"early-warning": "14(2)(a)", "notification": "14(2)(b)", "final": "14(2)(c)"}[kind]
    doc: dict[str, Any] = {
        "kind": kind,
        "legal_basis": f"Regulation (EU) 2024/2847, Article {article}",
        "drafted_at": _iso(_utc("now", now)),
        "deadline": _iso(dl.due(kind)),
        "manufacturer": facts.manufacturer,
        "aware_at": _iso(dl.aware_at),
        "vulnerability": _vulnerability(facts),
        "products": _products(facts),
        "previous_reports": {k: _iso(v) for k, v in sorted(facts.submitted.items())},
    }
    if kind == "early-warning":
        doc["actively_exploited"] = {"evidence": _evidence(facts) or [TO_BE_COMPLETED]}
        doc["suspected_unlawful_or_malicious_act"] = TO_BE_COMPLETED
        doc["markets"] = _markets(facts)
    elif kind == "notification":
        doc["general_product_information"] = {
            "devices_by_environment": dict(sorted(facts.devices_by_environment.items())),
            "markets": _markets(facts),
        }
        doc["nature_of_exploit"] = {
            "evidence": _evidence(facts) or [TO_BE_COMPLETED],
            "general_nature": TO_BE_COMPLETED,
        }
        doc["corrective_or_mitigating_measures_taken"] = _measures_taken(facts)
        doc["measures_users_can_take"] = (
            [f"install the security update {facts.fix_release}", TO_BE_COMPLETED]
            if facts.fix_release
            else [TO_BE_COMPLETED]
        )
        doc["sensitivity_of_information"] = TO_BE_COMPLETED
    else:
        doc["description"] = {
            "summary": facts.summary or TO_BE_COMPLETED,
            "severity": facts.severity,
            "cvss_score": facts.cvss_score,
            "impact": TO_BE_COMPLETED,
        }
        doc["malicious_actor"] = {
            "known_facts": ["CISA KEV states known use in ransomware campaigns"]
            if facts.kev_ransomware
            else [],
            "information": TO_BE_COMPLETED,
        }
        doc["security_update"] = {
            "release": facts.fix_release or TO_BE_COMPLETED,
            "available_at": _iso(dl.fix_available_at),
            "measures": _measures_taken(facts),
        }
    return Draft(kind=kind, json=doc, markdown=_markdown(doc))


_SNAKE = re.compile(r"[a-z]+(?:_[a-z]+)+|[a-z]+")
_LABELS = {
    "ids": "IDs",
    "cvss_score": "CVSS score",
    "cvss_vector": "CVSS vector",
    "devices_labelled_eu_without_state": "Devices labelled EU without a Member State",
    "member_states": "Member States",
    "devices_by_member_state": "Devices by Member State",
}
_TITLES = {
    "early-warning": "Early warning: actively exploited vulnerability",
    "notification": "Vulnerability notification",
    "final": "Final report",
}


def _text(value: object) -> str:
    # Operator text goes into Markdown: newlines would break the structure.
    if value is None:
        return "none"
    return " ".join(str(value).split())


def _md_value(value: Any, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    if isinstance(value, dict):
        if not value:
            lines.append(f"{pad}- none")
        for key, item in value.items():
            if isinstance(item, dict | list):
                lines.append(f"{pad}- {_label(key)}:")
                _md_value(item, indent + 1, lines)
            else:
                lines.append(f"{pad}- {_label(key)}: {_text(item)}")
    elif isinstance(value, list):
        if not value:
            lines.append(f"{pad}- none")
        for item in value:
            if isinstance(item, dict | list):
                # A nested block: its first line carries this item's bullet.
                nested: list[str] = []
                _md_value(item, indent + 1, nested)
                nested[0] = pad + "- " + nested[0].lstrip(" -")
                lines += nested
            else:
                lines.append(f"{pad}- {_text(item)}")
    else:
        lines.append(f"{pad}{_text(value)}")


def _label(key: object) -> str:
    # Our own keys (snake_case) read as words; data keys (market labels) stay as they are.
    text = _text(key)
    if text in _LABELS:
        return _LABELS[text]
    return text.replace("_", " ").capitalize() if _SNAKE.fullmatch(text) else text


def _markdown(doc: dict[str, Any]) -> str:
    lines = [f"# {_TITLES[doc['kind']]}", "", f"{doc['legal_basis']}.", ""]
    for key in ("manufacturer", "aware_at", "deadline", "drafted_at"):
        lines.append(f"- {_label(key)}: {_text(doc[key])}")
    for key, value in doc.items():
        if key in ("kind", "legal_basis", "manufacturer", "aware_at", "deadline", "drafted_at"):
            continue
        lines += ["", f"## {_label(key)}", ""]
        _md_value(value, 0, lines)
    return "\n".join(lines) + "\n"
