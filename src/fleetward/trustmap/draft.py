"""Drafting a trust map from the live installation (pure): ``fleetward trustmap init``.

A draft records what the installation holds today, not what it should hold,
so that ``trustmap check`` on the fresh draft finds no drift and every later
change shows up as one. The operator then tightens the answers the draft
calls out (and fixes the installation to match). :func:`from_live` builds the
map's dict form (schema version 1) from :class:`~fleetward.trustmap.LiveFacts`;
:func:`to_yaml` writes it with a header that says where it came from and
lists what needs a human:

- **weak spots** (:func:`weak_spots`): loose answers recorded as they are,
  e.g. production certifying software keys appears as ``key_origin: any``;
- **gaps** (:func:`gaps`): live states no trust map may declare (a listener
  trusting another environment's CA, a factory token that can enroll outside
  its batches, a product without a targets role, a first wave of 100 %, ...).
  The schema refuses them on purpose, so the draft declares the safe answer
  and ``trustmap check`` reports each gap as the drift :attr:`Gap.drift`;
- **unknowns** (:func:`unknowns`): facts the installation cannot tell yet
  (``None`` in ``LiveFacts``) and the answers not read from it at all.

How each answer is drafted (the loosest live value, so the draft holds):

1. ``identity``: every environment the live facts mention (issuing CAs,
   devices, listeners, factories; ``production`` when none). Its issuing CA
   key storage is the live one (``file`` when it has no active issuing CA:
   that declaration can never drift). Its key origin is ``hardware-attested``
   when no live device of the product there holds another key (also when it
   has no device yet: the first software key will then be a drift), else
   ``any``. The root CA is online or offline as live.
2. ``code``: the live TUF root threshold, keys and storage, the product's
   live targets threshold, the boot stages the newest release measures;
   ``attestation_required_for_updates`` only when every live campaign
   requires it.
3. ``cloud``: a listener per live listener, trusting its own environment;
   the live policy roles as they are; the live service identities.
4. ``updates``: the largest live first wave (below 100 %); the gate, A/B
   slots and fallback are not live facts and are fleetward's defaults.
5. ``detection``: the live detectors and their configured responses.
6. ``factories``: every live factory with the environments it can provision.
7. ``assets``, ``flows`` and ``boundaries``: the default picture of a
   fleetward installation (the shape of ``docs/trustmap.example.yaml``).

A fact left unknown (``None``) gets the strict answer or fleetward's
default (:data:`UNKNOWN`): its check is skipped until the installation can
tell, and the first real value is then compared with a safe declaration.
The dict form cannot carry YAML comments, so these choices are documented
here and listed in the header :func:`to_yaml` writes.
"""

from __future__ import annotations

import datetime as dt
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.trustmap._live import BOOT_STAGES, LiveFacts, LiveRole
from fleetward.trustmap.checks import covers
from fleetward.trustmap.schema import DETECTORS, ENVIRONMENTS, MAX_MAP_BYTES, TrustMap

__all__ = [
    "LARGE_FIRST_WAVE",
    "MAX_NOTES",
    "UNKNOWN",
    "Gap",
    "from_live",
    "gaps",
    "to_yaml",
    "unknowns",
    "weak_spots",
]

# The schema's limits on names, templates and thresholds (schema.py); a live
# value beyond them is a gap (names, templates) or clamped (thresholds: a
# higher live threshold still satisfies the lower declared one).
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_MAX_TEMPLATE = 256
_MAX_THRESHOLD = 16
_HARDWARE = "hardware-attested"

