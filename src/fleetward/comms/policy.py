"""The device communication policy: what a device may publish, receive and be told.

Pure. A tenant's policy is a versioned document of **roles**. A role selects
devices (by environment, product and labels; no selector means every
device) and allows
``publish`` and ``subscribe`` on topic **templates**, and names the
**commands** a device may receive. A role may also ``deny`` templates and
commands. The meaning, which the broker plugin must reproduce exactly (the
differential tests check it):

1. A device's roles are every role whose selector matches it, or only the
   built-in :data:`QUARANTINE` role while the device is quarantined. A
   selector's ``environment`` matches the environment of the certificate the
   device connects with (each environment has its own broker listener, and
   its own broker identity: ``OU=<environment>``).
2. An explicit deny in any of its roles wins.
3. Otherwise a rule of one of its roles must allow the action.
4. Everything else is denied.

Topics live under ``fw/<tenant>/``. Every template must start with
``fw/{tenant}/``, so no policy can reach another tenant's topics: tenant
isolation holds by construction, not by care. A template level is a literal,
``+``, a final ``#``, or a variable that fills the whole level: ``{device}``,
``{tenant}``, ``{product}`` or ``{label.<key>}``. A rule with a label the
device does not have does not apply to it.

Commands are topics ``fw/<tenant>/<device>/cmd/<name>``. A device's own
command topics are governed **only** by the command names of its roles, never
by publish/subscribe templates, so a wildcard template cannot let an
unlisted command through. Any role with commands lets the device subscribe to
``fw/{tenant}/{device}/cmd/+``; each delivery is then checked by name.

Three checks are answered: ``publish`` (a topic name), ``subscribe`` (a topic
filter, allowed when an allow template covers every topic it can match and no
deny template does) and ``receive`` (a delivered topic name).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from fleetward.errors import InvalidInputError, PayloadTooLargeError

__all__ = [
    "ACTIONS",
    "DEFAULT_POLICY",
    "ENVIRONMENTS",
    "MAX_POLICY_BYTES",
    "QUARANTINE",
    "Decision",
    "Policy",
    "Role",
    "Rule",
    "Subject",
    "Template",
    "check_topic",
    "decide",
    "parse_policy",
]

Action = Literal["publish", "subscribe", "receive"]
ACTIONS: tuple[Action, ...] = ("publish", "subscribe", "receive")

# Named limits on an untrusted policy document.
MAX_POLICY_BYTES = 64 * 1024
MAX_ROLES = 64
MAX_RULES_PER_ROLE = 64
MAX_COMMANDS_PER_ROLE = 64
MAX_LEVELS = 16
# Topic names and filters checked here (explain, API) come from operators and
# devices; MQTT allows 65,535 bytes, far more than any topic of ours needs.
MAX_TOPIC_BYTES = 1024
MAX_TOPIC_LEVELS = 64  # the broker plugin refuses deeper topics too

_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")
_LITERAL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_COMMAND = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")
_VARIABLE = re.compile(r"^\{(device|tenant|product|label\.[A-Za-z0-9._-]{1,32})\}$")
# Selector and label values that may fill a topic level.
_VALUE = _LITERAL
# The environments a selector may name (fleetward.tenancy.roles.ENVIRONMENTS;
# repeated here because this module imports nothing but errors).
ENVIRONMENTS = ("test", "production", "drill")


@dataclass(frozen=True)
class Template:
    """A topic template: levels that are literals, ``+``, ``#`` or ``{variables}``."""

    text: str
    levels: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Template:
        """Validate a template.

        Raises:
            InvalidInputError: it is not under ``fw/{tenant}/`` or a level is
                malformed.
        """
        if not isinstance(text, str):
            raise InvalidInputError("a topic template must be a string")
        levels = tuple(text.split("/"))
        if len(levels) > MAX_LEVELS:
            raise InvalidInputError(f"template {text!r} has more than {MAX_LEVELS} levels")
        if len(levels) < 3 or levels[0] != "fw" or levels[1] != "{tenant}":
            raise InvalidInputError(
                f"template {text!r} must start with 'fw/{{tenant}}/' (tenants are isolated)"
            )
        for i, level in enumerate(levels):
            if level == "#":
                if i != len(levels) - 1:
                    raise InvalidInputError(f"template {text!r}: '#' must be the last level")
            elif level != "+" and not _VARIABLE.fullmatch(level) and not _LITERAL.fullmatch(level):
                raise InvalidInputError(
                    f"template {text!r}: level {level!r} is not a literal of "
                    "[A-Za-z0-9._-], '+', '#' or a whole-level variable such as {device}"
                )
        return cls(text=text, levels=levels)


