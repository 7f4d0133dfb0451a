"""A threat model generated from a trust map (pure): STRIDE, scored, with mitigations.

The elements are the data-flow diagram of a fleetward installation
(:data:`~fleetward.trustmap.schema.ELEMENTS`): the device, the factory
station, the broker, the device plane, the operator plane, the OTA
repository, the operators and the database. Each threat of the catalogue
(:data:`CATALOGUE`) is a STRIDE category on one element or data flow, with
a **plausibility** and an **impact** (1-5 each; the score is their product)
and the **controls** that mitigate it.

A control counts as a mitigation only when the map declares it **and** the
live checks confirm it (``confirmed``, from :mod:`fleetward.trustmap`'s
checks; ``None`` when no check ran, so nothing is confirmed and every
declared control is listed as unconfirmed). Each confirmed control lowers
the threat's plausibility by its weight, never below 1; the residual score
is the lowered plausibility times the impact. The model lists residual
high threats first (score, then id), so what is plausible, damaging and
not mitigated leads.

The map's own data flows add threats too: a flow that is not
authenticated can be spoofed, one that is not encrypted can be read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fleetward.trustmap.schema import ELEMENTS, TrustMap

__all__ = [
    "CATALOGUE",
    "CONTROLS",
    "STRIDE",
    "Threat",
    "ThreatModel",
    "declared_controls",
    "model",
    "to_dot",
    "to_json",
    "to_markdown",
]

STRIDE = {
    "S": "Spoofing",
    "T": "Tampering",
    "R": "Repudiation",
    "I": "Information disclosure",
    "D": "Denial of service",
    "E": "Elevation of privilege",
}
HIGH = 12  # residual score from which a threat is "high" (of 25)

# Each control: what it means, and whether a map declares it.
CONTROLS: dict[str, tuple[str, Callable[[TrustMap], bool]]] = {
    "hardware-device-keys": (
        "production certifies only hardware-attested device keys",
        lambda m: (
            (e := m.identity.environments.get("production")) is not None
            and e.key_origin == "hardware-attested"
        ),
    ),
    "hsm-ca-keys": (
        "every issuing CA key is on a PKCS#11 token",
        lambda m: all(e.issuing_ca_key == "pkcs11" for e in m.identity.environments.values()),
    ),
    "offline-root-ca": ("the root CA key is offline", lambda m: m.identity.root_ca == "offline"),
    "offline-tuf-root": (
        "the TUF root keys are offline, threshold >= 2",
        lambda m: m.code.tuf_root.storage == "offline" and m.code.tuf_root.threshold >= 2,
    ),
    "release-threshold": (
        "a release needs >= 2 signatures",
        lambda m: m.code.targets_threshold >= 2,
    ),
    "measured-boot": (
        "every boot stage is measured and appraised",
        lambda m: len(set(m.code.boot_stages_measured)) == 3,
    ),
    "attested-updates": (
        "an update counts only once boot attestation passes",
        lambda m: m.code.attestation_required_for_updates,
    ),
    "listener-per-environment": (
        "each broker listener trusts its own environment's CA only",
        lambda m: all(list(v.trusts) == [k] for k, v in m.cloud.listeners.items()),
    ),
    "command-allow-list": (
        "devices receive only commands their policy role names",
        lambda m: all(not any("cmd" in t for t in r.subscribe) for r in m.cloud.policy_roles),
    ),
    "least-privilege-topics": (
        "device roles publish and subscribe under their own device only",
        lambda m: all(
            all("{device}" in t for t in (*r.publish, *r.subscribe)) for r in m.cloud.policy_roles
        ),
    ),
    "factory-batches": (
        "factory tokens enroll only through their own batches",
        lambda m: bool(m.factories) and all(f.batches_only for f in m.factories),
    ),
    "canary-waves": (
        "updates start with a small first wave behind a health gate",
        lambda m: m.updates.first_wave_max_percent <= 10 and m.updates.gate.min_success_ratio > 0,
    ),
    "ab-fallback": (
        "devices update into an inactive slot and fall back by themselves",
        lambda m: m.updates.ab_slots and m.updates.automatic_fallback,
    ),
    "boot-detection": (
        "boot-integrity detectors are on with an automatic response",
        lambda m: (
            "boot-integrity-cohort" in m.detection.detectors
            and m.detection.responses.get("boot-integrity-cohort", "none") != "none"
        ),
    ),
    "authz-detection": (
        "authorization-failure detection is on",
        lambda m: "authz-failures" in m.detection.detectors,
    ),
    "vulnerability-alerts": (
        "exploited and critical vulnerabilities on deployed devices alert",
        lambda m: "vulnerability-exploited" in m.detection.detectors,
    ),
    "encrypted-flows": (
        "every declared data flow is encrypted and authenticated",
        lambda m: all(f.encrypted and f.authenticated for f in m.flows),
    ),
}


@dataclass(frozen=True)
class _Entry:
    id: str
    element: str
    stride: str
    title: str
    plausibility: int
    impact: int
    controls: tuple[tuple[str, int], ...]  # (control id, plausibility it removes)


# The catalogue: the threats a fleet trust plane must answer, at least the
# four the issue names (credential theft, supply-chain tampering,
# unauthorized command execution, data exfiltration).
CATALOGUE: tuple[_Entry, ...] = (
    _Entry("TM-01", "device", "S", "Credential theft: a device key is extracted and cloned",
           4, 4, (("hardware-device-keys", 3), ("authz-detection", 1))),
    _Entry("TM-02", "device-plane", "S", "Issuing CA key theft: certificates minted at will",
           2, 5, (("hsm-ca-keys", 1), ("offline-root-ca", 0))),
    _Entry("TM-03", "ota-repository", "T",
           "Supply-chain tampering: a malicious image is signed and shipped",
           3, 5, (("offline-tuf-root", 1), ("release-threshold", 1), ("measured-boot", 1),
                  ("vulnerability-alerts", 0))),
    _Entry("TM-04", "device", "T", "Tampered boot chain runs unnoticed",
           3, 4, (("measured-boot", 1), ("boot-detection", 1), ("attested-updates", 0))),
    _Entry("TM-05", "broker", "E",
           "Unauthorized command execution: a device or client sends commands it may not",
           3, 5, (("command-allow-list", 2), ("least-privilege-topics", 1))),
    _Entry("TM-06", "broker", "I", "Data exfiltration: a device reads other devices' topics",
           4, 4, (("least-privilege-topics", 2), ("listener-per-environment", 1))),
    _Entry("TM-07", "broker", "S", "A test certificate reaches a production listener",
           3, 4, (("listener-per-environment", 2),)),
    _Entry("TM-08", "factory-station", "S",
           "A rogue or stolen factory token enrolls devices outside its batches",
           3, 4, (("factory-batches", 2), ("hardware-device-keys", 1))),
    _Entry("TM-09", "ota-repository", "D", "A bad release bricks the fleet",
           3, 5, (("canary-waves", 2), ("ab-fallback", 1), ("attested-updates", 0))),
    _Entry("TM-10", "operator-plane", "E",
           "A stolen operator token acts beyond its task",
           3, 4, ()),
    _Entry("TM-11", "database", "R", "A trust decision is denied or rewritten afterwards",
           2, 3, ()),
    _Entry("TM-12", "device-plane", "D", "Floods of enrollment or attestation requests",
           3, 3, ()),
    _Entry("TM-13", "ota-repository", "E",
           "An online TUF root key is stolen: the repository's trust is reset",
           2, 5, (("offline-tuf-root", 1),)),
)  # fmt: skip
# Platform controls fleetward always enforces whatever the map says
# (scoped expiring tokens, the hash-chained audit log, request limits): they
# are noted on the threat, not counted as the map's mitigations.
_PLATFORM = {
    "TM-10": "operator tokens are role- and environment-scoped, expire and are revocable",
    "TM-11": "every trust decision is in the hash-chained audit log with signed checkpoints",
    "TM-12": "per-source and per-identity limits refuse floods from memory (429)",
}


@dataclass(frozen=True)
class Threat:
    """One threat with its scores and how it is mitigated."""

    id: str
    element: str
    stride: str
    title: str
    plausibility: int
    impact: int
    mitigations: tuple[str, ...]  # controls declared and confirmed
    unconfirmed: tuple[str, ...]  # declared, not (yet) confirmed by a check
    missing: tuple[str, ...]  # controls the map does not declare
    platform: str = ""

    @property
    def score(self) -> int:
        """Inherent score, before mitigations."""
        return self.plausibility * self.impact

    @property
    def residual_plausibility(self) -> int:
        return max(1, self.plausibility - sum(_weight(self.id, c) for c in self.mitigations))

    @property
    def residual(self) -> int:
        """Score after the confirmed mitigations."""
        return self.residual_plausibility * self.impact

    @property
    def high(self) -> bool:
        return self.residual >= HIGH


def _weight(threat_id: str, control: str) -> int:
    for e in CATALOGUE:
        if e.id == threat_id:
            return dict(e.controls).get(control, 0)
    return 0


@dataclass(frozen=True)
class ThreatModel:
    """The model of one map, most urgent first."""

    product: str
    threats: tuple[Threat, ...]
    controls: dict[str, bool] = field(default_factory=dict)  # declared?
    confirmed: frozenset[str] | None = None


def declared_controls(m: TrustMap) -> dict[str, bool]:
    """Every control of :data:`CONTROLS` and whether the map declares it."""
    return {name: bool(test(m)) for name, (_, test) in CONTROLS.items()}


def model(m: TrustMap, *, confirmed: Iterable[str] | None = None) -> ThreatModel:
    """The threat model of a map; ``confirmed`` are the controls live checks hold."""
    declared = declared_controls(m)
    ok = frozenset(confirmed) if confirmed is not None else None
    threats = []
    for e in CATALOGUE:
        names = [c for c, _ in e.controls]
        mitig = tuple(c for c in names if declared[c] and ok is not None and c in ok)
        unconf = tuple(c for c in names if declared[c] and c not in mitig)
        missing = tuple(c for c in names if not declared[c])
        threats.append(
            Threat(e.id, e.element, e.stride, e.title, e.plausibility, e.impact, mitig,
                   unconf, missing, _PLATFORM.get(e.id, ""))
        )  # fmt: skip
    for i, f in enumerate(m.flows, start=1):
        label = f"{f.source} -> {f.target} ({f.data}, {f.protocol})"
        if not f.authenticated:
            threats.append(
                Threat(f"FL-{i:02d}S", f"{f.source}->{f.target}", "S",
                       f"Unauthenticated flow can be spoofed: {label}", 4, 4, (), (), ())
            )  # fmt: skip
        if not f.encrypted:
            threats.append(
                Threat(f"FL-{i:02d}I", f"{f.source}->{f.target}", "I",
                       f"Unencrypted flow can be read: {label}", 4, 3, (), (), ())
            )  # fmt: skip
    ordered = sorted(threats, key=lambda t: (-t.residual, -t.score, t.id))
    return ThreatModel(product=m.product, threats=tuple(ordered), controls=declared, confirmed=ok)


def to_json(tm: ThreatModel) -> dict[str, Any]:
    """The model as a JSON document."""
    return {
        "product": tm.product,
        "checked": tm.confirmed is not None,
        "controls": {
            name: {
                "description": CONTROLS[name][0],
                "declared": declared,
                "confirmed": tm.confirmed is not None and name in tm.confirmed,
            }
            for name, declared in tm.controls.items()
        },
        "threats": [
            {
                "id": t.id,
                "element": t.element,
                "stride": STRIDE[t.stride],
                "title": t.title,
                "plausibility": t.plausibility,
                "impact": t.impact,
                "score": t.score,
                "residual": t.residual,
                "high": t.high,
                "mitigations": list(t.mitigations),
                "unconfirmed": list(t.unconfirmed),
                "missing": list(t.missing),
                "platform": t.platform,
            }
            for t in tm.threats
        ],
    }


def _cell(text: str) -> str:
    """A table cell from map text (flow data and protocol): one line, no markup.

    A newline would end the row and start forged lines; HTML passes through
    most Markdown renderers; ``|`` and backticks would split or quote cells.
    """
    escaped = (
        text.replace("\\", "\\\\").replace("|", "\\|").replace("`", "'")
        .replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*").replace("_", "\\_")
        .replace("[", "\\[").replace("]", "\\]").replace("#", "\\#")
    )  # fmt: skip
    return " ".join(escaped.split())


def to_markdown(tm: ThreatModel) -> str:
    """The model as Markdown: residual high threats first."""
    lines = [f"# Threat model: {_cell(tm.product)}", ""]
    if tm.confirmed is None:
        lines += ["Controls were not checked against the live system: none counts yet.", ""]
    high = [t for t in tm.threats if t.high]
    lines += [f"{len(high)} residual high threat(s) of {len(tm.threats)}.", ""]
    lines += ["| id | element | STRIDE | threat | score | residual | mitigated by | missing |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for t in tm.threats:
        cells = [
            t.id, t.element, STRIDE[t.stride], _cell(t.title), str(t.score),
            f"**{t.residual}**" if t.high else str(t.residual),
            ", ".join(t.mitigations) or "-", ", ".join(t.missing) or "-",
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    notes = [t for t in tm.threats if t.platform or t.unconfirmed]
    if notes:
        lines += ["", "## Notes", ""]
        for t in notes:
            if t.unconfirmed:
                lines.append(f"- {t.id}: declared, not confirmed: {', '.join(t.unconfirmed)}")
            if t.platform:
                lines.append(f"- {t.id}: the platform always holds: {t.platform}")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    return json.dumps(text)  # a DOT ID in double quotes, with JSON's escapes


def to_dot(m: TrustMap) -> str:
    """The data-flow diagram in Graphviz DOT: boundaries as clusters."""
    lines = ["digraph trustmap {", "  rankdir=LR;", "  node [shape=box, fontname=Helvetica];"]
    placed: set[str] = set()
    for i, b in enumerate(m.boundaries):
        lines.append(f"  subgraph cluster_{i} {{")
        lines.append(f"    label={_q(b.name)}; style=dashed;")
        for element in b.contains:
            lines.append(f"    {_q(element)};")
            placed.add(element)
        lines.append("  }")
    used = {e for f in m.flows for e in (f.source, f.target)} | {a.lives_in for a in m.assets}
    for element in ELEMENTS:
        if element in used and element not in placed:
            lines.append(f"  {_q(element)};")
    for f in m.flows:
        style = "solid" if f.encrypted and f.authenticated else "dashed"
        label = f"{f.data} ({f.protocol})"
        lines.append(f"  {_q(f.source)} -> {_q(f.target)} [label={_q(label)}, style={style}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
