"""Playbooks as data: parse, validate and bind them, and decide what a run needs.

A playbook is a YAML (or JSON) document a tenant keeps in fleetward,
versioned like the communication policy. It names the cohort it acts on,
the steps to take in order, how many approvals its destructive steps need
and above what size a run must be confirmed::

    name: mass-credential-revocation
    description: Cut off devices whose keys may be in the wrong hands.
    params: {batch: null, reason: keyCompromise}   # null: the run must give it
    cohort: {batch: "{batch}"}
    confirm_above: 100
    approvals: 1
    steps:
      - {action: quarantine}
      - {action: revoke, reason: "{reason}"}
      - {action: webhook, url: "https://hooks.example/incident"}

A string that is exactly ``{name}`` becomes the run's parameter (any JSON
type); a longer string has ``{name}`` replaced by its text. Nothing else is
evaluated. Everything here is pure: the service resolves cohorts and runs
steps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.tenancy.roles import Permission

__all__ = [
    "ACTIONS",
    "DESTRUCTIVE",
    "MAX_SOURCE_BYTES",
    "Cohort",
    "PlaybookSpec",
    "Step",
    "approvals_needed",
    "bind",
    "check_confirmation",
    "parse",
]

MAX_SOURCE_BYTES = 64 * 1024  # a playbook is a page of YAML, not a data set
MAX_STEPS = 32
MAX_DEVICES_PARAM = 100_000  # ids one run may name (identity.MAX_COHORT)
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_PARAM = re.compile(r"\{([a-z_][a-z0-9_]{0,31})\}")

# What each step does and which permissions the operators who plan and
# execute the run must hold for it (the run then acts with those rights,
# plus approvals).
ACTIONS: dict[str, tuple[Permission, ...]] = {
    "quarantine": (Permission.DEVICE_MANAGE,),
    "revoke": (Permission.CERT_REVOKE, Permission.DEVICE_MANAGE),
    "rotate-ca": (Permission.CA_MANAGE,),
    "renew": (Permission.DEVICE_MANAGE,),
    "distrust-ca": (Permission.CA_MANAGE,),
    # Creating a campaign is a release manager's right (security approves).
    "emergency-release": (Permission.RELEASE_MANAGE,),
    "webhook": (Permission.INCIDENT_MANAGE,),
}
# Steps that cannot be taken back by the operator who ran them: each needs
# approvals from other security operators before the run starts.
DESTRUCTIVE = frozenset({"revoke", "rotate-ca", "distrust-ca", "emergency-release"})
_STEP_ARGS: dict[str, frozenset[str]] = {
    "quarantine": frozenset({"reason"}),
    "revoke": frozenset({"reason"}),
    # window: seconds the retired CA stays trusted; reason: what its
    # certificates are revoked for (superseded | cACompromise).
    "rotate-ca": frozenset({"window", "reason"}),
    "renew": frozenset(),
    "distrust-ca": frozenset(),
    "emergency-release": frozenset({"release"}),
    "webhook": frozenset({"url"}),
}
_COHORT_KEYS = frozenset({"all", "alert", "batch", "devices", "labels", "product"})
DEFAULT_CONFIRM_ABOVE = 100
# identity.rotation's limits, written out here: this module is pure.
MAX_TRUST_WINDOW_S = 366 * 24 * 3600
ROTATION_REASONS = ("superseded", "cACompromise")
EMERGENCY_APPROVALS = 2  # ota.campaigns: an emergency release needs two security approvals


@dataclass(frozen=True)
class Step:
    """One action and its arguments (after binding)."""

    action: str
    args: Mapping[str, Any]

    @property
    def destructive(self) -> bool:
        """Whether the step needs approvals."""
        return self.action in DESTRUCTIVE


@dataclass(frozen=True)
class Cohort:
    """Which devices a run acts on; every given filter must match."""

    all: bool = False
    alert: bool = False  # the devices named by the incident's alert
    batch: int | None = None
    devices: tuple[str, ...] | None = None
    labels: Mapping[str, str] | None = None
    product: str | None = None

    def describe(self) -> str:
        """A one-line reading of the selector."""
        parts = []
        if self.all:
            parts.append("every device")
        if self.alert:
            parts.append("the alert's devices")
        if self.batch is not None:
            parts.append(f"batch {self.batch}")
        if self.devices is not None:
            parts.append(f"{len(self.devices)} named device(s)")
        if self.labels:
            parts.append("labels " + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())))
        if self.product is not None:
            parts.append(f"product {self.product}")
        return " and ".join(parts)


@dataclass(frozen=True)
class PlaybookSpec:
    """A parsed playbook (parameters still unbound)."""

    name: str
    description: str
    params: Mapping[str, Any]  # name -> default (None: required)
    cohort: Mapping[str, Any]
    steps: tuple[Mapping[str, Any], ...]
    approvals: int
    confirm_above: int
    tenant: str | None = None  # a tenant the document names (it must be the one storing it)

    @property
    def destructive(self) -> bool:
        """Whether any step needs approvals."""
        return any(s["action"] in DESTRUCTIVE for s in self.steps)


def _fail(detail: str) -> InvalidInputError:
    return InvalidInputError(f"playbook: {detail}")


class _Loader(yaml.SafeLoader):
    """YAML without anchors and aliases: a playbook is a page of data, and
    aliases let 400 bytes expand into millions of nodes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("anchors and aliases are not allowed in a playbook")
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if getattr(event, "anchor", None) is not None:
            raise yaml.YAMLError("anchors and aliases are not allowed in a playbook")
        return super().compose_node(parent, index)