@dataclass(frozen=True)
class Rule:
    """One allow or deny line of a role (what ``explain`` reports)."""

    role: str
    effect: Literal["allow", "deny"]
    kind: Literal["publish", "subscribe", "command"]
    target: str  # a template's text, or a command name

    def describe(self) -> str:
        """A one-line description, e.g. ``role sensor: allow publish fw/{tenant}/…``."""
        return f"role {self.role}: {self.effect} {self.kind} {self.target}"


@dataclass(frozen=True)
class Role:
    """A named set of allow/deny rules and the devices it applies to."""

    name: str
    product: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    environment: str | None = None
    publish: tuple[Template, ...] = ()
    subscribe: tuple[Template, ...] = ()
    commands: tuple[str, ...] = ()
    deny_publish: tuple[Template, ...] = ()
    deny_subscribe: tuple[Template, ...] = ()
    deny_commands: tuple[str, ...] = ()

    def selects(self, subject: Subject) -> bool:
        """Whether this role applies to ``subject`` (ignoring quarantine)."""
        if self.environment is not None and subject.environment != self.environment:
            return False
        if self.product is not None and subject.product != self.product:
            return False
        return all(subject.labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True)
class Policy:
    """A validated policy document: roles in document order."""

    roles: tuple[Role, ...]

    def document(self) -> dict[str, Any]:
        """The canonical JSON-able document (stored, hashed and shown)."""
        roles: dict[str, Any] = {}
        for role in self.roles:
            body: dict[str, Any] = {}
            devices: dict[str, Any] = {}
            if role.environment is not None:
                devices["environment"] = role.environment
            if role.product is not None:
                devices["product"] = role.product
            if role.labels:
                devices["labels"] = dict(sorted(role.labels.items()))
            if devices:
                body["devices"] = devices
            for key in ("publish", "subscribe"):
                if getattr(role, key):
                    body[key] = [t.text for t in getattr(role, key)]
            if role.commands:
                body["commands"] = list(role.commands)
            deny: dict[str, Any] = {}
            if role.deny_publish:
                deny["publish"] = [t.text for t in role.deny_publish]
            if role.deny_subscribe:
                deny["subscribe"] = [t.text for t in role.deny_subscribe]
            if role.deny_commands:
                deny["commands"] = list(role.deny_commands)
            if deny:
                body["deny"] = deny
            roles[role.name] = body
        return {"roles": roles}

    def canonical_json(self) -> str:
        """The document as canonical JSON (roles in order, fixed key order, no spaces)."""
        return json.dumps(self.document(), separators=(",", ":"))


@dataclass(frozen=True)
class Subject:
    """The device a decision is about, as the broker knows it."""

    tenant: str
    device_id: str
    product: str
    labels: Mapping[str, str]
    quarantined: bool = False
    # The environment of the certificate it connects with (None: unknown,
    # so no role with an environment selector applies).
    environment: str | None = None


@dataclass(frozen=True)
class Decision:
    """Allow or deny, with the rule that decided (``None``: nothing allowed it)."""

    allowed: bool
    rule: Rule | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """JSON shape for the API and the CLI."""
        return {
            "decision": "allow" if self.allowed else "deny",
            "rule": self.rule.describe() if self.rule else None,
            "reason": self.reason,
        }


def _str_list(value: object, where: str, limit: int) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError(f"{where} must be a list of strings")
    if len(value) > limit:
        raise InvalidInputError(f"{where} has more than {limit} entries")
    return list(value)


def _templates(value: object, where: str) -> tuple[Template, ...]:
    return tuple(Template.parse(t) for t in _str_list(value, where, MAX_RULES_PER_ROLE))


def _commands(value: object, where: str) -> tuple[str, ...]:
    names = _str_list(value, where, MAX_COMMANDS_PER_ROLE)
    for name in names:
        if name in ("*", "+", "#") or not _COMMAND.fullmatch(name):
            raise InvalidInputError(
                f"{where}: {name!r} is not a command name (explicit names of "
                "[a-z0-9._-] only; wildcards are never allowed)"
            )
    return tuple(names)