# The answers a draft declares for facts the installation cannot tell:
# strict where a choice exists, fleetward's defaults for numbers.
UNKNOWN: dict[str, Any] = {
    "root_ca": "offline",
    "tuf_root": {"threshold": 2, "keys": 3, "storage": "offline"},  # `fleetward init`'s root
    "targets_threshold": 1,  # a product's targets role as `ota products` creates it
    "first_wave_max_percent": 5,
    "gate": {"min_success_ratio": 0.95, "max_failure_ratio": 0.05},  # ota.rollout.GatePolicy
}
LARGE_FIRST_WAVE = 10.0  # % of the fleet: a first wave above it is called out as weak
# Lines per header section: the notes name tenant-written objects (roles,
# factories), of which LiveFacts may hold up to 1024, and a header is read by people.
MAX_NOTES = 40
_MAX_COMMENT = 400  # characters of one header note (a longer one is cut)
_WRAP = 80  # columns of a header note's lines

# The default picture of a fleetward installation (docs/trustmap.example.yaml).
_ASSETS = [
    {"name": "device-key", "kind": "key", "lives_in": "device",
     "description": "the device's identity key"},
    {"name": "issuing-ca-keys", "kind": "key", "lives_in": "device-plane",
     "description": "the issuing CA key of each environment"},
    {"name": "tuf-keys", "kind": "key", "lives_in": "ota-repository",
     "description": "the TUF role keys that sign metadata and releases"},
    {"name": "firmware", "kind": "firmware", "lives_in": "ota-repository"},
    {"name": "operator-tokens", "kind": "credential", "lives_in": "operators"},
    {"name": "factory-tokens", "kind": "credential", "lives_in": "factory-station"},
    {"name": "telemetry", "kind": "data", "lives_in": "database"},
    {"name": "communication-policy", "kind": "configuration", "lives_in": "database"},
]  # fmt: skip
_FLOWS = [
    ("factory-station", "device-plane", "CSR and key attestation", "EST/HTTPS", True),
    ("device", "broker", "telemetry, boot evidence, command results", "MQTT/TLS", True),
    ("broker", "device", "commands and update offers", "MQTT/TLS", True),
    ("device", "ota-repository", "TUF metadata and images", "HTTPS", True),
    ("operators", "operator-plane", "API calls", "HTTPS", True),
    ("device-plane", "database", "certificates and verdicts", "SQL", False),
    ("operator-plane", "database", "operator changes and audit", "SQL", False),
]
_FLOW_KEYS = ("source", "target", "data", "protocol", "authenticated", "encrypted")
_BOUNDARIES = [
    {"name": "field", "contains": ["device"]},
    {"name": "factory", "contains": ["factory-station"]},
    {"name": "cloud",
     "contains": ["broker", "device-plane", "operator-plane", "ota-repository", "database"]},
    {"name": "people", "contains": ["operators"]},
]  # fmt: skip
_NOT_LIVE = (
    "updates.gate, ab_slots and automatic_fallback: fleetward's defaults and OTA design "
    "(docs/ota.md), not read from the installation",
    "certificate_days_max: the schema default, not read from the issuance policy",
    "assets, flows and boundaries: the default picture of a fleetward installation",
)


@dataclass(frozen=True)
class Gap:
    """A live state no trust map may declare; ``trustmap check`` reports it as ``drift``."""

    drift: str  # the checks.DRIFT_KINDS kind the check reports
    message: str


def _order(values: Iterable[str], order: Sequence[str]) -> list[str]:
    have = set(values)
    return [v for v in order if v in have]


def _environments(live: LiveFacts) -> list[str]:
    envs: set[str] = set(live.ca_key_backends or {})
    envs |= {e for e, _ in (live.device_key_origins or {})}
    envs |= set(live.listener_trust or {})
    for fenvs in (live.factory_environments or {}).values():
        envs |= fenvs
    return _order(envs, ENVIRONMENTS) or ["production"]


def _software(live: LiveFacts, env: str) -> int:
    origins = live.device_key_origins or {}
    return sum(n for (e, o), n in origins.items() if e == env and o != _HARDWARE)


