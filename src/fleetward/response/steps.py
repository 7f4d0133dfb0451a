"""The steps of a playbook run: one handler per action, in a typed registry.

A handler takes one :class:`StepContext` (the step's transaction, the run,
the step and its index, the planned devices, the run's effects, the PKI and
the time the step started) and does its database work in that transaction.
It may return what to do once the transaction committed (messages to
devices), so no broker round trip ever holds the writer.

The ``webhook`` step is the exception: it is sent outside any transaction
and never fails a run (:func:`notify`).

What the response domain needs of the running system is written down here
as small protocols (:class:`ResponseContext`, :class:`Effects`): the
application context of ``runtime`` satisfies them structurally, so this
domain imports no ``api``, ``cli`` or ``runtime``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

from sqlalchemy.orm import Session

from fleetward import identity, ota, tenancy
from fleetward.errors import ConflictError, FleetwardError
from fleetward.identity import Pki
from fleetward.response import playbook as pb
from fleetward.response._cohort import device_ids, online_devices
from fleetward.response.compliance import Requirement, record_pending
from fleetward.response.models import Incident, PlaybookRun
from fleetward.response.plan import SAMPLE, redacted, webhook_allowed
from fleetward.response.service import log_event
from fleetward.store import Database
from fleetward.tenancy.roles import Principal

__all__ = [
    "STEPS",
    "After",
    "Effects",
    "ResponseContext",
    "StepContext",
    "StepHandler",
    "notify",
]

log = logging.getLogger("fleetward.response")
_DEFAULT_WINDOW_S = int(identity.DEFAULT_TRUST_WINDOW.total_seconds())


class Effects(Protocol):
    """What a run does outside the database (one seam, faked in unit tests only)."""

    def command(self, tenant: str, device_id: str, name: str) -> None:
        """Send a command to a device (``fw/<tenant>/<device>/cmd/<name>``)."""

    def webhook(self, url: str, payload: dict[str, Any]) -> int:
        """POST a JSON notification; returns the HTTP status."""


class WebhookSettings(Protocol):
    """The settings a run reads."""

    @property
    def webhook_hosts(self) -> Collection[str]:
        """Hosts (``host`` or ``host:port``) webhooks may reach."""


class ResponseContext(Protocol):
    """What runs and drills need of the running system (the application
    context passes itself)."""

    @property
    def db(self) -> Database:
        """The database."""

    @property
    def pki(self) -> Pki:
        """Key ring and CA operations (a CA rotation step)."""

    @property
    def settings(self) -> WebhookSettings:
        """The installation's settings."""


# What a step leaves to do after its transaction committed, if anything.
After = Callable[[], None] | None


@dataclass(frozen=True)
class StepContext:
    """Everything one step of a run acts with."""

    session: Session  # the step's transaction
    run: PlaybookRun
    index: int  # 0-based position of the step in the run
    step: pb.Step
    device_pks: list[int]  # the cohort as planned: what the approvers saw
    effects: Effects
    pki: Pki
    now: dt.datetime  # when the step started

    def executor(self) -> Principal:
        """Who the step acts as.

        The run acts with the rights checked when it was planned and again
        when it is executed (the planner's and the executor's, per step)
        plus its approvals; the audit names the run, its requester,
        approvers and executor.
        """
        tenant = tenancy.get_tenant(self.session, self.run.tenant_id)
        return Principal(self.run.tenant_id, tenant.name, "admin", f"playbook-run:{self.run.id}")

    def tenant_name(self) -> str:
        """The run's tenant."""
        return tenancy.get_tenant(self.session, self.run.tenant_id).name

    def logged(self, summary: str, details: dict[str, Any]) -> None:
        """Put the step on the incident's timeline (and in the audit log)."""
        run = self.run
        incident = self.session.get_one(Incident, run.incident_id)
        log_event(
            self.session, incident, actor=f"playbook-run:{run.id}",
            kind=f"step.{self.step.action}",
            summary=f"run {run.id} step {self.index + 1}: {summary}",
            details={"run": run.id, "step": self.index + 1, "requested_by": run.requested_by,
                     "approvals": json.loads(run.approvals), "executed_by": run.executed_by,
                     **details},
            audit_action=f"playbook.step.{self.step.action}",
        )  # fmt: skip


StepHandler = Callable[[StepContext], After]
_HANDLERS: dict[str, StepHandler] = {}


