"""Conformance evidence for ETSI EN 303 645 and the CRA's Annex I (pure).

The **catalogue** (:data:`CATALOGUE`) lists the main provisions of ETSI EN
303 645 v2.1.1, sections 5.1 to 5.13, and every essential requirement of the
Cyber Resilience Act's Annex I (Part I (1) and (2)(a)-(m), Part II (1)-(8)),
titled in our own words. Each names its **owner**:

- ``fleetward``: a control fleetward enforces answers it;
- ``shared``: fleetward answers part of it, the manufacturer the rest (its
  ``note`` says which);
- ``manufacturer``: the product maker's own duty (a published disclosure
  policy, personal data on the device, a user's deletion UI).

and the **checks** that show fleetward's part, each ``evidence key: test``
over an :class:`EvidenceLine`, and the controls involved (names of
:data:`fleetward.trustmap.threats.CONTROLS` or of :data:`PLATFORM_CONTROLS`).

:func:`evaluate` decides each requirement by these rules, in order:

1. owner ``manufacturer``: status ``manufacturer``;
2. every check holds: ``met`` for ``fleetward``, ``partly`` for ``shared``
   (the manufacturer's part is not fleetward's to show);
3. some checks hold: ``partly``;
4. none holds: ``not-met``. A missing or unknown evidence value never holds.

The **evidence** (:class:`Evidence`) is gathered elsewhere
(``evidence.py``). Its lines come from three sources: ``audit`` (counted
from the tenant's audit entries up to ``as_of``, with the sequence numbers
they came from, so the line is reproducible from the log), ``configuration``
(read from the installation at gather time: the only part not reproducible
from the log) and ``platform`` (what this version of fleetward always does).
:func:`to_json` and :func:`to_markdown` are deterministic: the same evidence
gives byte-identical output.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fleetward.trustmap._catalogue import ROWS
from fleetward.trustmap.threats import CONTROLS

__all__ = [
    "CATALOGUE",
    "CRA_ITEMS",
    "ETSI_SECTIONS",
    "FORMAT",
    "MAX_BREAKDOWN",
    "MAX_SEQS",
    "OWNERS",
    "PLATFORM_CONTROLS",
    "SOURCES",
    "STATUSES",
    "TESTS",
    "Check",
    "CheckOutcome",
    "Evidence",
    "EvidenceLine",
    "Report",
    "Requirement",
    "Result",
    "Value",
    "evaluate",
    "evidence_keys",
    "to_dict",
    "to_json",
    "to_markdown",
]

FORMAT = "fleetward-conformance/v1"
STATUSES = ("met", "partly", "not-met", "manufacturer")
OWNERS = ("fleetward", "shared", "manufacturer")
SOURCES = ("audit", "configuration", "platform")
SCOPES = ("product", "tenant", "installation")
MAX_SEQS = 20  # audit sequence numbers kept per line (first, last and the count are always kept)
MAX_BREAKDOWN = 20  # breakdown rows kept per line, largest first (the rest summed as "other")

Value = int | bool | str | None  # None: the installation cannot tell (never holds)

# How a check reads its line's value. bool is a subclass of int: excluded explicitly.
TESTS: dict[str, tuple[str, Callable[[Value], bool]]] = {
    "positive": ("> 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0),
    "zero": ("= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v == 0),
    "at-least-2": (">= 2", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2),
    "true": ("is true", lambda v: v is True),
    "false": ("is false", lambda v: v is False),
    "set": ("is set", lambda v: v is not None and v != ""),
}

# Controls fleetward always holds whatever a trust map declares.
PLATFORM_CONTROLS = {
    "no-default-credentials": "no shipped password: per-operator random tokens, per-device keys",
    "device-mtls": "devices reach fleetward only over TLS with their own certificate",
    "scoped-tokens": "operator tokens are role- and environment-scoped, expire, are revocable",
    "audit-chain": "every trust decision is in the hash-chained, checkpointed audit log",
    "flood-limits": "per-source and per-identity limits refuse floods",
    "input-limits": "every untrusted input has a named limit; refusals are counted",
    "signed-releases": "releases are TUF-signed and pass a gate (SBOM, measurements)",
    "vulnerability-operations": "SBOMs matched against imported feeds, triage, CRA cases",
    "incident-response": "quarantine, revocation, CA distrust and incidents",
    "device-lifecycle": "certificates renewed and revoked per device",
}


@dataclass(frozen=True)
class EvidenceLine:
    """One fact with where it came from.

    ``value`` is a count (``audit``), a configuration value or a platform
    fact. For ``audit`` lines, ``entries`` is the number of audit entries it
    was counted from, ``first_seq``/``last_seq`` the first and last, ``seqs``
    the first :data:`MAX_SEQS` of them; ``breakdown`` splits the value
    (label, count), largest first.
    """

    key: str
    text: str
    source: str
    scope: str
    value: Value
    entries: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    seqs: tuple[int, ...] = ()
    breakdown: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"evidence {self.key}: source {self.source!r} not in {SOURCES}")
        if self.scope not in SCOPES:
            raise ValueError(f"evidence {self.key}: scope {self.scope!r} not in {SCOPES}")
        if self.source != "audit" and (self.entries or self.seqs):
            raise ValueError(f"evidence {self.key}: only audit lines cite audit entries")
        if len(self.seqs) > MAX_SEQS or len(self.breakdown) > MAX_BREAKDOWN + 1:
            raise ValueError(f"evidence {self.key}: too many seqs or breakdown rows")


@dataclass(frozen=True)
class Evidence:
    """What a report is computed from: the audit anchor, the chain check, the lines.

    ``as_of`` is the tenant's newest audit entry the evidence covers (0: none)
    and ``as_of_hash`` its entry hash; ``tenant_entries`` the tenant's
    entries up to it.
    """

    tenant: str
    product: str | None
    as_of: int
    as_of_hash: str | None
    tenant_entries: int
    chain_verified: bool
    chain_detail: str
    lines: tuple[EvidenceLine, ...]

    def __post_init__(self) -> None:
        keys = [line.key for line in self.lines]
        if len(set(keys)) != len(keys):
            raise ValueError("evidence lines must have distinct keys")
        if self.as_of < 0:
            raise ValueError("as_of must be >= 0")

    def line(self, key: str) -> EvidenceLine | None:
        """The line called ``key``, if gathered."""
        return next((x for x in self.lines if x.key == key), None)


@dataclass(frozen=True)
class Check:
    """One test of one evidence line."""

    key: str
    test: str

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise ValueError(f"check {self.key}: unknown test {self.test!r}")


@dataclass(frozen=True)
class Requirement:
    """One provision or essential requirement, and how fleetward evidences it."""

    id: str
    framework: str  # "ETSI EN 303 645" or "CRA Annex I"
    section: str  # "5.1" ... "5.13", "Part I", "Part II"
    title: str
    owner: str
    checks: tuple[Check, ...]
    controls: tuple[str, ...]
    note: str  # the manufacturer's part (shared) or duty (manufacturer)

    def __post_init__(self) -> None:
        if self.owner not in OWNERS:
            raise ValueError(f"{self.id}: owner {self.owner!r} not in {OWNERS}")
        if self.owner != "manufacturer" and not self.checks:
            raise ValueError(f"{self.id}: a requirement fleetward answers needs checks")
        if self.owner != "fleetward" and not self.note:
            raise ValueError(f"{self.id}: say what the manufacturer's part is")
        unknown = [c for c in self.controls if c not in CONTROLS and c not in PLATFORM_CONTROLS]
        if unknown:
            raise ValueError(f"{self.id}: unknown controls {unknown}")


def _req(
    rid: str, title: str, owner: str, checks: str = "", controls: str = "", note: str = ""
) -> Requirement:
    """A catalogue row: checks as ``"key:test key:test"``, controls space-separated."""
    etsi = rid[0].isascii() and rid[0].isdigit()
    parsed = tuple(Check(*c.split(":", 1)) for c in checks.split())
    section = rid.split("-")[0] if etsi else ("Part II" if rid.startswith("II.") else "Part I")
    return Requirement(
        id=f"ETSI {rid}" if etsi else f"CRA {rid}",
        framework="ETSI EN 303 645" if etsi else "CRA Annex I",
        section=section, title=title, owner=owner, checks=parsed,
        controls=tuple(controls.split()), note=note,
    )  # fmt: skip


CATALOGUE: tuple[Requirement, ...] = tuple(_req(*row) for row in ROWS)

ETSI_SECTIONS = tuple(f"5.{i}" for i in range(1, 14))
CRA_ITEMS = ("I.1", *(f"I.2({c})" for c in "abcdefghijklm"), *(f"II.{i}" for i in range(1, 9)))


def evidence_keys() -> frozenset[str]:
    """Every evidence key the catalogue's checks read (the gatherer must produce each)."""
    return frozenset(c.key for r in CATALOGUE for c in r.checks)