def _identity(live: LiveFacts, envs: list[str]) -> dict[str, Any]:
    backends = live.ca_key_backends or {}
    return {
        "root_ca": live.root_ca or UNKNOWN["root_ca"],
        "environments": {
            env: {
                "issuing_ca_key": backends.get(env, "file"),
                "key_origin": "any" if _software(live, env) else _HARDWARE,
            }
            for env in envs
        },
    }


def _code(live: LiveFacts, product: str) -> dict[str, Any]:
    default = UNKNOWN["tuf_root"]
    threshold = min(live.tuf_root_threshold or default["threshold"], _MAX_THRESHOLD)
    keys = live.tuf_root_keys if live.tuf_root_keys is not None else default["keys"]
    targets = (live.release_thresholds or {}).get(product, UNKNOWN["targets_threshold"])
    attested = live.campaign_require_attestation or {}
    return {
        "tuf_root": {
            "threshold": threshold,
            "keys": min(max(keys, threshold), _MAX_THRESHOLD),
            "storage": live.tuf_root_storage or default["storage"],
        },
        "targets_threshold": min(targets, _MAX_THRESHOLD),
        # Unknown, or no stage measured (a gap): the strict answer, every stage.
        "boot_stages_measured": _order(live.boot_stages_measured or BOOT_STAGES, BOOT_STAGES),
        "attestation_required_for_updates": all(attested.values()),
    }


def _role(name: str, role: LiveRole) -> dict[str, Any]:
    def fits(templates: tuple[str, ...]) -> list[str]:
        return [t for t in templates if len(t) <= _MAX_TEMPLATE]

    out: dict[str, Any] = {"name": name}
    for key, values in (
        ("publish", fits(role.publish)),
        ("subscribe", fits(role.subscribe)),
        ("commands", [c for c in role.commands if _NAME.fullmatch(c)]),
    ):
        if values:
            out[key] = list(dict.fromkeys(values))  # a live list may repeat an entry
    return out


def _cloud(live: LiveFacts, envs: list[str]) -> dict[str, Any]:
    listening = _order(live.listener_trust or {}, ENVIRONMENTS) or envs
    roles = live.policy_roles or {}
    return {
        "mtls": "required",
        "listeners": {env: {"trusts": [env]} for env in listening},
        "policy_roles": [_role(n, r) for n, r in sorted(roles.items()) if _NAME.fullmatch(n)],
        "service_identities": sorted(
            s for s in (live.service_identities or ()) if _NAME.fullmatch(s)
        ),
    }


def _updates(live: LiveFacts) -> dict[str, Any]:
    waves = [p for p in (live.campaign_first_wave_percent or {}).values() if p < 100]
    return {
        "first_wave_max_percent": max(waves, default=UNKNOWN["first_wave_max_percent"]),
        "gate": dict(UNKNOWN["gate"]),
        "ab_slots": True,
        "automatic_fallback": True,
    }


def _detection(live: LiveFacts) -> dict[str, Any]:
    on = _order(live.detectors_enabled or (), DETECTORS)
    if not on:  # unknown: every detector; none running (a gap): the first one
        on = list(DETECTORS) if live.detectors_enabled is None else [DETECTORS[0]]
    responses = {k: r for k, r in live.detector_responses.items() if k in on and r != "none"}
    return {"detectors": on, "responses": {k: responses[k] for k in _order(responses, on)}}


def _factories(live: LiveFacts, envs: list[str]) -> list[dict[str, Any]]:
    return [
        # A factory that can provision no environment is declared in the first one.
        {"name": name, "environments": _order(fenvs, ENVIRONMENTS) or envs[:1]}
        for name, fenvs in sorted((live.factory_environments or {}).items())
        if _NAME.fullmatch(name)
    ]