def _handles(action: str) -> Callable[[StepHandler], StepHandler]:
    if action not in pb.ACTIONS or action in _HANDLERS:
        raise ValueError(f"no step {action!r}, or two handlers for it")

    def register(handler: StepHandler) -> StepHandler:
        _HANDLERS[action] = handler
        return handler

    return register


@_handles("quarantine")
def _quarantine(ctx: StepContext) -> After:
    reason = str(ctx.step.args.get("reason", f"playbook run {ctx.run.id}"))
    done = identity.quarantine_devices(ctx.session, ctx.executor(), ctx.device_pks, reason=reason)
    ctx.logged(
        f"quarantined {len(done)} device(s)", {"devices": len(done), "sample": done[:SAMPLE]}
    )
    return None


@_handles("revoke")
def _revoke(ctx: StepContext) -> After:
    s = ctx.session
    revoked = identity.revoke_devices(
        s,
        ctx.executor(),
        device_ids(s, ctx.device_pks),
        reason=str(ctx.step.args.get("reason", "unspecified")),
    )
    ctx.logged(
        f"revoked {len(revoked)} device(s) and their certificates",
        {"devices": len(revoked), "sample": revoked[:SAMPLE]},
    )
    return None


@_handles("rotate-ca")
def _rotate_ca(ctx: StepContext) -> After:
    s, run = ctx.session, ctx.run
    env = run.environment or "production"
    tenant = tenancy.get_tenant(s, run.tenant_id)
    old = identity.active_issuing_ca(s, tenant_id=run.tenant_id, environment=env)
    root = identity.root_ca(s, tenant_id=run.tenant_id)
    if root.key_uri.startswith(identity.OFFLINE):
        raise ConflictError(
            "the root key is offline: rotate the issuing CA with it (fleetward ca csr / "
            "import), then plan a run with the renew step"
        )
    # The new key lives where the old one did (an HSM-held CA stays in the HSM).
    backend = "pkcs11" if old.key_uri.startswith("pkcs11:") else "file"
    ca, csr = identity.create_issuing_csr(
        s, ctx.pki, tenant=tenant, environment=env, actor=f"playbook-run:{run.id}",
        backend=backend,
    )  # fmt: skip
    cert = identity.sign_issuing_csr_offline(
        root_cert_pem=(root.certificate_pem or "").encode(),
        root_signer=ctx.pki.keyring.open(root.key_uri), csr_pem=csr, environment=env,
    )  # fmt: skip
    window = dt.timedelta(seconds=int(ctx.step.args.get("window", _DEFAULT_WINDOW_S)))
    reason = str(ctx.step.args.get("reason", "superseded"))
    identity.import_issuing_certificate(
        s, ctx.pki, tenant_id=run.tenant_id, ca_id=ca.id, certificate_pem=cert,
        actor=f"playbook-run:{run.id}", trust_window=window, reason=reason,
    )  # fmt: skip
    ctx.logged(
        f"{env} issuing CA {old.id} retired, trusted for {window} more; CA {ca.id} issues "
        f"now; the old CA's certificates are revoked ({reason}) as devices renew",
        {"old_ca": old.id, "new_ca": ca.id, "backend": backend,
         "window_s": int(window.total_seconds()), "reason": reason},
    )  # fmt: skip
    return None


@_handles("distrust-ca")
def _distrust_ca(ctx: StepContext) -> After:
    """Close the window of the CA this run retired as soon as no device
    depends on it (the compliance tracker's round does it then; at once if
    none does already)."""
    s, run = ctx.session, ctx.run
    env = run.environment or "production"
    retired = identity.retired_by(s, tenant_id=run.tenant_id, actor=f"playbook-run:{run.id}")
    if retired is None:
        raise ConflictError(f"run {run.id} retired no CA: distrust-ca follows a rotate-ca step")
    waiting = identity.distrust_when_migrated(s, ca_id=retired, now=ctx.now)
    if waiting == 0:
        done = identity.distrust_ca(s, ctx.executor(), retired, now=ctx.now)
        ctx.logged(
            f"{env} issuing CA {retired} distrusted: no device depends on it",
            {"ca": retired, "revoked": done.revoked},
        )
    else:
        ctx.logged(
            f"{env} issuing CA {retired} is distrusted once none of the {waiting} device(s) "
            "that depend on it does (or when its window closes)",
            {"ca": retired, "dependents": waiting},
        )
    return None