@dataclass(frozen=True)
class CheckOutcome:
    """One check against the evidence."""

    check: Check
    passed: bool
    value: Value
    missing: bool  # the evidence has no such line


@dataclass(frozen=True)
class Result:
    """A requirement's status, why, and the checks behind it."""

    requirement: Requirement
    status: str
    reason: str
    checks: tuple[CheckOutcome, ...]


@dataclass(frozen=True)
class Report:
    """The evaluated catalogue and the evidence it was evaluated on."""

    evidence: Evidence
    results: tuple[Result, ...]

    def summary(self) -> dict[str, dict[str, int]]:
        """``framework -> status -> count``."""
        out: dict[str, Counter[str]] = {}
        for r in self.results:
            out.setdefault(r.requirement.framework, Counter())[r.status] += 1
        return {fw: {s: c[s] for s in STATUSES} for fw, c in sorted(out.items())}


def _outcome(ev: Evidence, check: Check) -> CheckOutcome:
    line = ev.line(check.key)
    if line is None:
        return CheckOutcome(check, passed=False, value=None, missing=True)
    return CheckOutcome(check, passed=TESTS[check.test][1](line.value), value=line.value,
                        missing=False)  # fmt: skip


def evaluate(evidence: Evidence) -> Report:
    """Decide every requirement of :data:`CATALOGUE` on ``evidence`` (rules in the docstring).

    Args:
        evidence: what was gathered.

    Returns:
        One result per requirement, in catalogue order.
    """
    results = []
    for req in CATALOGUE:
        outcomes = tuple(_outcome(evidence, c) for c in req.checks)
        held = sum(o.passed for o in outcomes)
        if req.owner == "manufacturer":
            status, reason = "manufacturer", "the manufacturer's own duty"
        elif held == len(outcomes):
            status = "met" if req.owner == "fleetward" else "partly"
            reason = "every check holds" + ("" if status == "met" else "; the rest is shared")
        elif held:
            status, reason = "partly", f"{held} of {len(outcomes)} checks hold"
        else:
            status, reason = "not-met", "no check holds"
        results.append(Result(req, status, reason, outcomes))
    return Report(evidence=evidence, results=tuple(results))


