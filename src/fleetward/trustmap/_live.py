"""What the live system says, as plain values: the input of the drift checks (pure).

:class:`LiveFacts` is filled by the service from fleetward's tables and
configuration; every field is optional (``None``: unknown, so the checks
that need it are skipped and their controls stay unconfirmed), and every
collection is bounded and validated here, since policy roles, factory
names and token ids were written by tenants.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetward.errors import InvalidInputError
from fleetward.trustmap.schema import DETECTORS, ENVIRONMENTS, RESPONSES

__all__ = ["BOOT_STAGES", "MAX_DEVICE_SAMPLE", "LiveFacts", "LiveRole", "choice", "levels"]

BOOT_STAGES = ("bootloader", "kernel", "application")


# Named limits. The facts come from fleetward's own tables, but policy roles,
# factory names and token ids were written by tenants, so every collection is
# bounded to keep a check (and the alerts it raises) cheap.
MAX_DEVICE_SAMPLE = 20  # device ids named per environment in a drift
MAX_ITEMS = 1024  # entries of any one mapping or set of LiveFacts
MAX_ROLE_TEMPLATES = 64  # templates per list of a live role (as comms.policy)
MAX_ROLE_COMMANDS = 64  # commands per live role (as comms.policy)
MAX_NAME = 128  # characters of a name or id
MAX_THRESHOLD = 64  # a signature threshold no real role reaches
MAX_LEVELS = 16  # levels of a topic template (as comms.policy)
MAX_TEMPLATE_BYTES = MAX_LEVELS * 65  # characters: 16 levels of at most 64 and slashes
_LITERAL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # as comms.policy
_VARIABLE = re.compile(r"^\{(device|tenant|product|label\.[A-Za-z0-9._-]{1,32})\}$")


def _name(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{where}: expected a string, got {type(value).__name__}")
    if not value or len(value) > MAX_NAME:
        raise ValueError(f"{where}: a name of 1 to {MAX_NAME} characters, got {value!r:.80}")
    return value


def choice(value: object, allowed: tuple[str, ...], where: str) -> str:
    _name(value, where)
    if value not in allowed:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(allowed)}")
    return str(value)


def _int(value: object, where: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{where}: {value} is outside {low}..{high}")
    return value


def _sized(value: object, kind: type, where: str, limit: int = MAX_ITEMS) -> None:
    if not isinstance(value, kind):
        raise TypeError(f"{where}: expected a {kind.__name__}, got {type(value).__name__}")
    if len(value) > limit:  # type: ignore[arg-type]
        raise ValueError(f"{where}: more than {limit} entries")


def _items(value: object, where: str) -> list[tuple[Any, Any]]:
    """The entries of an optional mapping field, after its type and size checks."""
    if value is None:
        return []
    _sized(value, Mapping, where)
    assert isinstance(value, Mapping)  # noqa: S101 - checked by _sized
    return list(value.items())


def _members(
    value: object, kind: type, each: Callable[[object, str], object], where: str,
    limit: int = MAX_ITEMS,
) -> None:  # fmt: skip
    """Check an optional tuple or frozenset field and every member of it."""
    if value is None:
        return
    _sized(value, kind, where, limit)
    for v in value:  # type: ignore[attr-defined]
        each(v, where)


def _env(value: object, where: str) -> str:
    return choice(value, ENVIRONMENTS, where)


def _stage(value: object, where: str) -> str:
    return choice(value, BOOT_STAGES, where)


def _detector(value: object, where: str) -> str:
    return choice(value, DETECTORS, where)


def _counter(high: int) -> Callable[[object, str], int]:
    return lambda v, w: _int(v, w, low=0, high=high)


def levels(text: object) -> tuple[str, ...]:
    """The levels of a topic template, by the rules of ``fleetward.comms.policy.Template``.

    The comms face contract keeps its modules private, so the few lines of
    template syntax are restated here (same limits, same level grammar).

    Raises:
        InvalidInputError: not under ``fw/{tenant}/``, too deep, or a bad level.
    """
    if not isinstance(text, str) or len(text) > MAX_TEMPLATE_BYTES:
        raise InvalidInputError(f"a topic template is a string of at most {MAX_TEMPLATE_BYTES}")
    levels = tuple(text.split("/"))
    if len(levels) > MAX_LEVELS or len(levels) < 3 or levels[:2] != ("fw", "{tenant}"):
        raise InvalidInputError(
            f"template {text!r}: not under 'fw/{{tenant}}/', or over {MAX_LEVELS} levels"
        )
    for i, level in enumerate(levels):
        if level == "#" and i == len(levels) - 1:
            continue
        if level != "+" and not _VARIABLE.fullmatch(level) and not _LITERAL.fullmatch(level):
            raise InvalidInputError(f"template {text!r}: level {level!r} is not allowed")
    return levels


def _templates(value: object, where: str) -> None:
    _sized(value, tuple, where, MAX_ROLE_TEMPLATES)
    assert isinstance(value, tuple)  # noqa: S101 - checked by _sized
    for i, text in enumerate(value):
        try:
            levels(text)
        except InvalidInputError as exc:
            raise ValueError(f"{where}[{i}]: {exc}") from exc


@dataclass(frozen=True)
class LiveRole:
    """A live communication-policy role: its allow templates and command names."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _templates(self.publish, "publish")
        _templates(self.subscribe, "subscribe")
        _sized(self.commands, tuple, "commands", MAX_ROLE_COMMANDS)
        for c in self.commands:
            _name(c, "commands")