@_handles("renew")
def _renew(ctx: StepContext) -> After:
    s, run, pks = ctx.session, ctx.run, ctx.device_pks
    env = run.environment or "production"
    ca = identity.active_issuing_ca(s, tenant_id=run.tenant_id, environment=env)
    tenant_name = ctx.tenant_name()
    online = online_devices(s, pks, ctx.now)  # as the step runs, not as it was planned
    held = identity.held_serials(s, pks, ca_id=ca.id)
    record_pending(
        s, run, step=ctx.index, pks=pks, online=online, requirement=Requirement.ca(ca.id),
        now=ctx.now, held=held,
    )  # fmt: skip
    targets = [d for pk, d in zip(pks, device_ids(s, pks), strict=True) if pk in online]
    ctx.logged(
        f"asking {len(targets)} online device(s) to renew under CA {ca.id}; "
        f"{len(pks) - len(targets)} offline tracked until they do",
        {"ca": ca.id, "online": len(targets)},
    )
    run_id, effects = run.id, ctx.effects

    def send() -> None:
        for device_id in targets:
            try:
                effects.command(tenant_name, device_id, "renew")
            except FleetwardError as exc:  # the tracker re-sends to whoever has not renewed
                log.warning("run %s: renew commands stopped at %s: %s", run_id, device_id, exc)
                return

    return send


@_handles("emergency-release")
def _emergency_release(ctx: StepContext) -> After:
    s, run, pks = ctx.session, ctx.run, ctx.device_pks
    who = ctx.executor()
    campaign = ota.create_campaign(
        s, who, release_id=int(ctx.step.args["release"]), emergency=True, only_devices=pks
    )
    approvals = json.loads(run.approvals)
    for actor in approvals:
        # The run's approvers approved this release as part of the run.
        ota.approve_campaign(
            s, Principal(run.tenant_id, who.tenant_name, "security", actor), campaign.id
        )
    if campaign.state != "running":
        raise ConflictError(
            f"emergency campaign {campaign.id} needs {ota.EMERGENCY_APPROVALS} security "
            f"approvals; the run has {len(approvals)}"
        )
    in_campaign = ota.campaign_device_pks(s, campaign.id)
    online = online_devices(s, in_campaign, ctx.now)
    version = ota.get_release(s, who, campaign.release_id).version
    record_pending(
        s, run, step=ctx.index, pks=in_campaign, online=online,
        requirement=Requirement.campaign(campaign.id, version), now=ctx.now,
    )  # fmt: skip
    left_out = len(pks) - len(in_campaign)
    ctx.logged(
        f"emergency campaign {campaign.id} offers {version} to {len(in_campaign)} device(s)"
        + (f" ({left_out} left out: other hardware or not active)" if left_out else ""),
        {"campaign": campaign.id, "version": version, "devices": len(in_campaign)},
    )
    return None


# Every action but ``webhook`` (see :func:`notify`), by name.
STEPS: Mapping[str, StepHandler] = MappingProxyType(_HANDLERS)


def notify(
    ctx: ResponseContext, *, run_id: int, incident_id: int, step: pb.Step, effects: Effects
) -> None:
    """The ``webhook`` step: POST the incident's summary to the step's URL,
    outside any transaction; the outcome goes on the timeline and never
    fails the run."""
    with ctx.db.read() as s:
        incident = s.get_one(Incident, incident_id)
        payload = {
            "incident": incident.id,
            "title": incident.title,
            "severity": incident.severity,
            "state": incident.state,
            "drill": incident.drill,
            "run": run_id,
        }
    url = str(step.args["url"])
    shown = redacted(url)
    if not webhook_allowed(url, ctx.settings.webhook_hosts):
        ok, summary = False, (f"did not notify {shown}: its host is not in FLEETWARD_WEBHOOK_HOSTS")
    else:
        try:
            status = effects.webhook(url, payload)
            ok = 200 <= status < 300
            summary = f"notified {shown}: HTTP {status}"
        except Exception:  # a notification never stops a containment
            # Only "failed": the kind of network error would tell a reader
            # which internal ports answer.
            ok, summary = False, f"could not notify {shown}"
    with ctx.db.session() as s:
        incident = s.get_one(Incident, incident_id)
        log_event(
            s, incident, actor=f"playbook-run:{run_id}", kind="step.webhook", summary=summary,
            details={"run": run_id, "ok": ok}, audit_action="playbook.step.webhook",
        )  # fmt: skip