def _line_json(line: EvidenceLine) -> dict[str, Any]:
    out: dict[str, Any] = {
        "text": line.text, "source": line.source, "scope": line.scope, "value": line.value,
    }  # fmt: skip
    if line.source == "audit":
        out |= {"entries": line.entries, "first_seq": line.first_seq,
                "last_seq": line.last_seq, "seqs": list(line.seqs)}  # fmt: skip
    if line.breakdown:
        out["breakdown"] = [[label, n] for label, n in line.breakdown]
    return out


REPRODUCE = (
    "Lines from the audit log are counted from the tenant's entries up to as_of and cite "
    "them; the same as_of gives the same lines. Configuration lines are read from the "
    "installation when the report is made and are not reproducible from the log; platform "
    "lines are what this version of fleetward always does."
)


def to_dict(report: Report) -> dict[str, Any]:
    """The report as plain data (what :func:`to_json` writes)."""
    ev = report.evidence
    return {
        "format": FORMAT,
        "tenant": ev.tenant,
        "product": ev.product,
        "as_of": {
            "seq": ev.as_of, "entry_hash": ev.as_of_hash, "tenant_entries": ev.tenant_entries,
        },
        "audit_chain": {"verified": ev.chain_verified, "detail": ev.chain_detail},
        "reproducibility": REPRODUCE,
        "summary": report.summary(),
        "requirements": [
            {
                "id": r.requirement.id, "framework": r.requirement.framework,
                "section": r.requirement.section, "title": r.requirement.title,
                "owner": r.requirement.owner, "status": r.status, "reason": r.reason,
                "controls": list(r.requirement.controls), "manufacturer": r.requirement.note,
                "checks": [
                    {"evidence": o.check.key, "test": TESTS[o.check.test][0], "passed": o.passed,
                     "value": o.value, "missing": o.missing}
                    for o in r.checks
                ],
            }
            for r in report.results
        ],
        "evidence": {line.key: _line_json(line) for line in ev.lines},
    }  # fmt: skip


