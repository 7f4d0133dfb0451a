"""Drills: rehearse a playbook on a simulated fleet and time it.

A drill opens an incident marked as a drill (so every run in it acts on the
``drill`` environment only), optionally injects a fault and waits for the
detection loop to raise an alert (**time to detect**), plans the playbook
on the incident, has it approved by the given security operators, executes
it, and watches the simulated devices until every affected device that was
online is contained (**time to contain**):

- a playbook that revokes: the device is cut off (disconnected by the
  broker, and its reconnections refused);
- one that pushes an emergency release: the device runs the new version;
- one that only quarantines: the broker refused one of its publishes after
  the run started;
- one that renews (after a CA rotation): the device renewed its certificate
  on the server's command and reconnected with it.

A playbook that rotates the CA (``compromised-issuing-ca``) is also timed
to the end of the old CA: **until no device depends on it** (every affected
device holds a good certificate of the new CA and none of the old one) and
**until it is trusted nowhere** (it has left :func:`identity.trust_anchors`
of every environment and every trust file the caller names, e.g. the
broker's per-environment CA files).

Affected devices that were offline are the **stragglers**: the drill brings
them back and times how long they take to comply. The report (kept in
``drills``, listed by ``fleetward drill list``) has the figures, the
per-device containment latencies, the devices that were never contained,
and whether any device outside the cohort was touched.

The simulator's times are ``time.monotonic()`` (one clock for every process
on a host), so the drill measures what devices saw, not what the server
believes; the report carries the server's view (incident state, stragglers)
beside it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import select
from sqlalchemy.orm import Session

from fleetward import detection, identity
from fleetward.errors import InvalidInputError, NotFoundError, PermissionDeniedError
from fleetward.response import compliance, runs, service
from fleetward.response import playbook as pb
from fleetward.response._cohort import device_ids
from fleetward.response.models import Drill
from fleetward.response.steps import Effects, ResponseContext
from fleetward.store.db import utcnow
from fleetward.tenancy.roles import Permission, Principal, require

__all__ = ["SimulatedFleet", "get_drill", "list_drills", "run_drill"]

POLL_S = 0.1
# A snapshot of the whole fleet runs on the simulated devices' loops: a large
# fleet is asked less often. The devices time themselves, so the figures
# do not depend on it; only the end of a wait is seen later.
SNAPSHOTS_PER_S_PER_10K = 2.0
SERVER_AGREES_S = 30.0  # how long the server may lag behind the devices


class SimulatedFleet(Protocol):
    """What a drill needs from the simulator (``fleetward.sim``)."""

    def snapshot(self) -> list[dict[str, Any]]:
        """Per device: device_id, online, connected, cut_off, cut_off_at,
        last_refused_at, version, updated_at (monotonic times or None)."""

    def tamper(self, ids: Iterable[str]) -> None:
        """Change the devices' boot images (their next attestation fails)."""

    def attest(self, ids: Iterable[str] | None = None) -> object:
        """Have devices attest now."""

    def bring_online(self, ids: Iterable[str]) -> None:
        """Connect devices that were held offline."""


def list_drills(
    session: Session, principal: Principal, *, before: int | None = None, limit: int = 50
) -> list[Drill]:
    """The tenant's drills, newest first."""
    stmt = select(Drill).where(Drill.tenant_id == principal.tenant_id)
    if before is not None:  # the page after the one that ended at drill ``before``
        stmt = stmt.where(Drill.id < before)
    return list(session.execute(stmt.order_by(Drill.id.desc()).limit(limit)).scalars())


def get_drill(session: Session, principal: Principal, drill_id: int) -> Drill:
    """One drill of the caller's tenant.

    Raises:
        NotFoundError: no such drill here.
    """
    drill = session.get(Drill, drill_id)
    if drill is None or drill.tenant_id != principal.tenant_id:
        raise NotFoundError(f"drill {drill_id} not found")
    return drill


