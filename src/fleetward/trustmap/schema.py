"""The trust map: a product's declared answers to the five trust questions (pure).

A trust map is a YAML document per product. It states how identity is
created and protected, how code is verified, how devices prove themselves
to the cloud, how updates roll back and how abnormal behaviour is detected,
with the factories that provision devices, the assets worth protecting and
the trust boundaries between device, factory, cloud and operators.

The models here are the schema: :func:`json_schema` publishes them as JSON
Schema (``docs/trustmap.schema.json``, kept equal by a test), and
:func:`load` reads a document. Bad input is refused with the path of the bad
node, never defaulted silently:

- an unknown key anywhere (``extra="forbid"``);
- a value of the wrong type or outside its set;
- a reference to something the map does not declare (a response for a
  detector that is not on, a boundary or flow naming an unknown element,
  a factory environment that has no identity section);
- a contradiction (production that accepts software keys while a factory
  is declared to provision production with hardware keys only, a listener
  trusting another environment's CA, a first wave of 100 %, a threshold
  above the number of keys).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fleetward.errors import InvalidInputError, PayloadTooLargeError

__all__ = [
    "DETECTORS",
    "ELEMENTS",
    "ENVIRONMENTS",
    "MAX_MAP_BYTES",
    "SCHEMA_VERSION",
    "TrustMap",
    "json_schema",
    "load",
]

SCHEMA_VERSION = 1
MAX_MAP_BYTES = 256 * 1024  # a trust map is a page or two of YAML
# Lists of a map. YAML aliases repeat a node for a few bytes, so the byte
# limit alone lets a map hold 50,000 flows (a 100,000-threat model per read).
MAX_TEMPLATES = 64  # topic templates or commands of one policy role
MAX_ROLES = 64  # policy roles, service identities
MAX_FACTORIES = 500
MAX_PICTURE = 200  # assets, flows, boundaries: a data-flow diagram people read
ENVIRONMENTS = ("test", "production", "drill")
# The detectors fleetward runs (fleetward.detection.KINDS, the event detectors
# and sweeps); a map may declare only these (checked against the live list).
DETECTORS = (
    "boot-integrity",
    "boot-integrity-cohort",
    "firmware-drift",
    "authz-failures",
    "message-flood",
    "enrollment-anomaly",
    "device-silent",
    "certificate-expiry",
    "vulnerability-exploited",
    "vulnerability-critical",
    "cra-deadline",
    "trust-drift",
)
RESPONSES = ("none", "quarantine-device", "quarantine-cohort")
# The elements of the data-flow diagram the threat model is drawn on.
ELEMENTS = (
    "device",
    "factory-station",
    "broker",
    "device-plane",
    "operator-plane",
    "ota-repository",
    "operators",
    "database",
)

Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9._-]*$")]
Text = Annotated[str, Field(max_length=2000)]
Environment = Literal["test", "production", "drill"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnvironmentIdentity(_Strict):
    """How device identity is made and protected in one environment."""

    issuing_ca_key: Literal["file", "pkcs11"] = Field(
        description="where the environment's issuing CA key lives"
    )
    key_origin: Literal["hardware-attested", "any"] = Field(
        description="which device keys are certified: only hardware-attested ones, or any"
    )
    certificate_days_max: int = Field(default=825, ge=1, le=3650)


class Identity(_Strict):
    """Question 1: how a device's identity is created and protected."""

    root_ca: Literal["offline", "online"] = Field(
        description="offline: the root key is not on the server (only the issuing CAs are)"
    )
    environments: dict[Environment, EnvironmentIdentity] = Field(min_length=1)


class TufRoot(_Strict):
    """The TUF root role."""

    threshold: int = Field(ge=1, le=16)
    keys: int = Field(ge=1, le=16)
    storage: Literal["offline", "online"]

    @model_validator(mode="after")
    def _threshold_within_keys(self) -> TufRoot:
        if self.threshold > self.keys:
            raise ValueError(f"threshold {self.threshold} is more than the {self.keys} keys")
        return self


