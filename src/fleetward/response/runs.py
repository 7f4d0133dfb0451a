"""Playbook runs: dry run (blast radius), approvals, execution, compliance.

A run goes ``awaiting-approval`` (destructive steps) -> ``ready`` ->
``running`` -> ``done`` or ``failed``. Planning resolves the cohort once and
keeps it with the blast radius: what the approvers saw is what runs, even if
devices enroll meanwhile.

Rules a run enforces before anything happens:

- the operator holds the permission of every step (:data:`playbook.ACTIONS`);
- the cohort is the tenant's own devices in **one** environment; an
  incident opened as a drill acts only on the ``drill`` environment, and
  nothing else ever does;
- a cohort that matches nothing is refused; one larger than the playbook's
  ``confirm_above`` (or the whole environment) needs ``confirm=<size>``;
- destructive steps wait for approvals by other security operators.

Steps the server enforces by itself (quarantine, revocation, CA rotation)
are done when the step commits. Steps that need the device to act (an
emergency release, a renewal under the new CA) leave one
:class:`IncidentDevice` row per device, ``pending`` until :func:`track` sees
it comply; devices that were offline when the step ran are marked so, and
listed as stragglers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from fleetward.api.context import AppContext
from fleetward.detection.models import Alert
from fleetward.errors import ConflictError, FleetwardError, InvalidInputError, PermissionDeniedError
from fleetward.identity import ca_service
from fleetward.identity import service as identity
from fleetward.identity.models import CertificateRecord, Device
from fleetward.ota import campaigns
from fleetward.ota import service as releases
from fleetward.ota.models import CampaignDevice
from fleetward.response import playbook as pb
from fleetward.response.models import Incident, IncidentDevice, Playbook, PlaybookRun
from fleetward.response.service import alert_devices, get_incident, get_playbook, log_event
from fleetward.store.db import utcnow
from fleetward.telemetry.models import Event
from fleetward.tenancy import scope
from fleetward.tenancy.models import Tenant
from fleetward.tenancy.roles import ENVIRONMENTS, Permission, Principal, require

__all__ = [
    "ONLINE_WINDOW",
    "BlastRadius",
    "Effects",
    "approve_run",
    "device_ids",
    "dry_run",
    "execute_run",
    "get_run",
    "needs_tracking",
    "start_run",
    "stragglers",
    "track",
    "webhook_allowed",
]

log = logging.getLogger("fleetward.response")

_IN_FLIGHT = ("awaiting-approval", "ready", "running")
# A device counts as online when it sent anything in this window (telemetry
# every 10 s by default; three missed readings is offline).
ONLINE_WINDOW = dt.timedelta(seconds=30)
SAMPLE = 20  # device ids and serials shown in a blast radius


class Effects(Protocol):
    """What a run does outside the database (one seam, faked in unit tests only)."""

    def command(self, tenant: str, device_id: str, name: str) -> None:
        """Send a command to a device (``fw/<tenant>/<device>/cmd/<name>``)."""

    def webhook(self, url: str, payload: dict[str, Any]) -> int:
        """POST a JSON notification; returns the HTTP status."""


@dataclass(frozen=True)
class Target:
    """One device of a resolved cohort."""

    pk: int
    device_id: str
    state: str
    online: bool


@dataclass(frozen=True)
class BlastRadius:
    """What a run would touch, before anything happens."""

    playbook: str
    version: int
    environment: str
    cohort: str
    devices: int
    online: int
    offline: int
    population: int
    states: dict[str, int]
    certificates: int
    sample_devices: list[str]
    sample_certificates: list[str]
    steps: list[dict[str, Any]]
    approvals_needed: int
    refusal: str | None = None
    device_pks: list[int] = field(default_factory=list, repr=False)
    online_pks: list[int] = field(default_factory=list, repr=False)

    def as_dict(self, *, with_devices: bool = False) -> dict[str, Any]:
        """JSON-ready (device keys only when asked: they can be 100,000 long)."""
        out = {k: v for k, v in self.__dict__.items() if k not in ("device_pks", "online_pks")}
        if with_devices:
            out["device_pks"] = self.device_pks
            out["online_pks"] = self.online_pks
        return out


# --------------------------------------------------------------------------- cohorts


def _cohort_devices(
    session: Session,
    principal: Principal,
    cohort: pb.Cohort,
    *,
    environment: str,
    incident: Incident | None,
) -> list[tuple[int, str, str]]:
    in_env = select(CertificateRecord.device_pk).where(
        CertificateRecord.tenant_id == principal.tenant_id,
        CertificateRecord.environment == environment,
        CertificateRecord.status == "good",
    )
    stmt = select(Device.id, Device.device_id, Device.state, Device.labels).where(
        Device.tenant_id == principal.tenant_id,
        Device.state.in_(("active", "quarantined")),
        Device.id.in_(in_env),
    )
    if cohort.batch is not None:
        stmt = stmt.where(Device.batch_id == cohort.batch)
    if cohort.product is not None:
        stmt = stmt.where(Device.product == cohort.product)
    if cohort.alert:
        stmt = _alert_filter(session, stmt, incident)
    rows = session.execute(stmt.order_by(Device.id)).all()
    if cohort.devices is not None:
        named = set(cohort.devices)
        known = set(
            session.execute(
                select(Device.device_id).where(
                    Device.tenant_id == principal.tenant_id, Device.device_id.in_(named)
                )
            ).scalars()
        ) if len(named) <= 10_000 else {r[1] for r in rows}  # fmt: skip
        missing = named - known
        if missing and len(named) <= 10_000:
            raise InvalidInputError(
                f"{len(missing)} named device(s) are not devices of tenant "
                f"{principal.tenant_name}, e.g. {sorted(missing)[0]!r}: nothing was done"
            )
        rows = [r for r in rows if r[1] in named]
    if cohort.labels:
        wanted = dict(cohort.labels)
        rows = [
            r for r in rows if all(json.loads(r[3] or "{}").get(k) == v for k, v in wanted.items())
        ]
    out = [(int(pk), str(d), str(state)) for pk, d, state, _ in rows]
    _refuse_mixed(session, out, environment)
    return out


def _refuse_mixed(session: Session, devices: list[tuple[int, str, str]], environment: str) -> None:
    """A device that also holds a good certificate of another environment
    (a reprovisioned device, say) is not the run's to act on: revoking or
    quarantining it would reach that environment too."""
    pks = [pk for pk, _, _ in devices]
    mixed: list[str] = []
    for start in range(0, len(pks), 5000):
        mixed.extend(
            session.execute(
                select(Device.device_id)
                .join(CertificateRecord, CertificateRecord.device_pk == Device.id)
                .where(
                    Device.id.in_(pks[start : start + 5000]),
                    CertificateRecord.status == "good",
                    CertificateRecord.environment != environment,
                )
                .distinct()
            ).scalars()
        )
    if mixed:
        raise PermissionDeniedError(
            f"{len(mixed)} device(s) of the cohort also hold certificates outside {environment}, "
            f"e.g. {sorted(mixed)[0]!r}: a run acts on one environment; nothing was done"
        )


def _alert_filter(session: Session, stmt: Any, incident: Incident | None) -> Any:
    if incident is None or incident.alert_id is None:
        raise InvalidInputError("cohort 'alert' needs an incident opened from an alert")
    alert = session.get(Alert, incident.alert_id)
    assert alert is not None
    return stmt.where(Device.id.in_(alert_devices(alert)))


def _online(session: Session, pks: list[int], now: dt.datetime) -> set[int]:
    since = now - ONLINE_WINDOW
    seen: set[int] = set()
    for start in range(0, len(pks), 5000):
        chunk = pks[start : start + 5000]
        seen.update(
            int(pk)
            for pk in session.execute(
                select(Event.device_pk)
                .where(Event.device_pk.in_(chunk), Event.at >= since)
                .group_by(Event.device_pk)
            ).scalars()
            if pk is not None
        )
    return seen


def _population(session: Session, tenant_id: int, environment: str) -> int:
    return int(
        session.execute(
            select(func.count(func.distinct(CertificateRecord.device_pk)))
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(
                CertificateRecord.tenant_id == tenant_id,
                CertificateRecord.environment == environment,
                CertificateRecord.status == "good",
                Device.state.in_(("active", "quarantined")),
            )
        ).scalar_one()
    )


def _may_run(principal: Principal, spec: pb.PlaybookSpec, environment: str | None) -> None:
    """The operator may take every step, in this environment.

    Raises:
        PermissionDeniedError: a step the role does not allow, or a token
            scoped to another environment.
        InvalidInputError: an unknown environment.
    """
    require(principal, Permission.INCIDENT_MANAGE)
    for step in spec.steps:
        for permission in pb.ACTIONS[step["action"]]:
            require(principal, permission)
    if environment not in ENVIRONMENTS:
        raise InvalidInputError(f"unknown environment {environment!r}; one of {ENVIRONMENTS}")
    scope.authorize(principal, scope.RUN_MANAGE, environments=[environment])


def _effect(step: pb.Step, radius_devices: int, certs: int, environment: str) -> str:
    if step.action == "quarantine":
        return f"quarantine {radius_devices} device(s): they keep only boot evidence and updates"
    if step.action == "revoke":
        return (
            f"revoke {certs} certificate(s) of {radius_devices} device(s) "
            f"({step.args.get('reason', 'unspecified')}); the broker cuts them off"
        )
    if step.action == "rotate-ca":
        return f"retire the active {environment} issuing CA and issue from a new one"
    if step.action == "renew":
        return f"ask {radius_devices} device(s) to renew under the new CA"
    if step.action == "emergency-release":
        return f"offer release {step.args['release']} to {radius_devices} device(s) in one wave"
    return f"POST a notification to {step.args['url']}"


def _plan(
    session: Session,
    principal: Principal,
    *,
    incident: Incident,
    playbook: str,
    version: int | None,
    params: dict[str, Any],
    environment: str,
    confirm: int | None,
    now: dt.datetime,
) -> tuple[Any, tuple[pb.Step, ...], BlastRadius]:
    row = get_playbook(session, principal, playbook, version)
    spec = pb.parse(row.source)
    _may_run(principal, spec, environment)
    if incident.state == "closed":
        raise ConflictError(f"incident {incident.id} is closed")
    if incident.drill and environment != "drill":
        raise PermissionDeniedError(
            f"incident {incident.id} is a drill: it may act on the drill environment only, "
            f"not {environment}"
        )
    if environment == "drill" and not incident.drill:
        raise InvalidInputError(
            "the drill environment holds simulated devices; open the incident as a drill"
        )
    cohort, steps = pb.bind(spec, params)
    devices = _cohort_devices(
        session, principal, cohort, environment=environment, incident=incident
    )
    pks = [pk for pk, _, _ in devices]
    online = _online(session, pks, now)
    states: dict[str, int] = {}
    for _, _, state in devices:
        states[state] = states.get(state, 0) + 1
    cert_rows: list[str] = []
    for start in range(0, len(pks), 5000):
        cert_rows.extend(
            session.execute(
                select(CertificateRecord.serial).where(
                    CertificateRecord.device_pk.in_(pks[start : start + 5000]),
                    CertificateRecord.status == "good",
                )
            ).scalars()
        )
    population = _population(session, principal.tenant_id, environment)
    refusal = None
    try:
        pb.check_confirmation(
            size=len(devices),
            population=population,
            confirm_above=spec.confirm_above,
            confirm=confirm,
            what=f"{cohort.describe()} in {environment}",
        )
    except InvalidInputError as exc:
        refusal = exc.detail
    radius = BlastRadius(
        playbook=row.name,
        version=row.version,
        environment=environment,
        cohort=cohort.describe(),
        devices=len(devices),
        online=len(online),
        offline=len(devices) - len(online),
        population=population,
        states=states,
        certificates=len(cert_rows),
        sample_devices=[d for _, d, _ in devices[:SAMPLE]],
        sample_certificates=sorted(cert_rows)[:SAMPLE],
        steps=[
            {
                "action": s.action,
                "destructive": s.destructive,
                "effect": _effect(s, len(devices), len(cert_rows), environment),
            }
            for s in steps
        ],
        approvals_needed=pb.approvals_needed(spec),
        refusal=refusal,
        device_pks=pks,
        online_pks=sorted(online),
    )
    return row, steps, radius


def dry_run(
    session: Session,
    principal: Principal,
    *,
    incident_id: int,
    playbook: str,
    version: int | None = None,
    params: dict[str, Any] | None = None,
    environment: str = "production",
    confirm: int | None = None,
    now: dt.datetime | None = None,
) -> BlastRadius:
    """What a run would touch; nothing is written. ``refusal`` says why a
    real run would be refused (empty cohort, confirmation needed)."""
    incident = get_incident(session, principal, incident_id)
    _, _, radius = _plan(
        session, principal, incident=incident, playbook=playbook, version=version,
        params=params or {}, environment=environment, confirm=confirm, now=now or utcnow(),
    )  # fmt: skip
    return radius


def start_run(
    session: Session,
    principal: Principal,
    *,
    incident_id: int,
    playbook: str,
    version: int | None = None,
    params: dict[str, Any] | None = None,
    environment: str = "production",
    confirm: int | None = None,
    now: dt.datetime | None = None,
) -> PlaybookRun:
    """Plan a run: it is ``ready`` at once, or ``awaiting-approval``.

    Raises:
        InvalidInputError: bad parameters, an empty cohort, a large one
            without ``confirm``, the drill environment outside a drill.
        PermissionDeniedError: a step the operator may not take; a drill
            incident pointed at another environment.
        NotFoundError: the incident, the playbook or a named device is not
            this tenant's.
    """
    now = now or utcnow()
    incident = get_incident(session, principal, incident_id)
    row, _, radius = _plan(
        session, principal, incident=incident, playbook=playbook, version=version,
        params=params or {}, environment=environment, confirm=confirm, now=now,
    )  # fmt: skip
    if radius.refusal is not None:
        raise InvalidInputError(radius.refusal)
    run = PlaybookRun(
        tenant_id=principal.tenant_id,
        incident_id=incident.id,
        playbook_id=row.id,
        params=json.dumps(params or {}),
        environment=environment,
        state="awaiting-approval" if radius.approvals_needed else "ready",
        requested_by=principal.actor,
        requester_role=principal.role,
        approvals_needed=radius.approvals_needed,
        approvals="[]",
        cohort_size=radius.devices,
        blast_radius=json.dumps(radius.as_dict(with_devices=True)),
        step=0,
        outcome="",
        created_at=now,
    )
    session.add(run)
    session.flush()
    if incident.state == "contained":
        # New work: the incident is not contained until it is done too.
        incident.state, incident.contained_at = "open", None
    log_event(
        session, incident, actor=principal.actor, kind="run.planned",
        summary=(
            f"run {run.id}: {row.name} v{row.version} on {radius.devices} device(s) "
            f"({radius.online} online) in {environment}"
            + (f"; waits for {radius.approvals_needed} approval(s)" if radius.approvals_needed
               else "")
        ),
        details={"run": run.id, "blast_radius": radius.as_dict()},
        audit_action="playbook.run.plan", now=now,
    )  # fmt: skip
    return run


def get_run(
    session: Session, principal: Principal, run_id: int, *, for_update: bool = False
) -> PlaybookRun:
    """A run of the caller's tenant (``for_update``: locked until commit).

    Raises:
        NotFoundError: no such run here.
    """
    from fleetward.errors import NotFoundError

    run = session.get(PlaybookRun, run_id, with_for_update=for_update)
    if run is None or run.tenant_id != principal.tenant_id:
        raise NotFoundError(f"playbook run {run_id} not found")
    return run


def approve_run(
    session: Session, principal: Principal, run_id: int, *, now: dt.datetime | None = None
) -> PlaybookRun:
    """A security operator's approval (not the requester's own).

    Raises:
        PermissionDeniedError: not a security operator, or the requester.
        ConflictError: not waiting for approval, or approved twice by one actor.
    """
    if principal.role != "security":
        raise PermissionDeniedError("destructive playbook steps are approved by security operators")
    now = now or utcnow()
    run = get_run(session, principal, run_id, for_update=True)
    scope.authorize(principal, scope.RUN_MANAGE, environments=[run.environment])
    if run.state != "awaiting-approval":
        raise ConflictError(f"run {run_id} is {run.state}")
    if session.get_one(Incident, run.incident_id).state == "closed":
        raise ConflictError(f"incident {run.incident_id} is closed")
    if principal.actor == run.requested_by:
        raise PermissionDeniedError("the operator who planned a run cannot approve it")
    approvals: list[str] = json.loads(run.approvals)
    if principal.actor in approvals:
        raise ConflictError(f"{principal.actor} already approved run {run_id}")
    approvals.append(principal.actor)
    run.approvals = json.dumps(approvals)
    if len(approvals) >= run.approvals_needed:
        run.state = "ready"
    incident = session.get(Incident, run.incident_id)
    assert incident is not None
    log_event(
        session, incident, actor=principal.actor, kind="run.approved",
        summary=f"run {run.id} approved ({len(approvals)} of {run.approvals_needed})",
        details={"run": run.id, "approvals": approvals}, audit_action="playbook.run.approve",
        now=now,
    )  # fmt: skip
    return run


# --------------------------------------------------------------------------- execution


def _executor(session: Session, run: PlaybookRun) -> Principal:
    tenant = session.get(Tenant, run.tenant_id)
    assert tenant is not None
    # The run acts with the rights checked when it was planned and again
    # when it is executed (the planner's and the executor's, per step) plus
    # its approvals; the audit names the run, its requester, approvers and
    # executor.
    return Principal(run.tenant_id, tenant.name, "admin", f"playbook-run:{run.id}")


# A step does its database work in the caller's transaction and may return
# what to do once that transaction committed (messages to devices): no
# broker round trip ever holds the writer.
_After = Callable[[], None] | None


def execute_run(
    ctx: AppContext,
    principal: Principal,
    run_id: int,
    *,
    effects: Effects,
    on_step: Callable[[int, str], None] | None = None,
) -> PlaybookRun:
    """Run a ``ready`` run's steps in order, each in its own transaction.

    The executor needs the permissions of every step too (and its token's
    environment must be the run's). Only one caller moves a run from
    ``ready`` to ``running``. A step that fails stops the run (``failed``,
    the reason in ``outcome``); what earlier steps did stays done and on the
    timeline. Webhooks are sent outside any transaction and never fail a run.

    Raises:
        ConflictError: the run is not ready (awaiting approval, done,
            running), or its incident is closed.
        PermissionDeniedError: the executor may not take a step.
    """
    with ctx.db.session() as s:
        run = get_run(s, principal, run_id)
        spec = pb.parse(s.get_one(Playbook, run.playbook_id).source)
        _may_run(principal, spec, run.environment)
        if s.get_one(Incident, run.incident_id).state == "closed":
            raise ConflictError(f"incident {run.incident_id} is closed")
        if run.state != "ready":
            raise ConflictError(
                f"run {run_id} is {run.state}"
                + (
                    f" ({len(json.loads(run.approvals))} of {run.approvals_needed} approvals)"
                    if run.state == "awaiting-approval"
                    else ""
                )
            )
        # Compare-and-set: of two concurrent executors, one wins.
        moved = s.execute(
            update(PlaybookRun)
            .where(PlaybookRun.id == run_id, PlaybookRun.state == "ready")
            .values(state="running", started_at=utcnow(), executed_by=principal.actor)
            .execution_options(synchronize_session=False)
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise ConflictError(f"run {run_id} is being executed already")
        _, steps = pb.bind(spec, json.loads(run.params))
        radius = json.loads(run.blast_radius)
        incident_id = run.incident_id
    pks: list[int] = radius["device_pks"]
    for index, step in enumerate(steps):
        try:
            if step.action == "webhook":
                _webhook(ctx, run_id, incident_id, step, effects)
            else:
                with ctx.db.session() as s:
                    run = s.get_one(PlaybookRun, run_id)
                    after = _STEPS[step.action](s, run, index, step, pks, effects, ctx)
                    run.step = index + 1
                if after is not None:
                    after()
            if on_step is not None:
                on_step(index, step.action)
        except FleetwardError as exc:
            _finish(ctx, run_id, "failed", f"step {index + 1} ({step.action}): {exc.detail}")
            raise
        except Exception as exc:  # never leave a run "running" behind
            _finish(
                ctx, run_id, "failed", f"step {index + 1} ({step.action}): {type(exc).__name__}"
            )
            raise
    _finish(ctx, run_id, "done", f"{len(steps)} step(s) done")
    with ctx.db.session() as s:
        track(s, incident_id=incident_id)
        return s.get_one(PlaybookRun, run_id)


def _finish(ctx: AppContext, run_id: int, state: str, outcome: str) -> None:
    with ctx.db.session() as s:
        run = s.get_one(PlaybookRun, run_id)
        run.state, run.outcome, run.finished_at = state, outcome, utcnow()
        incident = s.get_one(Incident, run.incident_id)
        log_event(
            s, incident, actor=f"playbook-run:{run_id}", kind=f"run.{state}",
            summary=f"run {run_id} {state}: {outcome}",
            details={"run": run_id, "executed_by": run.executed_by},
            audit_action=f"playbook.run.{state}",
        )  # fmt: skip


def device_ids(session: Session, pks: list[int]) -> list[str]:
    """The device ids of ``pks``, in the same order."""
    by_pk: dict[int, str] = {}
    for start in range(0, len(pks), 5000):
        rows = session.execute(
            select(Device.id, Device.device_id).where(Device.id.in_(pks[start : start + 5000]))
        ).all()
        by_pk.update((int(pk), str(d)) for pk, d in rows)
    return [by_pk[pk] for pk in pks]


def _step_quarantine(
    s: Session, run: PlaybookRun, index: int, step: pb.Step, pks: list[int],
    effects: Effects, ctx: AppContext,
) -> _After:  # fmt: skip
    done = identity.quarantine_devices(
        s, _executor(s, run), pks, reason=str(step.args.get("reason", f"playbook run {run.id}"))
    )
    _logged(
        s, run, index, step, f"quarantined {len(done)} device(s)",
        {"devices": len(done), "sample": done[:SAMPLE]},
    )  # fmt: skip
    return None


def _step_revoke(
    s: Session, run: PlaybookRun, index: int, step: pb.Step, pks: list[int],
    effects: Effects, ctx: AppContext,
) -> _After:  # fmt: skip
    who = _executor(s, run)
    revoked = identity.revoke_devices(
        s, who, device_ids(s, pks), reason=str(step.args.get("reason", "unspecified"))
    )
    _logged(
        s, run, index, step, f"revoked {len(revoked)} device(s) and their certificates",
        {"devices": len(revoked), "sample": revoked[:SAMPLE]},
    )  # fmt: skip
    return None


def _step_rotate_ca(
    s: Session, run: PlaybookRun, index: int, step: pb.Step, pks: list[int],
    effects: Effects, ctx: AppContext,
) -> _After:  # fmt: skip
    env = run.environment or "production"
    tenant = s.get_one(Tenant, run.tenant_id)
    old = ca_service.active_issuing_ca(s, tenant_id=run.tenant_id, environment=env)
    root = ca_service.root_ca(s, tenant_id=run.tenant_id)
    if root.key_uri.startswith(ca_service.OFFLINE):
        raise ConflictError(
            "the root key is offline: rotate the issuing CA with it (fleetward ca csr / "
            "import), then plan a run with the renew step"
        )
    # The new key lives where the old one did (an HSM-held CA stays in the HSM).
    backend = "pkcs11" if old.key_uri.startswith("pkcs11:") else "file"
    ca, csr = ca_service.create_issuing_csr(
        s, ctx.pki, tenant=tenant, environment=env, actor=f"playbook-run:{run.id}",
        backend=backend,
    )  # fmt: skip
    cert = ca_service.sign_issuing_csr_offline(
        root_cert_pem=(root.certificate_pem or "").encode(),
        root_signer=ctx.pki.keyring.open(root.key_uri), csr_pem=csr, environment=env,
    )  # fmt: skip
    ca_service.import_issuing_certificate(
        s, ctx.pki, tenant_id=run.tenant_id, ca_id=ca.id, certificate_pem=cert,
        actor=f"playbook-run:{run.id}",
    )  # fmt: skip
    _logged(
        s, run, index, step, f"{env} issuing CA {old.id} retired; CA {ca.id} issues now",
        {"old_ca": old.id, "new_ca": ca.id, "backend": backend},
    )  # fmt: skip
    return None


def _step_renew(
    s: Session, run: PlaybookRun, index: int, step: pb.Step, pks: list[int],
    effects: Effects, ctx: AppContext,
) -> _After:  # fmt: skip
    env = run.environment or "production"
    ca = ca_service.active_issuing_ca(s, tenant_id=run.tenant_id, environment=env)
    tenant = s.get_one(Tenant, run.tenant_id)
    online = _online(s, pks, utcnow())  # as the step runs, not as it was planned
    held: dict[int, str] = {}
    for start in range(0, len(pks), 5000):
        for pk, serial in s.execute(
            select(CertificateRecord.device_pk, func.max(CertificateRecord.serial))
            .where(
                CertificateRecord.device_pk.in_(pks[start : start + 5000]),
                CertificateRecord.status == "good",
                CertificateRecord.ca_id == ca.id,
            )
            .group_by(CertificateRecord.device_pk)
        ).all():
            held[int(pk)] = str(serial)
    _pending(s, run, index, pks, online, f"ca:{ca.id}", held=held)
    targets = [d for pk, d in zip(pks, device_ids(s, pks), strict=True) if pk in online]
    _logged(
        s, run, index, step,
        f"asking {len(targets)} online device(s) to renew under CA {ca.id}; "
        f"{len(pks) - len(targets)} offline tracked until they do",
        {"ca": ca.id, "online": len(targets)},
    )  # fmt: skip
    run_id = run.id

    def send() -> None:
        for device_id in targets:
            try:
                effects.command(tenant.name, device_id, "renew")
            except FleetwardError as exc:  # the tracker re-sends to whoever has not renewed
                log.warning("run %s: renew commands stopped at %s: %s", run_id, device_id, exc)
                return

    return send


def _step_release(
    s: Session, run: PlaybookRun, index: int, step: pb.Step, pks: list[int],
    effects: Effects, ctx: AppContext,
) -> _After:  # fmt: skip
    who = _executor(s, run)
    campaign = campaigns.create_campaign(
        s, who, release_id=int(step.args["release"]), emergency=True, only_devices=pks
    )
    tenant = s.get_one(Tenant, run.tenant_id)
    for actor in json.loads(run.approvals):
        # The run's approvers approved this release as part of the run.
        campaigns.approve(s, Principal(run.tenant_id, tenant.name, "security", actor), campaign.id)
    if campaign.state != "running":
        raise ConflictError(
            f"emergency campaign {campaign.id} needs {campaigns.EMERGENCY_APPROVALS} security "
            f"approvals; the run has {len(json.loads(run.approvals))}"
        )
    in_campaign = list(
        s.execute(
            select(CampaignDevice.device_pk).where(CampaignDevice.campaign_id == campaign.id)
        ).scalars()
    )
    online = _online(s, in_campaign, utcnow())
    version = releases.get_release(s, who, campaign.release_id).version
    _pending(s, run, index, in_campaign, online, f"campaign:{campaign.id}:{version}")
    left_out = len(pks) - len(in_campaign)
    _logged(
        s, run, index, step,
        f"emergency campaign {campaign.id} offers {version} to {len(in_campaign)} device(s)"
        + (f" ({left_out} left out: other hardware or not active)" if left_out else ""),
        {"campaign": campaign.id, "version": version, "devices": len(in_campaign)},
    )  # fmt: skip
    return None


def webhook_allowed(url: str, hosts: Collection[str]) -> bool:
    """Whether the installation lets webhooks reach ``url``'s host (an entry
    ``host`` allows any port, ``host:port`` that port only)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    return bool(host) and (host in hosts or f"{host}:{port}" in hosts)