def _goal(steps: Sequence[str]) -> str:
    if "revoke" in steps:
        return "cut-off"
    if "emergency-release" in steps:
        return "updated"
    if "quarantine" in steps:
        return "quarantined"
    if "renew" in steps:
        return "renewed"
    raise InvalidInputError(
        "a drill times containment: the playbook must revoke, quarantine, renew or push a release"
    )


def _contained_at(
    device: dict[str, Any], goal: str, since: float, version: str | None
) -> float | None:
    if goal == "cut-off":
        at = device.get("cut_off_at")
        return float(at) if device.get("cut_off") and at is not None else None
    if goal == "updated":
        if device.get("version") == version and device.get("updated_at") is not None:
            return max(float(device["updated_at"]), since)
        return None
    if goal == "renewed":
        at = device.get("renewed_at")
        return float(at) if at is not None and at >= since else None
    at = device.get("last_refused_at")
    return float(at) if at is not None and at >= since else None


def _check_drill_fleet(session: Session, principal: Principal, ids: Sequence[str]) -> None:
    """Refuse unless every simulated device is the tenant's, in the drill environment."""
    envs = identity.certificate_environments(
        session, tenant_id=principal.tenant_id, device_ids=list(ids)
    )
    unknown = [d for d in ids if d not in envs]
    if unknown:
        raise NotFoundError(
            f"{len(unknown)} simulated device(s) are not devices of tenant "
            f"{principal.tenant_name}, e.g. {unknown[0]!r}"
        )
    outside = sorted(d for d, e in envs.items() if e != {"drill"})
    if outside:
        raise PermissionDeniedError(
            f"a drill runs on the drill environment only; {len(outside)} device(s) of this "
            f"fleet hold other certificates, e.g. {outside[0]!r} ({sorted(envs[outside[0]])})"
        )


def run_drill(
    ctx: ResponseContext,
    fleet: SimulatedFleet,
    *,
    starter: Principal,
    approvers: Sequence[Principal],
    playbook: str,
    params: dict[str, Any] | None = None,
    scenario: str = "manual",
    inject: Sequence[str] = (),
    confirm: int | None = None,
    return_stragglers: bool = True,
    effects: Effects,
    timeout: float = 120.0,
    progress: Callable[[str], None] | None = None,
    trust_files: Callable[[], Sequence[Path]] | None = None,
) -> Drill:
    """Rehearse ``playbook`` on ``fleet`` and keep the report.

    Args:
        inject: devices whose boot images are tampered with and which attest
            at once; the drill then waits for the detection loop's first new
            alert (time to detect) and opens the incident from it.
            Without it the incident is opened by hand (nothing to detect).
        confirm: the cohort size, when the playbook's threshold asks for it.
        return_stragglers: bring offline affected devices back after
            containment and time their compliance.
        trust_files: the files TLS endpoints load their trust anchors from
            (read again while the drill waits for a rotated CA to leave them).

    Raises:
        PermissionDeniedError: the fleet holds devices outside the drill
            environment, or the starter may not manage incidents.
        InvalidInputError: the playbook contains nothing a drill can time.
    """
    require(starter, Permission.INCIDENT_MANAGE)
    say = progress or (lambda _m: None)
    snapshot = fleet.snapshot()
    ids = [d["device_id"] for d in snapshot]
    with ctx.db.read() as s:
        _check_drill_fleet(s, starter, ids)
        row = service.get_playbook(s, starter, playbook)
        spec = pb.parse(row.source)
    goal = _goal([st["action"] for st in spec.steps])
    with ctx.db.session() as s:
        drill = Drill(
            tenant_id=starter.tenant_id, playbook=row.name, playbook_version=row.version,
            scenario=scenario, state="running", devices=len(ids), started_by=starter.actor,
            started_at=utcnow(),
        )  # fmt: skip
        s.add(drill)
        s.flush()
        drill_id = drill.id
    report: dict[str, Any] = {"goal": goal, "devices": len(ids)}
    try:
        return _drill(
            ctx, fleet, drill_id, report, starter=starter, approvers=approvers, spec=spec,
            playbook=playbook, params=params or {}, inject=inject, confirm=confirm,
            goal=goal, return_stragglers=return_stragglers, effects=effects,
            timeout=timeout, say=say, trust_files=trust_files,
        )  # fmt: skip
    except Exception as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"[:500]
        _save(ctx, drill_id, report, state="failed")
        raise


