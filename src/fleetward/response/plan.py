"""The rules of a playbook run, decided on values: no database, no clock.

:mod:`fleetward.response.runs` gathers the facts (the incident, the resolved
cohort, who is online, the certificates) and asks these rules; each either
returns a result or raises a typed error. ``now`` never appears here: what
needs a time is given it by the caller.

The rules, in the order a run meets them:

1. The operator holds ``incident:manage`` and the permission of every step
   (:data:`~fleetward.response.playbook.ACTIONS`), in a known environment
   that their token reaches (:func:`may_run`), when the run is planned and
   again when it is executed.
2. A closed incident takes no run; an incident opened as a drill acts on
   the ``drill`` environment only, and nothing else ever does
   (:func:`check_incident`).
3. A cohort that matches nothing is refused; one larger than the
   playbook's ``confirm_above`` (or the whole environment) needs
   ``confirm=<size>``. The blast radius carries the refusal so a dry run
   can show it (:func:`blast_radius`).
4. Destructive steps wait for approvals by security operators other than
   the requester, each counted once (:func:`check_approver`,
   :func:`add_approval`).
5. Only a ``ready`` run of an incident that is not closed is executed
   (:func:`check_executable`).
6. A webhook reaches only a host the installation allows, and its URL is
   shown without credentials, query or fragment (:func:`webhook_allowed`,
   :func:`redacted`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fleetward.errors import ConflictError, InvalidInputError, PermissionDeniedError
from fleetward.response import playbook as pb
from fleetward.tenancy import scope
from fleetward.tenancy.roles import ENVIRONMENTS, Permission, Principal, require

__all__ = [
    "SAMPLE",
    "BlastRadius",
    "add_approval",
    "blast_radius",
    "check_approver",
    "check_executable",
    "check_incident",
    "may_run",
    "redacted",
    "step_effect",
    "webhook_allowed",
]

SAMPLE = 20  # device ids and serials shown in a blast radius


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


def may_run(principal: Principal, spec: pb.PlaybookSpec, environment: str | None) -> None:
    """The operator may take every step, in this environment (rule 1).

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


def check_incident(*, incident_id: int, state: str, drill: bool, environment: str) -> None:
    """The incident may take a run in ``environment`` (rule 2).

    Raises:
        ConflictError: the incident is closed.
        PermissionDeniedError: a drill incident pointed at another environment.
        InvalidInputError: the drill environment outside a drill incident.
    """
    if state == "closed":
        raise ConflictError(f"incident {incident_id} is closed")
    if drill and environment != "drill":
        raise PermissionDeniedError(
            f"incident {incident_id} is a drill: it may act on the drill environment only, "
            f"not {environment}"
        )
    if environment == "drill" and not drill:
        raise InvalidInputError(
            "the drill environment holds simulated devices; open the incident as a drill"
        )


def step_effect(step: pb.Step, *, devices: int, certificates: int, environment: str) -> str:
    """What ``step`` would do, in one line of the blast radius."""
    if step.action == "quarantine":
        return f"quarantine {devices} device(s): they keep only boot evidence and updates"
    if step.action == "revoke":
        return (
            f"revoke {certificates} certificate(s) of {devices} device(s) "
            f"({step.args.get('reason', 'unspecified')}); the broker cuts them off"
        )
    if step.action == "rotate-ca":
        window = step.args.get("window")
        trusted = f"{window} s" if window is not None else "the default window"
        return (
            f"retire the active {environment} issuing CA and issue from a new one; the old "
            f"one stays trusted for {trusted}, its certificates revoked "
            f"({step.args.get('reason', 'superseded')}) as their devices renew"
        )
    if step.action == "distrust-ca":
        return (
            f"distrust the retired {environment} issuing CA once no device depends on it "
            "(devices that have not renewed by the window's end must be re-provisioned)"
        )
    if step.action == "renew":
        return f"ask {devices} device(s) to renew under the new CA"
    if step.action == "emergency-release":
        return f"offer release {step.args['release']} to {devices} device(s) in one wave"
    return f"POST a notification to {step.args['url']}"