def to_json(report: Report) -> str:
    """The report as JSON text: sorted keys, ASCII only (same evidence, same bytes)."""
    return json.dumps(to_dict(report), indent=2, sort_keys=True, ensure_ascii=True) + "\n"


def _md(text: object) -> str:
    """A table cell from text that may come from tenants (names in the log): no markup."""
    s = str(text).replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")
    return " ".join(s.split())  # newlines and tabs would break the table


def _value(v: Value) -> str:
    return "unknown" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def _cite(line: EvidenceLine) -> str:
    if line.source != "audit":
        return line.source
    if line.key == "audit.chain-verified":
        return "audit: the whole chain"
    if not line.entries:
        return "audit: no entry"
    many = "entry" if line.entries == 1 else "entries"
    return f"audit: {line.entries} {many}, seq {line.first_seq}..{line.last_seq}"


def _rows_text(line: EvidenceLine) -> str:
    # A configuration row is a fact, its count 1: the label alone says it.
    return (
        ", ".join(
            label if line.source != "audit" and n == 1 else f"{label}: {n}"
            for label, n in line.breakdown
        )
        or "-"
    )


def _shown(o: CheckOutcome) -> str:
    value = "missing" if o.missing else _value(o.value)
    return f"{o.check.key} {TESTS[o.check.test][0]}: {value} ({'ok' if o.passed else 'no'})"


def _table(results: Iterable[Result]) -> list[str]:
    lines = ["| id | requirement | owner | status | evidence |", "|---|---|---|---|---|"]
    for r in results:
        ev = "; ".join(_shown(o) for o in r.checks) or "-"
        status = r.status if r.status != "not-met" else "**not met**"
        lines.append(f"| {r.requirement.id} | {_md(r.requirement.title)} | {r.requirement.owner} "
                     f"| {status} | {_md(ev)} |")  # fmt: skip
    return lines


def _summary(summary: Mapping[str, Mapping[str, int]]) -> list[str]:
    lines = ["| framework | " + " | ".join(STATUSES) + " |", "|---" * (len(STATUSES) + 1) + "|"]
    for fw, counts in summary.items():
        lines.append(f"| {fw} | " + " | ".join(str(counts[s]) for s in STATUSES) + " |")
    return lines


def to_markdown(report: Report) -> str:
    """The report as Markdown: summary, a table per framework, evidence, the manufacturer's part."""
    ev = report.evidence
    chain = "verified" if ev.chain_verified else "**NOT verified**"
    out = [
        f"# Conformance evidence: tenant {_md(ev.tenant)}"
        + (f", product {_md(ev.product)}" if ev.product else ""),
        "",
        f"- As of audit entry **{ev.as_of}** (entry hash `{ev.as_of_hash or '-'}`), "
        f"{ev.tenant_entries} entries of this tenant.",
        f"- Audit chain: {chain}: {_md(ev.chain_detail)}",
        f"- Reproduce: `fleetward trustmap conformance --tenant {_md(ev.tenant)}"
        + (f" --product {_md(ev.product)}" if ev.product else "")
        + f" --as-of {ev.as_of}`.",
        "",
        REPRODUCE,
        "",
        "Status: **met**, every check of a requirement fleetward answers holds; **partly**, some "
        "hold, or all hold and the rest is the manufacturer's; **not met**, none holds (no "
        "evidence yet counts as none); **manufacturer**, the manufacturer's own duty.",
        "",
        "## Summary",
        "",
        *_summary(report.summary()),
    ]
    for fw in sorted({r.requirement.framework for r in report.results}):
        out += [
            "",
            f"## {fw}",
            "",
            *_table(r for r in report.results if r.requirement.framework == fw),
        ]
    out += ["", "## Evidence", "", "| key | value | source | scope | what | breakdown |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    for line in ev.lines:
        parts = _rows_text(line)
        out.append(f"| {line.key} | {_md(_value(line.value))} | {_md(_cite(line))} | "
                   f"{line.scope} | {_md(line.text)} | {_md(parts)} |")  # fmt: skip
    out += ["", "## The manufacturer's part", ""]
    for r in report.results:
        if r.requirement.note:
            out.append(f"- {r.requirement.id} ({r.requirement.owner}): {_md(r.requirement.note)}")
    return "\n".join(out) + "\n"