def _drill(
    ctx: ResponseContext,
    fleet: SimulatedFleet,
    drill_id: int,
    report: dict[str, Any],
    *,
    starter: Principal,
    approvers: Sequence[Principal],
    spec: pb.PlaybookSpec,
    playbook: str,
    params: dict[str, Any],
    inject: Sequence[str],
    confirm: int | None,
    goal: str,
    return_stragglers: bool,
    effects: Effects,
    timeout: float,
    say: Callable[[str], None],
    trust_files: Callable[[], Sequence[Path]] | None,
) -> Drill:
    alert_id = None
    fault_at = time.monotonic()
    if inject:
        with ctx.db.read() as s:
            last_alert = detection.last_alert_id(s, tenant_id=starter.tenant_id)
        say(f"injecting tampered boot images into {len(inject)} device(s)")
        fault_at = time.monotonic()
        fleet.tamper(inject)
        fleet.attest(inject)
        with ctx.db.read() as s:
            keys = {f"device:{d}" for d in inject} | {
                f"batch:{b}"
                for b in identity.batches_of(
                    s, tenant_id=starter.tenant_id, device_ids=list(inject)
                )
            }
        alert_id = _wait(
            lambda: _new_alert(ctx, starter.tenant_id, last_alert, keys), timeout, "an alert"
        )
        report["detect_s"] = round(time.monotonic() - fault_at, 3)
        say(f"alert {alert_id} after {report['detect_s']} s")
    with ctx.db.session() as s:
        incident = service.open_incident(
            s, starter, title=None if alert_id else f"drill: {playbook}",
            alert_id=alert_id, drill=True,
        )  # fmt: skip
        incident_id = incident.id
    with ctx.db.session() as s:
        run = runs.start_run(
            s, starter, incident_id=incident_id, playbook=playbook, params=params,
            environment="drill", confirm=confirm,
        )  # fmt: skip
        run_id, radius = run.id, json.loads(run.blast_radius)
    for approver in approvers[: radius["approvals_needed"]]:
        with ctx.db.session() as s:
            runs.approve_run(s, approver, run_id)
    with ctx.db.read() as s:
        affected = set(device_ids(s, radius["device_pks"]))
    before = {d["device_id"]: d for d in fleet.snapshot()}
    online = {d for d in affected if before.get(d, {}).get("connected")}
    offline = sorted(affected - online)
    version = _release_version(ctx, starter, spec, params) if goal == "updated" else None
    old_ca = (
        _rotated_ca(ctx, starter) if "rotate-ca" in [st["action"] for st in spec.steps] else None
    )
    say(f"run {run_id}: {len(affected)} affected ({len(online)} online), goal {goal}")
    started = time.monotonic()
    with ctx.db.session() as s:
        s.get_one(Drill, drill_id).incident_id = incident_id
    runs.execute_run(ctx, starter, run_id, effects=effects)
    executed = time.monotonic()

    def contained() -> dict[str, float] | None:
        now_view = {d["device_id"]: d for d in fleet.snapshot()}
        done = {}
        for d in online:
            at = _contained_at(now_view.get(d, {}), goal, started, version)
            if at is None:
                return None
            done[d] = at
        return done

    poll = max(POLL_S, len(before) / 10_000 / SNAPSHOTS_PER_S_PER_10K)
    times = _wait(contained, timeout, f"{len(online)} online device(s) to be {goal}", poll=poll)
    latencies = sorted(t - started for t in times.values())
    contain_s = latencies[-1] if latencies else 0.0
    report.update(
        incident=incident_id, run=run_id, affected=len(affected), online=len(online),
        offline=len(offline), stragglers=offline[:50], target_version=version,
        execute_s=round(executed - started, 3), contain_s=round(contain_s, 3),
        contain_from_fault_s=round(started - fault_at + contain_s, 3) if inject else None,
        latency_p50_s=round(_pct(latencies, 0.5), 3), latency_p99_s=round(_pct(latencies, 0.99), 3),
        rate_per_s=round(len(online) / contain_s, 1) if contain_s > 0 else None,
    )  # fmt: skip
    say(f"contained {len(online)} online device(s) in {report['contain_s']} s")
    if offline and return_stragglers:
        back = time.monotonic()
        fleet.bring_online(offline)

        def stragglers_done() -> bool | None:
            view = {d["device_id"]: d for d in fleet.snapshot()}
            ok = all(_straggler_ok(view.get(d, {}), goal, back, version) for d in offline)
            return True if ok else None

        _wait(stragglers_done, timeout, f"{len(offline)} straggler(s) to comply", poll=poll)
        report["stragglers_s"] = round(time.monotonic() - back, 3)
        say(f"{len(offline)} straggler(s) complied in {report['stragglers_s']} s")
    if old_ca is not None:
        report.update(
            _old_ca_gone(
                ctx,
                starter.tenant_id,
                old_ca,
                radius["device_pks"],
                started,
                timeout,
                trust_files,
                say,
            )
        )
    # What the server believes, beside what the devices saw.
    after = {d["device_id"]: d for d in fleet.snapshot()}
    bystanders = [d for d in after if d not in affected]
    report["bystanders_touched"] = sorted(
        d for d in bystanders
        if _touched(before.get(d, {}), after[d])
    )[:50]  # fmt: skip

    # The server learns of updates from the devices' reports: give it the
    # time it needs to agree, and say how long that took.
    def server_agrees() -> bool | None:
        with ctx.db.session() as s:
            compliance.track(s, incident_id=incident_id)
        with ctx.db.read() as s:
            state = service.get_incident(s, starter, incident_id).state
        return True if state == "contained" else None

    try:
        _wait(server_agrees, SERVER_AGREES_S, "the server to see the incident contained")
        report["server_contained_s"] = round(time.monotonic() - started, 3)
    except TimeoutError:
        report["server_contained_s"] = None
    with ctx.db.read() as s:
        report["server_incident_state"] = service.get_incident(s, starter, incident_id).state
        report["server_stragglers"] = len(compliance.stragglers(s, starter, incident_id))
    passed = not report["bystanders_touched"] and report["server_incident_state"] == "contained"
    if old_ca is not None:
        passed = passed and report.get("ca_untrusted_s") is not None
    return _save(ctx, drill_id, report, state="passed" if passed else "failed")