def _check_plain(value: Any, depth: int = 0) -> None:
    """Only JSON's types (YAML also makes dates, bytes and sets)."""
    if depth > 16:
        raise _fail("nested deeper than 16 levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise _fail(f"keys must be text, not {k!r}")
            _check_plain(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_plain(v, depth + 1)
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise _fail(f"{value!r} is a {type(value).__name__}; use text, numbers, lists or mappings")


def _whole(value: Any, what: str) -> int:
    """An id: a whole number (or its digits as text), never a bool or a fraction."""
    if isinstance(value, bool) or not (
        isinstance(value, int)
        or (isinstance(value, str) and len(value) <= 18 and value.isascii() and value.isdigit())
    ):
        raise _fail(f"{what} must be a whole number id, not {value!r}")
    return int(value)


def parse(source: str) -> PlaybookSpec:
    """Parse and validate a playbook's text.

    Raises:
        PayloadTooLargeError: over :data:`MAX_SOURCE_BYTES`.
        InvalidInputError: not YAML, or not a valid playbook (the message
            says which field and why).
    """
    if len(source.encode()) > MAX_SOURCE_BYTES:
        raise PayloadTooLargeError(f"playbook is over {MAX_SOURCE_BYTES} bytes")
    try:
        doc = yaml.load(source, Loader=_Loader)  # noqa: S506 - a SafeLoader without aliases
    except yaml.YAMLError as exc:
        raise _fail(f"not valid YAML: {exc}") from exc
    _check_plain(doc)
    if not isinstance(doc, dict):
        raise _fail("must be a mapping with name, cohort and steps")
    unknown = set(doc) - {
        "name", "description", "params", "cohort", "steps", "approvals", "confirm_above", "tenant",
    }  # fmt: skip
    if unknown:
        raise _fail(f"unknown field(s) {sorted(unknown)}")
    # A playbook belongs to the tenant that stores it; naming another is a
    # mistake we refuse rather than ignore (see service.put_playbook).
    if "tenant" in doc and not isinstance(doc["tenant"], str):
        raise _fail("tenant must be a string")
    name = doc.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise _fail("name must be 1-64 characters of a-z, 0-9 and '-'")
    description = doc.get("description", "")
    if not isinstance(description, str) or len(description) > 2000:
        raise _fail("description must be text of at most 2000 characters")
    params = doc.get("params") or {}
    if not isinstance(params, dict) or not all(
        isinstance(k, str) and re.fullmatch(r"[a-z_][a-z0-9_]{0,31}", k) for k in params
    ):
        raise _fail("params must map names ([a-z_][a-z0-9_]*) to defaults (null: required)")
    cohort = doc.get("cohort")
    if not isinstance(cohort, dict) or not cohort:
        raise _fail(
            "cohort must be a mapping with at least one of " + ", ".join(sorted(_COHORT_KEYS))
        )
    if set(cohort) - _COHORT_KEYS:
        raise _fail(f"cohort: unknown selector(s) {sorted(set(cohort) - _COHORT_KEYS)}")
    steps = doc.get("steps")
    if not isinstance(steps, list) or not steps:
        raise _fail("steps must be a non-empty list")
    if len(steps) > MAX_STEPS:
        raise _fail(f"at most {MAX_STEPS} steps")
    for i, step in enumerate(steps, 1):
        if not isinstance(step, dict) or step.get("action") not in ACTIONS:
            raise _fail(f"step {i}: action must be one of {', '.join(ACTIONS)}")
        extra = set(step) - {"action"} - _STEP_ARGS[step["action"]]
        if extra:
            raise _fail(f"step {i} ({step['action']}): unknown argument(s) {sorted(extra)}")
    approvals = doc.get("approvals", 0)
    confirm_above = doc.get("confirm_above", DEFAULT_CONFIRM_ABOVE)
    for field, value in (("approvals", approvals), ("confirm_above", confirm_above)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _fail(f"{field} must be a whole number >= 0")
    used = set(_PARAM.findall(json.dumps([cohort, steps])))
    undeclared = used - set(params)
    if undeclared:
        raise _fail(f"parameter(s) {sorted(undeclared)} used but not declared in params")
    spec = PlaybookSpec(
        name=name,
        description=description,
        params=dict(params),
        cohort=dict(cohort),
        steps=tuple(dict(s) for s in steps),
        approvals=approvals,
        confirm_above=confirm_above,
        tenant=doc.get("tenant"),
    )
    # Bind with placeholders so a malformed literal is refused when stored,
    # not when an incident is under way.
    _check_literals(spec)
    return spec


def _check_literals(spec: PlaybookSpec) -> None:
    probe = {k: v for k, v in spec.params.items() if v is not None}
    if set(probe) == set(spec.params):
        bind(spec, {})


def _substitute(value: Any, params: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _PARAM.fullmatch(value)
        if whole:
            return params[whole.group(1)]
        return _PARAM.sub(lambda m: str(params[m.group(1)]), value)
    if isinstance(value, list):
        return [_substitute(v, params) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, params) for k, v in value.items()}
    return value


def _cohort(raw: Mapping[str, Any]) -> Cohort:
    def fail(detail: str) -> InvalidInputError:
        return _fail(f"cohort: {detail}")

    for flag in ("all", "alert"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise fail(f"{flag} must be true or false")
    batch = raw.get("batch")
    if batch is not None:
        batch = _whole(batch, "cohort: batch")
    devices = raw.get("devices")
    if devices is not None:
        if isinstance(devices, str):
            devices = [d for d in re.split(r"[\s,]+", devices) if d]
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise fail("devices must be a list of device ids")
        if len(devices) > MAX_DEVICES_PARAM:
            raise fail(f"at most {MAX_DEVICES_PARAM} named devices")
        devices = tuple(dict.fromkeys(devices))
    labels = raw.get("labels")
    if labels is not None and (
        not isinstance(labels, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
    ):
        raise fail("labels must map label names to text values")
    product = raw.get("product")
    if product is not None and not isinstance(product, str):
        raise fail("product must be text")
    cohort = Cohort(
        all=bool(raw.get("all", False)),
        alert=bool(raw.get("alert", False)),
        batch=batch,
        devices=devices,
        labels=labels,
        product=product,
    )
    if not cohort.describe():
        raise fail("select something (all: true selects every device, on purpose)")
    return cohort


def _step(raw: Mapping[str, Any], index: int) -> Step:
    action = str(raw["action"])
    args = {k: v for k, v in raw.items() if k != "action"}
    where = f"step {index} ({action})"
    if action == "emergency-release":
        args["release"] = _whole(args.get("release"), f"{where}: release")
    if action == "webhook":
        url = args.get("url")
        if not isinstance(url, str) or not re.fullmatch(r"https?://[^\s]{1,2000}", url):
            raise _fail(f"{where}: url must be an http(s) URL")
    if "reason" in args and not isinstance(args["reason"], str):
        raise _fail(f"{where}: reason must be text")
    if action == "rotate-ca":
        if "window" in args:
            window = _whole(args["window"], f"{where}: window (seconds)")
            if not 0 <= window <= MAX_TRUST_WINDOW_S:
                raise _fail(f"{where}: window must be 0 to {MAX_TRUST_WINDOW_S} seconds")
            args["window"] = window
        if args.get("reason", "superseded") not in ROTATION_REASONS:
            raise _fail(f"{where}: reason must be one of {', '.join(ROTATION_REASONS)}")
    return Step(action, args)


def bind(spec: PlaybookSpec, params: Mapping[str, Any]) -> tuple[Cohort, tuple[Step, ...]]:
    """Fill in a run's parameters; returns the cohort selector and the steps.

    Raises:
        InvalidInputError: an unknown or missing parameter, or a value that
            makes a selector or step invalid.
    """
    unknown = set(params) - set(spec.params)
    if unknown:
        raise _fail(
            f"unknown parameter(s) {sorted(unknown)}; this playbook takes {sorted(spec.params)}"
        )
    values = {**{k: v for k, v in spec.params.items() if v is not None}, **params}
    missing = [k for k in spec.params if values.get(k) is None]
    if missing:
        raise _fail(f"parameter(s) {missing} are required")
    cohort = _cohort(_substitute(spec.cohort, values))
    steps = tuple(_step(_substitute(s, values), i) for i, s in enumerate(spec.steps, 1))
    return cohort, steps


def approvals_needed(spec: PlaybookSpec) -> int:
    """Approvals a run needs before it starts: what the playbook asks, at
    least one when a step is destructive, two when it pushes an emergency
    release (the OTA rule)."""
    needed = spec.approvals
    actions = {s["action"] for s in spec.steps}
    if actions & DESTRUCTIVE:
        needed = max(needed, 1)
    if "emergency-release" in actions:
        needed = max(needed, EMERGENCY_APPROVALS)
    return needed


def check_confirmation(
    *, size: int, population: int, confirm_above: int, confirm: int | None, what: str
) -> None:
    """Refuse a cohort that matches nothing, or that is large (or is the whole
    population) without ``confirm`` repeating its exact size.

    Raises:
        InvalidInputError: the reason, and what to send to go ahead.
    """
    if size == 0:
        raise InvalidInputError(f"the cohort ({what}) matches no device: nothing to do")
    if confirm is not None and confirm != size:
        raise InvalidInputError(
            f"confirm={confirm} but the cohort ({what}) has {size} devices; nothing was done"
        )
    everything = size == population and size > 1
    if (size > confirm_above or everything) and confirm is None:
        why = "every device in scope" if everything else f"more than {confirm_above} devices"
        raise InvalidInputError(
            f"the cohort ({what}) is {size} devices, {why}: look at the dry run and "
            f"repeat with confirm={size} if that is intended"
        )