class Code(_Strict):
    """Question 2: how the code allowed to run is verified."""

    tuf_root: TufRoot
    targets_threshold: int = Field(ge=1, le=16, description="release signatures per product")
    boot_stages_measured: list[Literal["bootloader", "kernel", "application"]] = Field(min_length=1)
    attestation_required_for_updates: bool = Field(
        description="a device counts as updated only once its boot attestation passes"
    )


class Listener(_Strict):
    """A broker listener and the environments whose CAs it trusts."""

    trusts: list[Environment] = Field(min_length=1)


class PolicyRole(_Strict):
    """The most a communication-policy role may allow (templates under fw/{tenant}/)."""

    name: Name
    publish: list[Annotated[str, Field(max_length=256)]] = Field(
        default=[], max_length=MAX_TEMPLATES
    )
    subscribe: list[Annotated[str, Field(max_length=256)]] = Field(
        default=[], max_length=MAX_TEMPLATES
    )
    commands: list[Name] = Field(default=[], max_length=MAX_TEMPLATES)


class Cloud(_Strict):
    """Question 3: how devices prove themselves to the cloud."""

    mtls: Literal["required"] = "required"
    listeners: dict[Environment, Listener] = Field(min_length=1)
    policy_roles: list[PolicyRole] = Field(
        description="the roles the communication policy may hold, each at most this broad",
        max_length=MAX_ROLES,
    )
    service_identities: list[Name] = Field(
        description="fleetward's own broker identities", max_length=MAX_ROLES
    )

    @model_validator(mode="after")
    def _one_environment_per_listener(self) -> Cloud:
        for env, listener in self.listeners.items():
            others = sorted(set(listener.trusts) - {env})
            if others:
                raise ValueError(
                    f"listeners.{env} trusts {', '.join(others)}: a listener trusts the CAs "
                    "of its own environment only"
                )
        names = [r.name for r in self.policy_roles]
        if len(names) != len(set(names)):
            raise ValueError("policy_roles: a role name appears twice")
        return self


class Gate(_Strict):
    """The health gate between waves."""

    min_success_ratio: float = Field(ge=0, le=1)
    max_failure_ratio: float = Field(ge=0, le=1)


class Updates(_Strict):
    """Question 4: how updates roll back safely."""

    first_wave_max_percent: float = Field(gt=0, lt=100)
    gate: Gate
    ab_slots: bool
    automatic_fallback: bool


class Detection(_Strict):
    """Question 5: how abnormal behaviour is detected and answered."""

    detectors: list[Literal[DETECTORS]] = Field(  # type: ignore[valid-type]
        min_length=1, max_length=len(DETECTORS)
    )
    responses: dict[str, Literal["none", "quarantine-device", "quarantine-cohort"]] = {}

    @model_validator(mode="after")
    def _responses_need_detectors(self) -> Detection:
        for kind in self.responses:
            if kind not in self.detectors:
                raise ValueError(f"responses.{kind}: no such detector is declared on")
        return self


class Factory(_Strict):
    """A factory that provisions devices, and how."""

    name: Name
    environments: list[Environment] = Field(min_length=1)
    batches_only: Literal[True] = Field(
        default=True, description="its tokens enroll only through its own batches"
    )


class Asset(_Strict):
    """Something worth protecting, and where it lives."""

    name: Name
    kind: Literal["key", "credential", "firmware", "data", "configuration"]
    lives_in: Literal[ELEMENTS]  # type: ignore[valid-type]
    description: Text = ""


class Flow(_Strict):
    """A data flow between two elements, over a protocol."""

    source: Literal[ELEMENTS]  # type: ignore[valid-type]
    target: Literal[ELEMENTS]  # type: ignore[valid-type]
    data: Annotated[str, Field(min_length=1, max_length=200)]
    protocol: Annotated[str, Field(min_length=1, max_length=64)]
    authenticated: bool
    encrypted: bool