def blast_radius(
    *,
    playbook: str,
    version: int,
    spec: pb.PlaybookSpec,
    cohort: pb.Cohort,
    steps: Sequence[pb.Step],
    environment: str,
    devices: Sequence[tuple[int, str, str]],
    online: Collection[int],
    certificates: Sequence[str],
    population: int,
    confirm: int | None,
) -> BlastRadius:
    """What a run would touch, and why it would be refused (rule 3).

    Args:
        devices: the resolved cohort as ``(pk, device id, state)``, in order.
        online: the pks of the cohort's devices seen recently.
        certificates: the serials of the cohort's good certificates.
        population: the tenant's devices in ``environment``.
        confirm: the cohort size the operator repeated, if any.

    Returns:
        The blast radius; ``refusal`` says why a real run would be refused
        (an empty cohort, a confirmation needed), ``None`` when it would not.
    """
    states: dict[str, int] = {}
    for _, _, state in devices:
        states[state] = states.get(state, 0) + 1
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
    return BlastRadius(
        playbook=playbook,
        version=version,
        environment=environment,
        cohort=cohort.describe(),
        devices=len(devices),
        online=len(online),
        offline=len(devices) - len(online),
        population=population,
        states=states,
        certificates=len(certificates),
        sample_devices=[d for _, d, _ in devices[:SAMPLE]],
        sample_certificates=sorted(certificates)[:SAMPLE],
        steps=[
            {
                "action": s.action,
                "destructive": s.destructive,
                "effect": step_effect(
                    s, devices=len(devices), certificates=len(certificates), environment=environment
                ),
            }
            for s in steps
        ],
        approvals_needed=pb.approvals_needed(spec),
        refusal=refusal,
        device_pks=[pk for pk, _, _ in devices],
        online_pks=sorted(online),
    )


def check_approver(principal: Principal) -> None:
    """Only security operators approve (rule 4).

    Raises:
        PermissionDeniedError: another role.
    """
    if principal.role != "security":
        raise PermissionDeniedError("destructive playbook steps are approved by security operators")


def add_approval(
    *,
    actor: str,
    run_id: int,
    state: str,
    requested_by: str,
    approvals: Sequence[str],
    incident_id: int,
    incident_state: str,
) -> list[str]:
    """The run's approvals with ``actor``'s added (rule 4).

    Raises:
        ConflictError: the run is not waiting for approval, its incident is
            closed, or ``actor`` approved it already.
        PermissionDeniedError: ``actor`` planned the run.
    """
    if state != "awaiting-approval":
        raise ConflictError(f"run {run_id} is {state}")
    if incident_state == "closed":
        raise ConflictError(f"incident {incident_id} is closed")
    if actor == requested_by:
        raise PermissionDeniedError("the operator who planned a run cannot approve it")
    if actor in approvals:
        raise ConflictError(f"{actor} already approved run {run_id}")
    return [*approvals, actor]


def check_executable(
    *,
    run_id: int,
    state: str,
    approvals: int,
    approvals_needed: int,
    incident_id: int,
    incident_state: str,
) -> None:
    """The run may start now (rule 5).

    Raises:
        ConflictError: the incident is closed, or the run is not ``ready``
            (awaiting approval, running, done or failed).
    """
    if incident_state == "closed":
        raise ConflictError(f"incident {incident_id} is closed")
    if state != "ready":
        waiting = f" ({approvals} of {approvals_needed} approvals)"
        raise ConflictError(
            f"run {run_id} is {state}" + (waiting if state == "awaiting-approval" else "")
        )


def webhook_allowed(url: str, hosts: Collection[str]) -> bool:
    """Whether the installation lets webhooks reach ``url``'s host (an entry
    ``host`` allows any port, ``host:port`` that port only) (rule 6)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    return bool(host) and (host in hosts or f"{host}:{port}" in hosts)


def redacted(url: str) -> str:
    """The URL without credentials, query or fragment (they may hold secrets)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))