def _redacted(url: str) -> str:
    """The URL without credentials, query or fragment (they may hold secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def _webhook(
    ctx: AppContext, run_id: int, incident_id: int, step: pb.Step, effects: Effects
) -> None:
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
    shown = _redacted(url)
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


_STEPS: dict[str, Callable[..., _After]] = {
    "quarantine": _step_quarantine,
    "revoke": _step_revoke,
    "rotate-ca": _step_rotate_ca,
    "renew": _step_renew,
    "emergency-release": _step_release,
}


def _logged(
    s: Session, run: PlaybookRun, index: int, step: pb.Step, summary: str, details: dict[str, Any]
) -> None:
    incident = s.get_one(Incident, run.incident_id)
    log_event(
        s, incident, actor=f"playbook-run:{run.id}", kind=f"step.{step.action}",
        summary=f"run {run.id} step {index + 1}: {summary}",
        details={"run": run.id, "step": index + 1, "requested_by": run.requested_by,
                 "approvals": json.loads(run.approvals), "executed_by": run.executed_by,
                 **details},
        audit_action=f"playbook.step.{step.action}",
    )  # fmt: skip


def _pending(
    s: Session,
    run: PlaybookRun,
    index: int,
    pks: list[int],
    online: set[int],
    requirement: str,
    *,
    held: dict[int, str] | None = None,
) -> None:
    now = utcnow()
    rows = [
        {
            "incident_id": run.incident_id,
            "run_id": run.id,
            "step": index,
            "device_pk": pk,
            "requirement": requirement,
            "online": pk in online,
            "held": (held or {}).get(pk),
            "state": "pending",
            "since": now,
        }
        for pk in pks
    ]
    for start in range(0, len(rows), 2000):
        s.execute(insert(IncidentDevice.__table__), rows[start : start + 2000])  # type: ignore[arg-type]


# --------------------------------------------------------------------------- compliance


def track(
    session: Session, *, incident_id: int | None = None, now: dt.datetime | None = None
) -> int:
    """Mark devices that complied; contain incidents with nothing pending.

    Returns:
        How many devices complied in this call.
    """
    now = now or utcnow()
    stmt = select(IncidentDevice.requirement, IncidentDevice.incident_id).where(
        IncidentDevice.state == "pending"
    )
    if incident_id is not None:
        stmt = stmt.where(IncidentDevice.incident_id == incident_id)
    groups = set(
        session.execute(stmt.group_by(IncidentDevice.requirement, IncidentDevice.incident_id)).all()
    )
    complied = 0
    for requirement, inc in groups:
        kind, _, rest = requirement.partition(":")
        base = (IncidentDevice.incident_id == inc) & (IncidentDevice.requirement == requirement)
        if kind == "campaign":
            campaign_id = int(rest.split(":")[0])
            done = select(CampaignDevice.device_pk).where(
                CampaignDevice.campaign_id == campaign_id, CampaignDevice.status == "succeeded"
            )
        elif kind == "ca":
            # A good certificate of the new CA other than the one held when
            # the step ran (a device already under that CA must still renew).
            renewed = (
                select(CertificateRecord.serial)
                .where(
                    CertificateRecord.device_pk == IncidentDevice.device_pk,
                    CertificateRecord.ca_id == int(rest),
                    CertificateRecord.status == "good",
                    (IncidentDevice.held.is_(None))
                    | (CertificateRecord.serial != IncidentDevice.held),
                )
                .exists()
            )
            result = session.execute(
                update(IncidentDevice)
                .where(base, IncidentDevice.state == "pending", renewed)
                .values(state="complied", complied_at=now)
                .execution_options(synchronize_session=False)
            )
            complied += int(result.rowcount or 0)  # type: ignore[attr-defined]
            continue
        else:  # pragma: no cover - written by this module only
            continue
        result = session.execute(
            update(IncidentDevice)
            .where(base, IncidentDevice.state == "pending", IncidentDevice.device_pk.in_(done))
            .values(state="complied", complied_at=now)
            .execution_options(synchronize_session=False)
        )
        complied += int(result.rowcount or 0)  # type: ignore[attr-defined]
    _contain(session, incident_id, now)
    return complied


def needs_tracking(session: Session) -> bool:
    """Whether :func:`track` has anything to do (read-only, so a tracker
    takes the writer only when it will write)."""
    pending = session.execute(
        select(IncidentDevice.id).where(IncidentDevice.state == "pending").limit(1)
    ).first()
    if pending is not None:
        return True
    open_with_done_run = session.execute(
        select(Incident.id)
        .join(PlaybookRun, PlaybookRun.incident_id == Incident.id)
        .where(Incident.state == "open", PlaybookRun.state == "done")
        .limit(1)
    ).first()
    return open_with_done_run is not None


def _contain(session: Session, incident_id: int | None, now: dt.datetime) -> None:
    stmt = select(Incident).where(Incident.state == "open")
    if incident_id is not None:
        stmt = stmt.where(Incident.id == incident_id)
    for incident in session.execute(stmt).scalars():
        states = (
            session.execute(
                select(PlaybookRun.state)
                .where(PlaybookRun.incident_id == incident.id)
                .order_by(PlaybookRun.id)
            )
            .scalars()
            .all()
        )
        # Contained: the newest run is done and nothing else is under way (a
        # failed run counts once a later run did the job).
        if not states or states[-1] != "done" or any(r in _IN_FLIGHT for r in states):
            continue
        pending = session.execute(
            select(func.count()).where(
                IncidentDevice.incident_id == incident.id, IncidentDevice.state == "pending"
            )
        ).scalar_one()
        if pending:
            continue
        incident.state = "contained"
        incident.contained_at = now
        log_event(
            session, incident, actor="system", kind="contained",
            summary="contained: every run done and every device complied",
            audit_action="incident.contained", now=now,
        )  # fmt: skip


def stragglers(session: Session, principal: Principal, incident_id: int) -> list[dict[str, Any]]:
    """Devices that have not complied yet, with what they owe and since when."""
    get_incident(session, principal, incident_id)
    rows = session.execute(
        select(
            Device.device_id,
            IncidentDevice.requirement,
            IncidentDevice.online,
            IncidentDevice.since,
        )
        .join(Device, Device.id == IncidentDevice.device_pk)
        .where(IncidentDevice.incident_id == incident_id, IncidentDevice.state == "pending")
        .order_by(Device.device_id)
    ).all()
    return [
        {"device_id": d, "requirement": r, "online_when_run": bool(o), "since": since.isoformat()}
        for d, r, o, since in rows
    ]