def from_live(live: LiveFacts, *, product: str) -> dict[str, Any]:
    """A trust map (dict form, schema version 1) stating what the installation holds.

    The rules are in the module docstring. The result loads with
    :func:`fleetward.trustmap.load`, and :func:`fleetward.trustmap.check` of it
    against ``live`` reports exactly the drifts :func:`gaps` names (none
    when there is no gap).

    Args:
        live: the product's live facts (``None`` facts get :data:`UNKNOWN`).
        product: the product the map describes.

    Returns:
        The map as plain dicts and lists, ready for :func:`to_yaml`.

    Raises:
        InvalidInputError: the product's name cannot be a trust map's product.
    """
    if not isinstance(product, str) or not _NAME.fullmatch(product):
        raise InvalidInputError(
            f"product {product!r:.80}: a trust map names its product with 1-64 of "
            "[a-z0-9._-], starting with a letter or digit"
        )
    envs = _environments(live)
    return {
        "version": 1,
        "product": product,
        "identity": _identity(live, envs),
        "code": _code(live, product),
        "cloud": _cloud(live, envs),
        "updates": _updates(live),
        "detection": _detection(live),
        "factories": _factories(live, envs),
        "assets": [dict(a) for a in _ASSETS],
        "flows": [dict(zip(_FLOW_KEYS, (*f[:4], True, f[4]), strict=True)) for f in _FLOWS],
        "boundaries": [{"name": b["name"], "contains": list(b["contains"])} for b in _BOUNDARIES],
    }


def _role_gaps(live: LiveFacts) -> list[Gap]:
    out = []
    for name, role in sorted((live.policy_roles or {}).items()):
        if not _NAME.fullmatch(name):
            out.append(Gap("policy-role-undeclared", f"policy role {name!r} has a name a trust "
                           "map cannot hold"))  # fmt: skip
            continue
        for key in ("publish", "subscribe"):
            templates: tuple[str, ...] = getattr(role, key)
            kept = [t for t in templates if len(t) <= _MAX_TEMPLATE]
            for t in templates:
                if len(t) > _MAX_TEMPLATE and not any(covers(k, t) for k in kept):
                    out.append(Gap("policy-role-broader", f"policy role {name}: a {key} "
                                   f"template of {len(t)} characters (a map holds "
                                   f"{_MAX_TEMPLATE})"))  # fmt: skip
        for c in role.commands:
            if not _NAME.fullmatch(c):
                out.append(Gap("policy-role-broader", f"policy role {name}: command {c!r} has "
                               "a name a trust map cannot hold"))  # fmt: skip
    return out


def gaps(live: LiveFacts, *, product: str) -> tuple[Gap, ...]:
    """The live states no trust map may declare, each with the drift it will be.

    Only states whose check runs (its facts known) are gaps: an unknown fact
    is listed by :func:`unknowns` instead.

    Args:
        live: the product's live facts.
        product: the product the map describes.

    Returns:
        The gaps, in the order of the checks (``checks.py``).
    """
    out: list[Gap] = []
    if live.release_thresholds is not None and product not in live.release_thresholds:
        out.append(Gap("release-threshold", f"product {product} has no targets role in the "
                       "TUF repository (`fleetward ota` registers products)"))  # fmt: skip
    if live.boot_stages_measured is not None and not live.boot_stages_measured:
        out.append(Gap("boot-stage-unmeasured", "the newest deployable release has no "
                       "reference measurement for any boot stage"))  # fmt: skip
    full = sorted(c for c, p in (live.campaign_first_wave_percent or {}).items() if p >= 100)
    if full:
        out.append(Gap("first-wave-too-large", "campaign(s) updating the whole fleet in their "
                       f"first wave: {', '.join(full)}"))  # fmt: skip
    if live.detectors_enabled is not None and not live.detectors_enabled:
        out.append(Gap("detector-off", "no detector runs"))
    out += _role_gaps(live)
    for env, trusted in sorted((live.listener_trust or {}).items()):
        if others := sorted(trusted - {env}):
            out.append(Gap("listener-trusts-other-environment", f"the {env} listener trusts "
                           f"the CAs of {', '.join(others)}"))  # fmt: skip
    for s in sorted(live.service_identities or ()):
        if not _NAME.fullmatch(s):
            out.append(Gap("service-identity-undeclared", f"service identity {s!r} has a name "
                           "a trust map cannot hold"))  # fmt: skip
    if live.factory_environments is not None:
        for name in sorted(live.factory_environments):
            if not _NAME.fullmatch(name):
                out.append(Gap("factory-undeclared", f"factory {name!r} has a name a trust map "
                               "cannot hold (lower case only)"))  # fmt: skip
        for name, tokens in sorted(live.factory_unbound_tokens.items()):
            if tokens:
                out.append(Gap("factory-token-unbound", f"factory {name}: token(s) "
                               f"{', '.join(sorted(tokens))} can enroll outside its "
                               "batches"))  # fmt: skip
    return tuple(out)