def _rotated_ca(ctx: ResponseContext, who: Principal) -> tuple[int, bytes]:
    """The drill issuing CA a rotation will retire: its id and DER."""
    with ctx.db.read() as s:
        ca = identity.active_issuing_ca(s, tenant_id=who.tenant_id, environment="drill")
        pem = (ca.certificate_pem or "").encode()
    return ca.id, x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def _pem_ders(pem: bytes) -> list[bytes]:
    """The DER of every ``CERTIFICATE`` or ``TRUSTED CERTIFICATE`` block."""
    ders = []
    for match in re.finditer(
        rb"-----BEGIN (?:TRUSTED )?CERTIFICATE-----(.+?)-----END", pem, flags=re.S
    ):
        with contextlib.suppress(binascii.Error):
            ders.append(base64.b64decode(b"".join(match.group(1).split())))
    return ders


def _old_ca_gone(
    ctx: ResponseContext,
    tenant_id: int,
    old_ca: tuple[int, bytes],
    pks: list[int],
    started: float,
    timeout: float,
    trust_files: Callable[[], Sequence[Path]] | None,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Time until no device depends on the old CA, then until it is trusted
    nowhere (a trusted certificate's DER is the CA's followed by its trust
    settings, so a prefix match finds it)."""
    ca_id, der = old_ca
    out: dict[str, Any] = {"old_ca": ca_id}

    def migrated() -> bool | None:
        with ctx.db.read() as s:
            left = identity.dependents(s, ca_id=ca_id)
            new = identity.active_issuing_ca(s, tenant_id=tenant_id, environment="drill")
            holders = len(identity.held_serials(s, pks, ca_id=new.id))
        out["ca_dependents_left"] = left
        return True if left == 0 and holders == len(pks) else None

    def untrusted() -> bool | None:
        with ctx.db.read() as s:
            pems = [identity.trust_anchors(s)]
        for path in trust_files() if trust_files else ():
            with contextlib.suppress(FileNotFoundError):
                pems.append(path.read_bytes())
        anchors = [d for pem in pems for d in _pem_ders(pem)]
        return None if any(a.startswith(der) for a in anchors) else True

    for key, check, what in (
        ("ca_migrated_s", migrated, "no device to depend on the old CA"),
        ("ca_untrusted_s", untrusted, "the old CA to leave every trust file"),
    ):
        try:
            _wait(check, timeout, what)
            out[key] = round(time.monotonic() - started, 3)
            say(f"{what}: {out[key]} s after the run started")
        except TimeoutError:
            out[key] = None
    return out


def _straggler_ok(device: dict[str, Any], goal: str, since: float, version: str | None) -> bool:
    if goal == "cut-off":
        # Held offline, it never connects again: its handshakes are refused.
        return not device.get("connected") and bool(
            device.get("connect_failures", 0) or device.get("cut_off")
        )
    if goal == "updated":
        return device.get("version") == version
    key = "renewed_at" if goal == "renewed" else "last_refused_at"
    at = device.get(key)
    return at is not None and at >= since


def _touched(before: dict[str, Any], after: dict[str, Any]) -> bool:
    if before.get("connected") and (after.get("cut_off") or not after.get("connected")):
        return True
    if before.get("version") != after.get("version"):
        return True
    if before.get("renewals") != after.get("renewals"):
        return True
    return (after.get("last_refused_at") or 0) > (before.get("last_refused_at") or 0)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def _wait(check: Callable[[], Any], timeout: float, what: str, *, poll: float = POLL_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"drill: gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(poll)


def _new_alert(ctx: ResponseContext, tenant_id: int, after: int, keys: set[str]) -> int | None:
    """The first new alert about the devices the drill tampered with (a real
    alert raised meanwhile is not the drill's to take)."""
    with ctx.db.read() as s:
        return detection.first_alert_after(s, tenant_id=tenant_id, after=after, keys=keys)


def _release_version(
    ctx: ResponseContext, who: Principal, spec: pb.PlaybookSpec, params: dict[str, Any]
) -> str:
    from fleetward import ota

    _, steps = pb.bind(spec, params)
    [step] = [s for s in steps if s.action == "emergency-release"]
    with ctx.db.read() as s:
        return ota.get_release(s, who, int(step.args["release"])).version


def _save(ctx: ResponseContext, drill_id: int, report: dict[str, Any], *, state: str) -> Drill:
    with ctx.db.session() as s:
        drill = s.get_one(Drill, drill_id)
        drill.state = state
        drill.affected = int(report.get("affected", 0))
        drill.detect_s = report.get("detect_s")
        drill.contain_s = report.get("contain_s")
        drill.stragglers = int(report.get("offline", 0))
        drill.report = json.dumps(report, default=str)
        drill.finished_at = utcnow()
        s.flush()
        s.expunge(drill)
        return drill