def _check_keys(body: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(body) - allowed
    if unknown:
        raise InvalidInputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


def _role(name: str, body: object) -> Role:
    where = f"role {name!r}"
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInputError(f"{where}: role names are 1-32 characters of [a-z0-9-]")
    if name == QUARANTINE.name:
        raise InvalidInputError("role 'quarantine' is built in and cannot be redefined")
    if not isinstance(body, Mapping):
        raise InvalidInputError(f"{where} must be a mapping")
    _check_keys(body, {"devices", "publish", "subscribe", "commands", "deny"}, where)
    devices = body.get("devices") or {}
    if not isinstance(devices, Mapping):
        raise InvalidInputError(f"{where}: 'devices' must be a mapping")
    _check_keys(devices, {"environment", "product", "labels"}, f"{where} devices")
    environment = devices.get("environment")
    if environment is not None and environment not in ENVIRONMENTS:
        raise InvalidInputError(f"{where}: environment must be one of {', '.join(ENVIRONMENTS)}")
    product = devices.get("product")
    if product is not None and (not isinstance(product, str) or not _VALUE.fullmatch(product)):
        raise InvalidInputError(f"{where}: product must be 1-64 characters of [A-Za-z0-9._-]")
    labels = devices.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) and _VALUE.fullmatch(k) and _VALUE.fullmatch(v)
        for k, v in labels.items()
    ):
        raise InvalidInputError(f"{where}: labels must map [A-Za-z0-9._-] keys to such values")
    deny = body.get("deny") or {}
    if not isinstance(deny, Mapping):
        raise InvalidInputError(f"{where}: 'deny' must be a mapping")
    _check_keys(deny, {"publish", "subscribe", "commands"}, f"{where} deny")
    return Role(
        name=name,
        product=product,
        labels=dict(labels),
        environment=environment,
        publish=_templates(body.get("publish"), f"{where} publish"),
        subscribe=_templates(body.get("subscribe"), f"{where} subscribe"),
        commands=_commands(body.get("commands"), f"{where} commands"),
        deny_publish=_templates(deny.get("publish"), f"{where} deny publish"),
        deny_subscribe=_templates(deny.get("subscribe"), f"{where} deny subscribe"),
        deny_commands=_commands(deny.get("commands"), f"{where} deny commands"),
    )


def parse_policy(document: object) -> Policy:
    """Validate a policy document (already decoded from JSON or YAML).

    Raises:
        InvalidInputError: the document is malformed; the message names where.
    """
    if not isinstance(document, Mapping):
        raise InvalidInputError("a policy document must be a mapping with 'roles'")
    _check_keys(document, {"roles"}, "policy")
    roles = document.get("roles")
    if not isinstance(roles, Mapping) or not roles:
        raise InvalidInputError("policy 'roles' must be a non-empty mapping")
    if len(roles) > MAX_ROLES:
        raise InvalidInputError(f"a policy has at most {MAX_ROLES} roles")
    return Policy(roles=tuple(_role(name, body) for name, body in roles.items()))


def load_policy_text(text: str | bytes) -> Policy:
    """Parse a JSON or YAML policy document within :data:`MAX_POLICY_BYTES`.

    Raises:
        PayloadTooLargeError: the text is over the limit.
        InvalidInputError: it does not parse or does not validate.
    """
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_POLICY_BYTES:
        raise PayloadTooLargeError(f"a policy document is limited to {MAX_POLICY_BYTES} bytes")
    import yaml  # YAML is a superset of JSON: one loader for both.

    try:
        document = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"policy is not valid YAML/JSON: {exc}") from exc
    return parse_policy(document)


QUARANTINE = Role(
    name="quarantine",
    publish=(
        Template.parse("fw/{tenant}/{device}/boot/#"),
        Template.parse("fw/{tenant}/{device}/telemetry/#"),
    ),
    subscribe=(Template.parse("fw/{tenant}/{device}/ota/#"),),
)
"""Built in: a quarantined device may only send boot evidence and telemetry and
receive updates."""

DEFAULT_POLICY = parse_policy(
    {
        "roles": {
            "device": {
                "publish": [
                    "fw/{tenant}/{device}/telemetry/#",
                    "fw/{tenant}/{device}/boot/#",
                    "fw/{tenant}/{device}/state/#",
                    "fw/{tenant}/{device}/cmd-result/+",
                ],
                "subscribe": ["fw/{tenant}/{device}/ota/#"],
                "commands": ["ping", "renew", "attest"],
            }
        }
    }
)
"""What a tenant gets until it sets its own policy."""