class Boundary(_Strict):
    """A trust boundary and the elements inside it."""

    name: Name
    contains: list[Literal[ELEMENTS]] = Field(min_length=1)  # type: ignore[valid-type]


class TrustMap(_Strict):
    """A product's trust map (schema version 1)."""

    version: Literal[1] = 1
    product: Name
    identity: Identity
    code: Code
    cloud: Cloud
    updates: Updates
    detection: Detection
    factories: list[Factory] = Field(default=[], max_length=MAX_FACTORIES)
    assets: list[Asset] = Field(default=[], max_length=MAX_PICTURE)
    flows: list[Flow] = Field(default=[], max_length=MAX_PICTURE)
    boundaries: list[Boundary] = Field(default=[], max_length=MAX_PICTURE)

    @model_validator(mode="after")
    def _references(self) -> TrustMap:
        envs = set(self.identity.environments)
        for name, listener in self.cloud.listeners.items():
            if name not in envs:
                raise ValueError(f"cloud.listeners.{name}: no identity for that environment")
            del listener
        for i, f in enumerate(self.factories):
            missing = sorted(set(f.environments) - envs)
            if missing:
                raise ValueError(
                    f"factories[{i}] ({f.name}): environment {', '.join(missing)} has no identity"
                )
        names = [f.name for f in self.factories]
        if len(names) != len(set(names)):
            raise ValueError("factories: a factory name appears twice")
        seen: dict[str, str] = {}
        for b in self.boundaries:
            for element in b.contains:
                if element in seen:
                    raise ValueError(
                        f"boundaries: {element} is in both {seen[element]} and {b.name}"
                    )
                seen[element] = b.name
        return self


def json_schema() -> dict[str, Any]:
    """The published JSON Schema of a trust map."""
    schema = TrustMap.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "urn:fleetward:trustmap:1"
    return schema


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """PyYAML's safe loader (libyaml's parser when present, five times faster)
    that refuses a key given twice in one mapping: ``safe_load`` keeps the
    last silently, so ``root_ca: offline`` then ``root_ca: online`` would say
    online while a reader sees offline."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            self.flatten_mapping(node)
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                try:
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"the key {key!r} is given twice", key_node.start_mark
                        )
                    seen.add(key)
                except TypeError:  # an unhashable key: the base constructor refuses it
                    pass
        return super().construct_mapping(node, deep=deep)


def load(text: str | bytes) -> TrustMap:
    """Read a trust map (YAML or JSON).

    Raises:
        PayloadTooLargeError: over :data:`MAX_MAP_BYTES`.
        InvalidInputError: not YAML, or not a valid map; the message names
            the path of each bad node (at most five).
    """
    raw = text.encode() if isinstance(text, str) else text
    if len(raw) > MAX_MAP_BYTES:
        raise PayloadTooLargeError(f"a trust map is limited to {MAX_MAP_BYTES} bytes")
    try:
        doc = yaml.load(raw, Loader=_Loader)  # noqa: S506 (a safe loader, see _Loader)
    except yaml.YAMLError as exc:
        raise InvalidInputError(f"the trust map is not YAML: {exc}") from exc
    except RecursionError as exc:  # nesting deeper than the interpreter's stack
        raise InvalidInputError("the trust map is nested too deeply") from exc
    if not isinstance(doc, dict):
        raise InvalidInputError("a trust map is a mapping (product, identity, code, ...)")
    try:
        return TrustMap.model_validate(doc)
    except ValidationError as exc:
        problems = [
            f"{_path(tuple(e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)[:5]
        ]
        more = exc.error_count() - len(problems)
        raise InvalidInputError(
            "trust map: " + "; ".join(problems) + (f" (and {more} more)" if more > 0 else "")
        ) from exc