def unknowns(live: LiveFacts) -> tuple[str, ...]:
    """The facts the installation cannot tell yet, and what the draft declares instead.

    Args:
        live: the product's live facts.

    Returns:
        One sentence per unknown fact, then the answers not read live at all.
    """
    out = []
    unknown = {
        "device_key_origins": "device keys: each environment drafted hardware-attested",
        "ca_key_backends": "issuing CA keys: drafted file",
        "root_ca": f"root CA: drafted {UNKNOWN['root_ca']}",
        "tuf_root_threshold": "TUF root (no repository yet): drafted "
        + "{threshold} of {keys} keys, {storage}".format(**UNKNOWN["tuf_root"]),
        "release_thresholds": f"targets role: drafted threshold {UNKNOWN['targets_threshold']}",
        "boot_stages_measured": "measured boot stages (no deployable release): drafted all",
        "campaign_first_wave_percent": "campaign waves: drafted "
        f"{UNKNOWN['first_wave_max_percent']} %",
        "campaign_require_attestation": "campaign gates: drafted attestation required",
        "detectors_enabled": "detectors: drafted every detector on",
        "policy_roles": "policy roles: drafted none",
        "listener_trust": "listeners: drafted one per environment",
        "service_identities": "service identities: drafted none",
        "factory_environments": "factories: drafted none",
    }
    for attr, text in unknown.items():
        if getattr(live, attr) is None:
            out.append(f"unknown {text}")
    if live.campaign_first_wave_percent == {}:
        out.append(f"no campaign yet: first wave drafted {UNKNOWN['first_wave_max_percent']} % "
                   "and attestation required, the strict answers")  # fmt: skip
    backends = live.ca_key_backends or {}
    for env in _environments(live):
        if live.ca_key_backends is not None and env not in backends:
            out.append(f"{env} has no active issuing CA: drafted file")
        if live.device_key_origins is not None and not any(
            e == env and n for (e, _), n in live.device_key_origins.items()
        ):
            out.append(f"{env} has no device of the product yet: drafted hardware-attested "
                       "(relax to any if it takes software keys)")  # fmt: skip
    return (*out, *_NOT_LIVE)


