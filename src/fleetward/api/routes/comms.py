"""REST routes of the comms domain: policy versions, decisions (explain),
authorization events, denial counts and commands."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from fleetward.api import problems
from fleetward.api.deps import Allow, Ctx
from fleetward.api.pagination import Cursor, Limit, Page, decode, page, page_of
from fleetward.api.params import Version
from fleetward.api.routes.telemetry import TelemetryEventOut
from fleetward.comms import service
from fleetward.comms.commands import (
    MAX_COMMAND_BYTES,
    BrokerUnavailableError,
    CommandSender,
    broker_info,
)
from fleetward.comms.policy import MAX_POLICY_BYTES, load_policy_text, parse_policy
from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

router = APIRouter(prefix="/api/v1", tags=["comms"], responses=problems.OPERATOR)
public = APIRouter(tags=["comms"], responses=problems.PUBLIC)


class PolicyOut(BaseModel):
    """One version of the tenant's communication policy."""

    version: int
    sha256: str
    created_by: str | None
    created_at: dt.datetime | None
    document: dict[str, Any]

    @classmethod
    def of(cls, v: service.PolicyVersion) -> PolicyOut:
        """From the service's value."""
        return cls(
            version=v.version,
            sha256=v.sha256,
            created_by=v.created_by,
            created_at=v.created_at,
            document=v.policy.document(),
        )


class PolicyIn(BaseModel):
    """A new policy: a JSON ``document``, or ``text`` in YAML or JSON."""

    document: dict[str, Any] | None = None
    text: str | None = Field(default=None, max_length=MAX_POLICY_BYTES)


class CheckIn(BaseModel):
    """A question for explain."""

    device: str = Field(max_length=64)
    action: Literal["publish", "subscribe", "receive"]
    topic: str = Field(max_length=1024)
    environment: Literal["test", "production", "drill"] | None = Field(
        default=None,
        description="the environment the device connects in (default: the one it lives in)",
    )


class CheckOut(BaseModel):
    """Allow or deny, and what decided."""

    decision: Literal["allow", "deny"]
    rule: str | None
    reason: str
    policy_version: int
    device_state: str


class AuthzEventOut(TelemetryEventOut):
    """One authorization event (an event of the ``authz.`` kinds)."""


class CommandIn(BaseModel):
    """A command's arguments (JSON, sent as the MQTT payload)."""

    args: dict[str, Any] = Field(default_factory=dict)


class CommandOut(BaseModel):
    """A command handed to the broker (QoS 1)."""

    status: Literal["sent"]
    topic: str


class DenialsOut(BaseModel):
    """The denials the broker counted for one device, by event type."""

    device: str
    counts: dict[str, int] = Field(description="event type (authz.*) -> denials")


class ListenerOut(BaseModel):
    """One device listener of the broker."""

    host: str
    port: int


class BrokerOut(BaseModel):
    """Where devices connect: one listener per environment."""

    ca_pem: str = Field(description="the CA that signed the broker's certificate (PEM)")
    listeners: dict[Literal["test", "production", "drill"], ListenerOut] = Field(
        description="the device listener of each environment: a device connects to its own"
    )
    host: str = Field(description="the production listener's host (earlier clients)")
    port: int = Field(description="the production listener's port (earlier clients)")


@router.get("/comms/policy", response_model=PolicyOut)
def get_policy(
    ctx: Ctx, who: Annotated[Principal, Allow(scope.POLICY_READ)], version: Version | None = None
) -> PolicyOut:
    """The current policy (version 0 is the built-in default), or one version."""
    with ctx.db.read() as s:
        return PolicyOut.of(service.get_policy(s, who, version))


@router.get("/comms/policy/versions", response_model=Page[PolicyOut])
def list_versions(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.POLICY_READ)],
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[PolicyOut]:
    """Every stored version, newest first."""
    with ctx.db.read() as s:
        return page_of(
            service.list_versions(s, who),
            cursor=cursor,
            limit=limit,
            key=lambda v: (v.version,),
            kinds=(int,),
            shape=PolicyOut.of,
            descending=True,
        )