def check_topic(topic: str, *, is_filter: bool) -> tuple[str, ...]:
    """Split a topic name or filter into levels, refusing malformed ones.

    Raises:
        InvalidInputError: empty, too long, a wildcard in a name, or a
            misplaced wildcard in a filter.
    """
    if not topic or len(topic.encode()) > MAX_TOPIC_BYTES or "\0" in topic:
        raise InvalidInputError(f"topics are 1-{MAX_TOPIC_BYTES} bytes without NUL")
    levels = tuple(topic.split("/"))
    if len(levels) > MAX_TOPIC_LEVELS:
        raise InvalidInputError(f"topics have at most {MAX_TOPIC_LEVELS} levels")
    for i, level in enumerate(levels):
        if "+" in level or "#" in level:
            if not is_filter:
                raise InvalidInputError("a topic name (publish, receive) has no wildcards")
            if level not in ("+", "#") or (level == "#" and i != len(levels) - 1):
                raise InvalidInputError(f"malformed topic filter {topic!r}")
    return levels


def _bind(level: str, subject: Subject) -> str | None:
    """The concrete value of a template level for ``subject`` (None: unbound)."""
    if not level.startswith("{"):
        return level
    name = level[1:-1]
    if name == "device":
        return subject.device_id
    if name == "tenant":
        return subject.tenant
    if name == "product":
        return subject.product if _VALUE.fullmatch(subject.product) else None
    value = subject.labels.get(name[len("label.") :])
    return value if value is not None and _VALUE.fullmatch(value) else None


def _matches(template: Template, subject: Subject, topic: Sequence[str]) -> bool:
    """Whether the topic name ``topic`` matches the template (MQTT rules)."""
    levels = template.levels
    for i, level in enumerate(levels):
        if level == "#":
            # '#' also matches the parent level itself ("a/#" matches "a").
            return True
        if i >= len(topic):
            return False
        if level == "+":
            continue
        if _bind(level, subject) != topic[i]:
            return False
    return len(topic) == len(levels)


def _covers(template: Template, subject: Subject, filt: Sequence[str]) -> bool:
    """Whether every topic the filter can match also matches the template."""
    levels = template.levels
    for i, level in enumerate(levels):
        if level == "#":
            return True
        if i >= len(filt):
            return False
        if filt[i] == "#":
            return False
        if level == "+":
            continue
        if filt[i] == "+" or _bind(level, subject) != filt[i]:
            return False
    return len(filt) == len(levels)


def _roles(policy: Policy, subject: Subject) -> tuple[Role, ...]:
    if subject.quarantined:
        return (QUARANTINE,)
    return tuple(r for r in policy.roles if r.selects(subject))


def decide(policy: Policy, subject: Subject, action: Action, topic: str) -> Decision:
    """Decide one publish, subscribe or receive for ``subject``.

    Raises:
        InvalidInputError: ``action`` is unknown or ``topic`` is malformed.
    """
    if action not in ACTIONS:
        raise InvalidInputError(f"action must be one of {', '.join(ACTIONS)}")
    levels = check_topic(topic, is_filter=action == "subscribe")
    roles = _roles(policy, subject)
    own_cmd = (
        len(levels) == 5
        and levels[:4] == ("fw", subject.tenant, subject.device_id, "cmd")
        and levels[4] not in ("+", "#")
    )
    if action == "receive" and own_cmd:
        return _decide_command(roles, levels[4])
    if action == "subscribe" and levels == ("fw", subject.tenant, subject.device_id, "cmd", "+"):
        for role in roles:
            if role.commands:
                rule = Rule(role.name, "allow", "command", ", ".join(role.commands))
                return Decision(True, rule, "the role names commands this device may receive")
        return Decision(False, None, "no role of this device names any command")
    if action == "subscribe" and own_cmd:
        return _decide_command(roles, levels[4])
    kind: Literal["publish", "subscribe"] = "publish" if action == "publish" else "subscribe"
    test = _covers if action == "subscribe" else _matches
    for role in roles:
        for template in role.deny_publish if kind == "publish" else role.deny_subscribe:
            if test(template, subject, levels):
                return Decision(False, Rule(role.name, "deny", kind, template.text), "denied")
    for role in roles:
        for template in role.publish if kind == "publish" else role.subscribe:
            if test(template, subject, levels):
                return Decision(True, Rule(role.name, "allow", kind, template.text), "allowed")
    names = ", ".join(r.name for r in roles) or "none"
    return Decision(False, None, f"no rule of this device's roles ({names}) allows it")


def _decide_command(roles: Sequence[Role], name: str) -> Decision:
    for role in roles:
        if name in role.deny_commands:
            return Decision(False, Rule(role.name, "deny", "command", name), "denied")
    for role in roles:
        if name in role.commands:
            return Decision(True, Rule(role.name, "allow", "command", name), "allowed")
    names = ", ".join(r.name for r in roles) or "none"
    return Decision(False, None, f"command {name!r} is not listed by this device's roles ({names})")