def weak_spots(doc: Mapping[str, Any]) -> tuple[str, ...]:
    """The loose answers a drafted map records (what IS, called out for review).

    Args:
        doc: a trust map in dict form (as :func:`from_live` returns).

    Returns:
        One sentence per weak answer; empty when none.

    Raises:
        InvalidInputError: ``doc`` is not a valid trust map.
    """
    try:
        m = TrustMap.model_validate(doc)
    except ValueError as exc:
        raise InvalidInputError(f"not a valid trust map: {exc}") from exc
    out = []
    for env in ("production", "drill"):
        ident = m.identity.environments.get(env)
        if ident is not None and ident.key_origin == "any":
            out.append(f"{env} certifies software keys (key_origin: any)")
        if env == "production" and ident is not None and ident.issuing_ca_key == "file":
            out.append("the production issuing CA key is a file on the server, not in an HSM")
    if m.identity.root_ca == "online":
        out.append("the root CA key is on the server (root_ca: online)")
    root = m.code.tuf_root
    if root.storage == "online":
        out.append("the TUF root keys are reachable from the server (storage: online)")
    if root.threshold < 2:
        out.append("one TUF root key alone can replace the root of trust (threshold 1)")
    if m.code.targets_threshold < 2:
        out.append(f"one signature makes a release of {m.product} (targets_threshold 1)")
    if not m.code.attestation_required_for_updates:
        out.append("campaigns count a device updated without boot attestation")
    if missing := [s for s in BOOT_STAGES if s not in m.code.boot_stages_measured]:
        out.append(f"boot stages not measured: {', '.join(missing)}")
    if m.updates.first_wave_max_percent > LARGE_FIRST_WAVE:
        out.append(f"a first wave may reach {m.updates.first_wave_max_percent:g} % of the fleet")
    for kind in ("boot-integrity-cohort", "authz-failures", "vulnerability-exploited"):
        if kind not in m.detection.detectors:
            out.append(f"the {kind} detector is off")
    return tuple(out)


def _comment(text: str) -> str:
    # Header text names tenant-written objects; a newline or control character
    # in one must not end the comment and inject YAML into the map.
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= _MAX_COMMENT else clean[: _MAX_COMMENT - 3] + "..."


def _section(title: str, items: Iterable[str]) -> list[str]:
    notes = list(items)
    if not notes:
        return []
    lines = ["#", f"# {title}"]
    for note in notes[:MAX_NOTES]:
        wrapped = textwrap.wrap(_comment(note), width=_WRAP, break_on_hyphens=False) or [""]
        lines += [f"#   - {wrapped[0]}", *(f"#     {more}" for more in wrapped[1:])]
    if len(notes) > MAX_NOTES:
        lines.append(f"#   - ... and {len(notes) - MAX_NOTES} more")
    return lines


def to_yaml(
    doc: Mapping[str, Any], *, tenant: str, now: dt.datetime, live: LiveFacts | None = None
) -> str:
    """The drafted map as YAML, under a header saying where it came from and what to review.

    Args:
        doc: the map (as :func:`from_live` returns).
        tenant: the tenant it was drafted for (named in the header).
        now: when it was drafted.
        live: the facts it was drafted from; with them the header also lists
            the gaps and the unknown facts.

    Returns:
        YAML text that :func:`fleetward.trustmap.load` reads.

    Raises:
        InvalidInputError: ``doc`` is not a valid trust map.
        PayloadTooLargeError: the map is larger than a trust map may be.
    """
    product = str(doc.get("product", ""))
    lines = [
        f"# Trust map of {_comment(product)}: a DRAFT written by `fleetward trustmap init` from",
        f"# the live installation of tenant {_comment(tenant)} at "
        f"{now.astimezone(dt.UTC).isoformat(timespec='seconds')}.",
        "# It records what the installation holds today, not what it should hold:",
        "# review every answer, tighten the weak ones and fix the installation to match",
        "# (`fleetward trustmap check` then holds the installation to the map).",
    ]
    lines += _section("Weak spots recorded as they are:", weak_spots(doc))
    if live is not None:
        lines += _section(
            "Live states no trust map may declare (the draft states the safe answer; "
            "`trustmap check` reports each as a drift):",
            (f"{g.message} [{g.drift}]" for g in gaps(live, product=product)),
        )
        lines += _section("Not known or not read from the installation:", unknowns(live))
    body = yaml.safe_dump(
        dict(doc), sort_keys=False, default_flow_style=None, width=100, allow_unicode=False
    )
    text = "\n".join(lines) + "\n" + body
    size = len(text.encode())
    if size > MAX_MAP_BYTES:
        raise PayloadTooLargeError(
            f"the drafted map of {product} is {size} bytes, over the {MAX_MAP_BYTES} a map may be"
        )
    return text
