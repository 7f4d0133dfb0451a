"""Playbook runs: plan (the blast radius), approve, execute.

A run goes ``awaiting-approval`` (destructive steps) -> ``ready`` ->
``running`` -> ``done`` or ``failed``. Planning resolves the cohort once and
keeps it with the blast radius: what the approvers saw is what runs, even if
devices enroll meanwhile.

The rules a run enforces before anything happens are pure and written out
in :mod:`fleetward.response.plan`; the cohort is read by
:mod:`fleetward.response.cohort`; each step is a handler in
:mod:`fleetward.response.steps`; what devices still owe afterwards, and
when the incident is contained, is :mod:`fleetward.response.compliance`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from fleetward.errors import ConflictError, FleetwardError, InvalidInputError, NotFoundError
from fleetward.response import _cohort as cohorts
from fleetward.response import plan
from fleetward.response import playbook as pb
from fleetward.response.compliance import track
from fleetward.response.models import Incident, Playbook, PlaybookRun
from fleetward.response.service import get_incident, get_playbook, log_event
from fleetward.response.steps import STEPS, Effects, ResponseContext, StepContext, notify
from fleetward.store.db import utcnow
from fleetward.tenancy import scope
from fleetward.tenancy.roles import Principal

__all__ = [
    "approve_run",
    "dry_run",
    "execute_run",
    "get_run",
    "list_runs",
    "start_run",
]


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
) -> tuple[Playbook, plan.BlastRadius]:
    row = get_playbook(session, principal, playbook, version)
    spec = pb.parse(row.source)
    plan.may_run(principal, spec, environment)
    plan.check_incident(
        incident_id=incident.id, state=incident.state, drill=incident.drill,
        environment=environment,
    )  # fmt: skip
    cohort, steps = pb.bind(spec, params)
    devices = cohorts.resolve(
        session, principal, cohort, environment=environment, incident=incident
    )
    pks = [pk for pk, _, _ in devices]
    radius = plan.blast_radius(
        playbook=row.name, version=row.version, spec=spec, cohort=cohort, steps=steps,
        environment=environment, devices=devices,
        online=cohorts.online_devices(session, pks, now),
        certificates=cohorts.certificate_serials(session, pks),
        population=cohorts.population(session, principal.tenant_id, environment),
        confirm=confirm,
    )  # fmt: skip
    return row, radius


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
) -> plan.BlastRadius:
    """What a run would touch; nothing is written. ``refusal`` says why a
    real run would be refused (empty cohort, confirmation needed)."""
    incident = get_incident(session, principal, incident_id)
    _, radius = _plan(
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
    row, radius = _plan(
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
    run = session.get(PlaybookRun, run_id, with_for_update=for_update)
    if run is None or run.tenant_id != principal.tenant_id:
        raise NotFoundError(f"playbook run {run_id} not found")
    return run


def list_runs(session: Session, principal: Principal, incident_id: int) -> list[PlaybookRun]:
    """The runs of one of the tenant's incidents, oldest first.

    Raises:
        NotFoundError: the incident is not the caller's tenant's.
    """
    get_incident(session, principal, incident_id)
    return list(
        session.execute(
            select(PlaybookRun)
            .where(PlaybookRun.incident_id == incident_id)
            .order_by(PlaybookRun.id)
        ).scalars()
    )


def approve_run(
    session: Session, principal: Principal, run_id: int, *, now: dt.datetime | None = None
) -> PlaybookRun:
    """A security operator's approval (not the requester's own).

    Raises:
        PermissionDeniedError: not a security operator, or the requester.
        ConflictError: not waiting for approval, or approved twice by one actor.
    """
    plan.check_approver(principal)
    now = now or utcnow()
    run = get_run(session, principal, run_id, for_update=True)
    scope.authorize(principal, scope.RUN_MANAGE, environments=[run.environment])
    incident = session.get_one(Incident, run.incident_id)
    approvals = plan.add_approval(
        actor=principal.actor, run_id=run_id, state=run.state, requested_by=run.requested_by,
        approvals=json.loads(run.approvals), incident_id=incident.id,
        incident_state=incident.state,
    )  # fmt: skip
    run.approvals = json.dumps(approvals)
    if len(approvals) >= run.approvals_needed:
        run.state = "ready"
    log_event(
        session, incident, actor=principal.actor, kind="run.approved",
        summary=f"run {run.id} approved ({len(approvals)} of {run.approvals_needed})",
        details={"run": run.id, "approvals": approvals}, audit_action="playbook.run.approve",
        now=now,
    )  # fmt: skip
    return run


def execute_run(
    ctx: ResponseContext,
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

    Args:
        ctx: the running system (the application context satisfies it).
        effects: commands to devices and webhooks.
        on_step: called with each step's index and action once it is done.

    Raises:
        ConflictError: the run is not ready (awaiting approval, done,
            running), or its incident is closed.
        PermissionDeniedError: the executor may not take a step.
    """
    with ctx.db.session() as s:
        run = get_run(s, principal, run_id)
        spec = pb.parse(s.get_one(Playbook, run.playbook_id).source)
        plan.may_run(principal, spec, run.environment)
        plan.check_executable(
            run_id=run_id, state=run.state, approvals=len(json.loads(run.approvals)),
            approvals_needed=run.approvals_needed, incident_id=run.incident_id,
            incident_state=s.get_one(Incident, run.incident_id).state,
        )  # fmt: skip
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
                notify(ctx, run_id=run_id, incident_id=incident_id, step=step, effects=effects)
            else:
                with ctx.db.session() as s:
                    run = s.get_one(PlaybookRun, run_id)
                    after = STEPS[step.action](
                        StepContext(
                            session=s, run=run, index=index, step=step, device_pks=pks,
                            effects=effects, pki=ctx.pki, now=utcnow(),
                        )
                    )  # fmt: skip
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


def _finish(ctx: ResponseContext, run_id: int, state: str, outcome: str) -> None:
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