@dataclass(frozen=True)
class LiveFacts:
    """What the live system holds for one product; ``None`` means unknown (check skipped).

    Attributes:
        device_key_origins: ``(environment, key_origin) -> device count``;
            any origin other than ``hardware-attested`` is a software key.
        software_key_devices: ``environment -> ids`` of up to
            :data:`MAX_DEVICE_SAMPLE` devices holding software keys.
        ca_key_backends: ``environment -> "file" | "pkcs11"`` of its issuing CA.
        root_ca: ``"offline" | "online"``: whether the root CA key is on the server.
        tuf_root_threshold: the live TUF root role's threshold.
        tuf_root_keys: the live TUF root role's number of keys (reported only).
        tuf_root_storage: ``"offline" | "online"``: whether root keys are online.
        release_thresholds: ``product -> threshold`` of its targets role.
        boot_stages_measured: stages with reference measurements on the
            product's newest release.
        campaign_first_wave_percent: ``campaign id -> first wave %`` of recent campaigns.
        campaign_require_attestation: ``campaign id -> require_attestation``.
        detectors_enabled: the detector kinds the live system runs.
        detector_responses: ``kind -> response`` configured (absent: ``none``).
        policy_roles: ``role name -> LiveRole`` of the tenant's live policy
            (its own roles; the built-in quarantine role is not passed).
        listener_trust: ``listener environment -> environments`` of the CAs
            its CA file holds.
        service_identities: fleetward's live broker identities.
        factory_environments: ``factory -> environments`` its tokens and open
            batches can provision.
        factory_unbound_tokens: ``factory -> token ids`` not bound to the
            factory's batches (could enroll outside them).
        factory_open_batches: ``factory -> open batch count``.
    """

    device_key_origins: Mapping[tuple[str, str], int] | None = None
    software_key_devices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    ca_key_backends: Mapping[str, str] | None = None
    root_ca: str | None = None
    tuf_root_threshold: int | None = None
    tuf_root_keys: int | None = None
    tuf_root_storage: str | None = None
    release_thresholds: Mapping[str, int] | None = None
    boot_stages_measured: frozenset[str] | None = None
    campaign_first_wave_percent: Mapping[str, float] | None = None
    campaign_require_attestation: Mapping[str, bool] | None = None
    detectors_enabled: frozenset[str] | None = None
    detector_responses: Mapping[str, str] = field(default_factory=dict)
    policy_roles: Mapping[str, LiveRole] | None = None
    listener_trust: Mapping[str, frozenset[str]] | None = None
    service_identities: frozenset[str] | None = None
    factory_environments: Mapping[str, frozenset[str]] | None = None
    factory_unbound_tokens: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    factory_open_batches: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = _counter(2**63 - 1)
        if self.device_key_origins is not None:
            for key, n in _items(self.device_key_origins, "device_key_origins"):
                if not isinstance(key, tuple) or len(key) != 2:
                    raise TypeError("device_key_origins: keys are (environment, key_origin)")
                _env(key[0], "device_key_origins")
                _name(key[1], "device_key_origins")
                count(n, "device_key_origins")
        for e, ids in _items(self.software_key_devices, "software_key_devices"):
            _env(e, "software_key_devices")
            _members(ids, tuple, _name, f"software_key_devices.{e}", MAX_DEVICE_SAMPLE)
        for e, backend in _items(self.ca_key_backends, "ca_key_backends"):
            _env(e, "ca_key_backends")
            choice(backend, ("file", "pkcs11"), f"ca_key_backends.{e}")
        for attr in ("root_ca", "tuf_root_storage"):
            if getattr(self, attr) is not None:
                choice(getattr(self, attr), ("offline", "online"), attr)
        for attr in ("tuf_root_threshold", "tuf_root_keys"):
            if getattr(self, attr) is not None:
                _int(getattr(self, attr), attr, low=1, high=MAX_THRESHOLD)
        for product, n in _items(self.release_thresholds, "release_thresholds"):
            _name(product, "release_thresholds")
            _int(n, f"release_thresholds.{product}", low=1, high=MAX_THRESHOLD)
        _members(self.boot_stages_measured, frozenset, _stage, "boot_stages_measured")
        for cid, pct in _items(self.campaign_first_wave_percent, "campaign_first_wave_percent"):
            _name(cid, "campaign_first_wave_percent")
            if isinstance(pct, bool) or not isinstance(pct, int | float):
                raise TypeError(f"campaign_first_wave_percent.{cid}: expected a number")
            if not (math.isfinite(pct) and 0 < pct <= 100):
                raise ValueError(f"campaign_first_wave_percent.{cid}: {pct} is not in (0, 100]")
        for cid, req in _items(self.campaign_require_attestation, "campaign_require_attestation"):
            _name(cid, "campaign_require_attestation")
            if not isinstance(req, bool):
                raise TypeError(f"campaign_require_attestation.{cid}: expected a bool")
        _members(self.detectors_enabled, frozenset, _detector, "detectors_enabled")
        for k, r in _items(self.detector_responses, "detector_responses"):
            _detector(k, "detector_responses")
            choice(r, RESPONSES, f"detector_responses.{k}")
        for name, role in _items(self.policy_roles, "policy_roles"):
            _name(name, "policy_roles")
            if not isinstance(role, LiveRole):
                raise TypeError(f"policy_roles.{name}: expected a LiveRole")
        for e, trusted in _items(self.listener_trust, "listener_trust"):
            _env(e, "listener_trust")
            _members(trusted, frozenset, _env, f"listener_trust.{e}")
        _members(self.service_identities, frozenset, _name, "service_identities")
        for f, envs in _items(self.factory_environments, "factory_environments"):
            _name(f, "factory_environments")
            _members(envs, frozenset, _env, f"factory_environments.{f}")
        for f, tokens in _items(self.factory_unbound_tokens, "factory_unbound_tokens"):
            _name(f, "factory_unbound_tokens")
            _members(tokens, tuple, _name, f"factory_unbound_tokens.{f}")
        for f, n in _items(self.factory_open_batches, "factory_open_batches"):
            _name(f, "factory_open_batches")
            count(n, f"factory_open_batches.{f}")
