"""Checks of a trust map against reality: every declared answer compared with live facts.

Pure. The service gathers :class:`LiveFacts` (what the live system holds, as
plain values) and :func:`check` compares them with the product's
:class:`~fleetward.trustmap.schema.TrustMap`. Each disagreement is a
:class:`Drift` that names the objects involved; the controls of
:data:`~fleetward.trustmap.threats.CONTROLS` that the map declares and the live
facts hold are returned as ``confirmed`` (they feed
:func:`fleetward.trustmap.threats.model`). A live fact left as ``None`` is
unknown: its check does not run, and its controls are not confirmed.

The checks, in the order they run (``checked`` lists those that ran):

1. ``device-keys``: in every environment the map declares
   ``key_origin: hardware-attested``, no live device holds a key of another
   origin; otherwise ``software-keys-in-production`` (critical), naming a
   sample of the devices. Confirms ``hardware-device-keys``.
2. ``ca-key-storage``: every environment the map declares with a ``pkcs11``
   issuing CA key has its live issuing CA key on PKCS#11 (a missing CA is a
   drift too): ``ca-key-storage`` (high). Confirms ``hsm-ca-keys``.
3. ``root-ca``: a root CA declared offline is not online: ``root-ca-online``
   (critical). Confirms ``offline-root-ca``.
4. ``tuf-root``: a TUF root declared offline is not online
   (``tuf-root-storage``, critical), and its live threshold is not below the
   declared one (``tuf-root-threshold``, high). Confirms ``offline-tuf-root``.
5. ``release-threshold``: the product's live targets role needs at least the
   declared number of signatures; a missing role is a drift (high).
   Confirms ``release-threshold``.
6. ``boot-measurements``: the newest release has reference measurements for
   every boot stage the map declares measured: ``boot-stage-unmeasured``
   (high). Confirms ``measured-boot``.
7. ``first-wave``: no recent campaign starts with a first wave above the
   declared maximum: ``first-wave-too-large`` (medium). Confirms
   ``canary-waves``.
8. ``update-attestation``: where the map requires boot attestation for
   updates, every recent campaign requires it: ``attestation-not-required``
   (high). Confirms ``attested-updates``.
9. ``detectors``: every declared detector runs (``detector-off``), and its
   configured response equals the declared one, ``none`` when not declared
   (``response-differs``). High when the detector backs a control, medium
   otherwise. Confirms ``boot-detection``, ``authz-detection`` and
   ``vulnerability-alerts``.
10. ``policy-roles``: every live role is declared (``policy-role-undeclared``,
    high), each of its publish and subscribe templates is covered by one of
    the declared role's templates of the same list, and its commands are a
    subset of the declared ones (``policy-role-broader``, high). Confirms
    ``least-privilege-topics`` and ``command-allow-list``.
11. ``listeners``: each live listener trusts the CAs of its own environment
    only: ``listener-trusts-other-environment`` (critical). Confirms
    ``listener-per-environment``.
12. ``service-identities``: every live service identity is declared:
    ``service-identity-undeclared`` (high). Confirms no control.
13. ``factories``: every live factory is declared (``factory-undeclared``,
    critical with open batches, else high), provisions only the declared
    environments (``factory-environment``, high), and none of its tokens can
    enroll outside its batches (``factory-token-unbound``, critical).
    Confirms ``factory-batches``.

Template coverage (rule 10, :func:`covers`): a declared template covers a
live one when every topic the live one can reach, for any device, the
declared one reaches for the same device. Level by level: a literal is
covered by the same literal, ``+`` or a final ``#``; a variable such as
``{device}`` only by the same variable, ``+`` or ``#``; ``+`` by ``+`` or
``#``; ``#`` only by ``#``. A literal is *not* covered by a variable: the live
literal ``dev-1`` lets every device of the role reach ``dev-1``'s topics,
while ``{device}`` lets each reach only its own. A declared template that
does not parse covers nothing.

The controls ``ab-fallback`` and ``encrypted-flows`` have no live check
(:data:`UNCHECKED_CONTROLS`) and are never confirmed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from fleetward.errors import InvalidInputError
from fleetward.trustmap._live import (
    BOOT_STAGES,
    LiveFacts,
    LiveRole,
    choice,
    levels,
)
from fleetward.trustmap.schema import TrustMap
from fleetward.trustmap.threats import CONTROLS, declared_controls

__all__ = [
    "CHECKS",
    "DRIFT_KINDS",
    "SEVERITIES",
    "UNCHECKED_CONTROLS",
    "CheckResult",
    "Drift",
    "LiveFacts",
    "LiveRole",
    "check",
    "covers",
]

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")

DRIFT_KINDS = (
    "software-keys-in-production",
    "ca-key-storage",
    "root-ca-online",
    "tuf-root-storage",
    "tuf-root-threshold",
    "release-threshold",
    "boot-stage-unmeasured",
    "first-wave-too-large",
    "attestation-not-required",
    "detector-off",
    "response-differs",
    "policy-role-undeclared",
    "policy-role-broader",
    "listener-trusts-other-environment",
    "service-identity-undeclared",
    "factory-undeclared",
    "factory-environment",
    "factory-token-unbound",
)

# Each check, in order, and the controls it confirms when it finds no drift.
CHECKS: dict[str, tuple[str, ...]] = {
    "device-keys": ("hardware-device-keys",),
    "ca-key-storage": ("hsm-ca-keys",),
    "root-ca": ("offline-root-ca",),
    "tuf-root": ("offline-tuf-root",),
    "release-threshold": ("release-threshold",),
    "boot-measurements": ("measured-boot",),
    "first-wave": ("canary-waves",),
    "update-attestation": ("attested-updates",),
    "detectors": ("boot-detection", "authz-detection", "vulnerability-alerts"),
    "policy-roles": ("least-privilege-topics", "command-allow-list"),
    "listeners": ("listener-per-environment",),
    "service-identities": (),
    "factories": ("factory-batches",),
}
UNCHECKED_CONTROLS = frozenset(CONTROLS) - {c for cs in CHECKS.values() for c in cs}

# The detector behind each detection control (rule 9).
_DETECTOR_CONTROLS = {
    "boot-integrity-cohort": "boot-detection",
    "authz-failures": "authz-detection",
    "vulnerability-exploited": "vulnerability-alerts",
}
_HARDWARE = "hardware-attested"


@dataclass(frozen=True)
class Drift:
    """One declared answer the live system does not hold."""

    kind: str
    severity: Severity
    subject: str  # the object involved, e.g. "environment:production", "role:telemetry"
    message: str  # a sentence naming the declared and the live value
    objects: tuple[str, ...] = ()  # ids or names involved (devices, templates, tokens)
    control: str | None = None  # the threats.CONTROLS name it breaks

    def __post_init__(self) -> None:
        choice(self.kind, DRIFT_KINDS, "kind")
        choice(self.severity, SEVERITIES, "severity")
        if self.control is not None:
            choice(self.control, tuple(CONTROLS), "control")


@dataclass(frozen=True)
class CheckResult:
    """The drifts (most severe first), the confirmed controls and the checks that ran."""

    drifts: tuple[Drift, ...]
    confirmed: frozenset[str]
    checked: tuple[str, ...]


def _split(text: str) -> tuple[str, ...] | None:
    try:
        return levels(text)
    except InvalidInputError:
        return None


def covers(declared: str, live: str) -> bool:
    """Whether a declared template covers a live one (module docstring, rule 10).

    Args:
        declared: a template of the map's role; one that does not parse covers nothing.
        live: a template of the live role.

    Returns:
        True when every topic ``live`` reaches for a device, ``declared`` reaches too.

    Raises:
        InvalidInputError: ``live`` is not a valid template.
    """
    have = levels(live)
    want = _split(declared)
    if want is None:
        return False
    for i, level in enumerate(have):
        if i < len(want) and want[i] == "#":
            return True
        if i >= len(want):
            return False
        d = want[i]
        # "#" and "+" only by themselves; a literal or a variable by itself or "+".
        if d != level and (level in ("#", "+") or d != "+"):
            return False
    # The live template ends here; MQTT's "a/#" also matches "a".
    return len(want) == len(have) or (len(want) == len(have) + 1 and want[-1] == "#")


def _check_device_keys(m: TrustMap, live: LiveFacts) -> list[Drift]:
    assert live.device_key_origins is not None  # noqa: S101 - check() runs it only then
    out = []
    for env, ident in m.identity.environments.items():
        if ident.key_origin != _HARDWARE:
            continue
        n = sum(c for (e, o), c in live.device_key_origins.items() if e == env and o != _HARDWARE)
        if n:
            sample = tuple(sorted(live.software_key_devices.get(env, ())))
            msg = f"the map certifies only hardware-attested keys in {env}; {n} live device(s) "
            msg += "hold software keys"
            kind, control = "software-keys-in-production", "hardware-device-keys"
            out.append(Drift(kind, "critical", f"environment:{env}", msg, sample, control))
    return out


def _check_ca_keys(m: TrustMap, live: LiveFacts) -> list[Drift]:
    assert live.ca_key_backends is not None  # noqa: S101
    out = []
    for env, ident in m.identity.environments.items():
        got = live.ca_key_backends.get(env, "missing")
        if ident.issuing_ca_key == "pkcs11" and got != "pkcs11":
            msg = f"the map keeps the {env} issuing CA key on pkcs11; live: {got}"
            out.append(Drift("ca-key-storage", "high", f"environment:{env}", msg, (env,),
                             "hsm-ca-keys"))  # fmt: skip
    return out


def _check_root_ca(m: TrustMap, live: LiveFacts) -> list[Drift]:
    if m.identity.root_ca == "offline" and live.root_ca == "online":
        msg = "the map keeps the root CA key offline; live it is online"
        return [
            Drift("root-ca-online", "critical", "root-ca", msg, ("root-ca",), "offline-root-ca")
        ]
    return []


def _check_tuf_root(m: TrustMap, live: LiveFacts) -> list[Drift]:
    out = []
    root = m.code.tuf_root
    if root.storage == "offline" and live.tuf_root_storage == "online":
        msg = "the map keeps the TUF root keys offline; live they are online"
        out.append(Drift("tuf-root-storage", "critical", "tuf:root", msg, ("root",),
                         "offline-tuf-root"))  # fmt: skip
    if live.tuf_root_threshold is not None and live.tuf_root_threshold < root.threshold:
        msg = f"the map declares a TUF root threshold of {root.threshold}; "
        msg += f"live: {live.tuf_root_threshold} (of {live.tuf_root_keys} keys)"
        out.append(Drift("tuf-root-threshold", "high", "tuf:root", msg, ("root",),
                         "offline-tuf-root"))  # fmt: skip
    return out


def _check_release(m: TrustMap, live: LiveFacts) -> list[Drift]:
    assert live.release_thresholds is not None  # noqa: S101
    got = live.release_thresholds.get(m.product)
    want = m.code.targets_threshold
    if got is None or got < want:
        msg = f"the map declares {want} release signature(s) for {m.product}; live: "
        msg += str(got) if got is not None else "no targets role"
        return [Drift("release-threshold", "high", f"product:{m.product}", msg, (m.product,),
                      "release-threshold")]  # fmt: skip
    return []


def _check_boot(m: TrustMap, live: LiveFacts) -> list[Drift]:
    assert live.boot_stages_measured is not None  # noqa: S101
    declared, measured = m.code.boot_stages_measured, live.boot_stages_measured
    missing = tuple(s for s in BOOT_STAGES if s in declared and s not in measured)
    if missing:
        msg = f"the map measures {', '.join(missing)}; the newest release has no reference "
        msg += "measurements for it"
        return [Drift("boot-stage-unmeasured", "high", f"product:{m.product}", msg, missing,
                      "measured-boot")]  # fmt: skip
    return []


def _check_first_wave(m: TrustMap, live: LiveFacts) -> list[Drift]:
    assert live.campaign_first_wave_percent is not None  # noqa: S101
    cap = m.updates.first_wave_max_percent
    over = tuple(sorted(c for c, p in live.campaign_first_wave_percent.items() if p > cap))
    if over:
        msg = f"the map caps a first wave at {cap:g} %; live campaign(s) start above it"
        return [Drift("first-wave-too-large", "medium", f"product:{m.product}", msg, over,
                      "canary-waves")]  # fmt: skip
    return []


def _check_update_attestation(m: TrustMap, live: LiveFacts) -> list[Drift]:
    assert live.campaign_require_attestation is not None  # noqa: S101
    if not m.code.attestation_required_for_updates:
        return []
    lax = tuple(sorted(c for c, r in live.campaign_require_attestation.items() if not r))
    if lax:
        msg = "the map counts an update only once attestation passes; live campaign(s) do not "
        msg += "require attestation"
        return [Drift("attestation-not-required", "high", f"product:{m.product}", msg, lax,
                      "attested-updates")]  # fmt: skip
    return []


def _check_detectors(m: TrustMap, live: LiveFacts) -> list[Drift]:
    assert live.detectors_enabled is not None  # noqa: S101
    out = []
    for kind in m.detection.detectors:
        control = _DETECTOR_CONTROLS.get(kind)
        severity: Severity = "high" if control else "medium"
        subject = f"detector:{kind}"
        if kind not in live.detectors_enabled:
            msg = f"the map declares the {kind} detector on; live it is off"
            out.append(Drift("detector-off", severity, subject, msg, (kind,), control))
        want = m.detection.responses.get(kind, "none")
        got = live.detector_responses.get(kind, "none")
        if want != got:
            msg = f"the map answers {kind} with {want}; live: {got}"
            out.append(Drift("response-differs", severity, subject, msg, (kind,), control))
    return out


def _check_roles(m: TrustMap, live: LiveFacts) -> list[Drift]:
    assert live.policy_roles is not None  # noqa: S101
    declared = {r.name: r for r in m.cloud.policy_roles}
    out = []
    for name, role in sorted(live.policy_roles.items()):
        mine = declared.get(name)
        if mine is None:
            msg = f"live role {name} is not declared in the map"
            out.append(Drift("policy-role-undeclared", "high", f"role:{name}", msg, (name,),
                             "least-privilege-topics"))  # fmt: skip
            continue
        wider = [f"publish {t}" for t in role.publish
                 if not any(covers(d, t) for d in mine.publish)]  # fmt: skip
        wider += [f"subscribe {t}" for t in role.subscribe
                  if not any(covers(d, t) for d in mine.subscribe)]  # fmt: skip
        extra = [f"command {c}" for c in role.commands if c not in mine.commands]
        if wider or extra:
            msg = f"live role {name} allows more than the map declares: " + "; ".join(wider + extra)
            control = "least-privilege-topics" if wider else "command-allow-list"
            out.append(Drift("policy-role-broader", "high", f"role:{name}", msg,
                             tuple(wider + extra), control))  # fmt: skip
    return out


def _check_listeners(m: TrustMap, live: LiveFacts) -> list[Drift]:
    assert live.listener_trust is not None  # noqa: S101
    out = []
    for env, trusted in sorted(live.listener_trust.items()):
        others = tuple(sorted(trusted - {env}))
        if others:
            msg = f"the map has the {env} listener trust its own CAs only; live it also trusts "
            msg += ", ".join(others)
            out.append(Drift("listener-trusts-other-environment", "critical", f"listener:{env}",
                             msg, others, "listener-per-environment"))  # fmt: skip
    return out


def _check_services(m: TrustMap, live: LiveFacts) -> list[Drift]:
    assert live.service_identities is not None  # noqa: S101
    extra = sorted(live.service_identities - set(m.cloud.service_identities))
    return [Drift("service-identity-undeclared", "high", f"service-identity:{s}",
                  f"live service identity {s} is not declared in the map", (s,))
            for s in extra]  # fmt: skip


def _check_factories(m: TrustMap, live: LiveFacts) -> list[Drift]:
    assert live.factory_environments is not None  # noqa: S101
    declared = {f.name: f for f in m.factories}
    out = []
    for name, envs in sorted(live.factory_environments.items()):
        subject, mine = f"factory:{name}", declared.get(name)
        if mine is None:
            batches = live.factory_open_batches.get(name, 0)
            msg = f"live factory {name} ({batches} open batch(es)) is not declared in the map"
            severity: Severity = "critical" if batches else "high"
            out.append(Drift("factory-undeclared", severity, subject, msg, (name,),
                             "factory-batches"))  # fmt: skip
        elif extra := tuple(sorted(envs - set(mine.environments))):
            msg = f"the map lets {name} provision {', '.join(mine.environments)}; live also "
            msg += ", ".join(extra)
            out.append(Drift("factory-environment", "high", subject, msg, extra,
                             "factory-batches"))  # fmt: skip
    for name, tokens in sorted(live.factory_unbound_tokens.items()):
        if tokens:
            msg = f"the map binds {name}'s tokens to its batches; live token(s) can enroll "
            msg += "outside them"
            out.append(Drift("factory-token-unbound", "critical", f"factory:{name}", msg,
                             tuple(sorted(tokens)), "factory-batches"))  # fmt: skip
    return out


# Each check, the live facts it needs (all not None) and its function.
_RUN: dict[str, tuple[tuple[str, ...], Callable[[TrustMap, LiveFacts], list[Drift]]]] = {
    "device-keys": (("device_key_origins",), _check_device_keys),
    "ca-key-storage": (("ca_key_backends",), _check_ca_keys),
    "root-ca": (("root_ca",), _check_root_ca),
    "tuf-root": (("tuf_root_storage", "tuf_root_threshold"), _check_tuf_root),
    "release-threshold": (("release_thresholds",), _check_release),
    "boot-measurements": (("boot_stages_measured",), _check_boot),
    "first-wave": (("campaign_first_wave_percent",), _check_first_wave),
    "update-attestation": (("campaign_require_attestation",), _check_update_attestation),
    "detectors": (("detectors_enabled",), _check_detectors),
    "policy-roles": (("policy_roles",), _check_roles),
    "listeners": (("listener_trust",), _check_listeners),
    "service-identities": (("service_identities",), _check_services),
    "factories": (("factory_environments",), _check_factories),
}
_POLICY_KINDS = ("policy-role-undeclared", "policy-role-broader")


def check(m: TrustMap, live: LiveFacts) -> CheckResult:
    """Compare a trust map with the live facts (the rules in the module docstring).

    Args:
        m: the product's trust map.
        live: what the live system holds; ``None`` facts skip their checks.

    Returns:
        The drifts sorted by severity (critical first), kind and subject; the
        declared controls whose checks ran without breaking them; the checks that ran.
    """
    drifts: list[Drift] = []
    checked = []
    for name, (needs, run) in _RUN.items():
        if any(getattr(live, attr) is None for attr in needs):
            continue
        checked.append(name)
        drifts.extend(run(m, live))
    broken = {d.control for d in drifts if d.control is not None}
    if any(d.kind in _POLICY_KINDS for d in drifts):
        # A wider or unknown role may reach other devices' topics and commands.
        broken |= set(CHECKS["policy-roles"])
    declared = declared_controls(m)
    confirmed = frozenset(
        c for name in checked for c in CHECKS[name] if declared[c] and c not in broken
    )
    rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    drifts.sort(key=lambda d: (rank[d.severity], d.kind, d.subject))
    return CheckResult(drifts=tuple(drifts), confirmed=confirmed, checked=tuple(checked))