@router.put("/comms/policy", response_model=PolicyOut, status_code=201)
def set_policy(
    body: PolicyIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.POLICY_SET)]
) -> PolicyOut:
    """Store a new policy version; the broker enforces it within a second."""
    with ctx.operator_work(who, action="comms.policy.set", subject="policy") as s:
        if (body.document is None) == (body.text is None):
            raise InvalidInputError("send exactly one of 'document' or 'text'")
        if body.text is not None:
            policy = load_policy_text(body.text)
        else:
            if len(json.dumps(body.document)) > MAX_POLICY_BYTES:
                raise PayloadTooLargeError(f"a policy is limited to {MAX_POLICY_BYTES} bytes")
            policy = parse_policy(body.document)
        return PolicyOut.of(service.set_policy(s, who, policy))


@router.post("/comms/policy/decisions", response_model=CheckOut)
def check(body: CheckIn, ctx: Ctx, who: Annotated[Principal, Allow(scope.POLICY_READ)]) -> CheckOut:
    """Explain: would the broker allow this device this action on this topic?"""
    with ctx.db.read() as s:
        decision, version, device = service.explain(
            s, who, body.device, action=body.action, topic=body.topic, environment=body.environment
        )
        return CheckOut(
            **decision.as_dict(), policy_version=version.version, device_state=device.state
        )


@router.get("/comms/events", response_model=Page[AuthzEventOut])
def list_events(
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.DEVICE_READ)],
    device: Annotated[str | None, Query(max_length=64)] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> Page[AuthzEventOut]:
    """The tenant's authorization events (denials, refused identities), newest first."""
    before = decode(cursor, int)
    with ctx.db.read() as s:
        rows = service.list_events(
            s,
            who,
            device_id=device,
            before=int(before[0]) if before else None,
            limit=limit + 1,
        )
        return page(
            rows,
            limit=limit,
            key=lambda row: (row[0].id,),
            shape=AuthzEventOut.of,
        )


@router.get("/devices/{device_id}/denials", response_model=DenialsOut)
def denials(
    device_id: str, ctx: Ctx, who: Annotated[Principal, Allow(scope.DEVICE_READ)]
) -> DenialsOut:
    """How many denials of each kind the broker counted for a device."""
    with ctx.db.read() as s:
        return DenialsOut(device=device_id, counts=service.denial_counts(s, who, device_id))


@router.post("/devices/{device_id}/commands/{name}", status_code=202, response_model=CommandOut)
def send_command(
    device_id: str,
    name: str,
    body: CommandIn,
    request: Request,
    ctx: Ctx,
    who: Annotated[Principal, Allow(scope.DEVICE_COMMAND)],
) -> CommandOut:
    """Send a command the device's roles allow (QoS 1, through the broker)."""
    payload = json.dumps(body.args).encode()
    if len(payload) > MAX_COMMAND_BYTES:
        raise PayloadTooLargeError(f"command arguments are limited to {MAX_COMMAND_BYTES} bytes")
    with ctx.operator_work(who, action="device.command", subject=f"device:{device_id}") as s:
        topic = service.authorize_command(s, who, device_id, name)
    sender = getattr(request.app.state, "command_sender", None)
    if sender is None:
        sender = request.app.state.command_sender = CommandSender(ctx.settings.home)
    sender.send(topic, payload)
    return CommandOut(status="sent", topic=topic)


@public.get("/api/v1/comms/broker", response_model=BrokerOut)
def broker(ctx: Ctx) -> BrokerOut:
    """Where devices connect (each environment's listener), and the CA that
    signed the broker's certificate (fleetward's service CA).

    The broker this home runs (``broker.json``) when there is one, else the
    listeners the settings name."""
    try:
        info = broker_info(ctx.settings.home)
        listeners = info["listeners"]
        ca_pem = Path(info["ca"]).read_text()
    except (BrokerUnavailableError, KeyError, OSError):
        s = ctx.settings
        ports = {
            "test": s.mqtt_test_port,
            "production": s.mqtt_production_port,
            "drill": s.mqtt_drill_port,
        }
        listeners = {env: {"host": s.mqtt_host, "port": p} for env, p in ports.items()}
        ca_pem = ctx.service_pki.ca_pem.decode()
    out = {
        env: ListenerOut(host=str(v["host"]), port=int(v["port"])) for env, v in listeners.items()
    }
    production = out["production"]
    return BrokerOut(
        ca_pem=ca_pem,
        listeners=out,
        host=production.host,
        port=production.port,
    )
