"""Playbooks, incidents and runs against the database (no broker needed)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from sqlalchemy import func, select

from fleetward.audit import service as audit
from fleetward.audit.models import AuditEntry
from fleetward.detection.models import Alert
from fleetward.errors import ConflictError, InvalidInputError, NotFoundError, PermissionDeniedError
from fleetward.identity import ca_service
from fleetward.identity.models import CertificateAuthority, CertificateRecord, Device
from fleetward.response import compliance, plan, runs
from fleetward.response import service as response
from fleetward.response.effects import LiveEffects
from fleetward.runtime.context import AppContext
from fleetward.store.db import utcnow
from fleetward.telemetry.models import Event
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal
from tests.helpers import csr_pem
from tests.response.helpers import ADMIN, AUDITOR, SEC, SEC2, enroll, renew

REVOKE = """
name: revoke-batch
params: {batch: null}
cohort: {batch: "{batch}"}
confirm_above: 50
steps:
  - {action: quarantine}
  - {action: revoke, reason: keyCompromise}
"""


class FakeEffects:
    """Unit-test seam: records commands and webhooks."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, str, str]] = []
        self.hooks: list[tuple[str, dict[str, Any]]] = []

    def command(self, tenant: str, device_id: str, name: str) -> None:
        self.commands.append((tenant, device_id, name))

    def webhook(self, url: str, payload: dict[str, Any]) -> int:
        self.hooks.append((url, payload))
        return 204


def _incident(ctx: AppContext, *, drill: bool = False, who: Principal = SEC) -> int:
    with ctx.db.session() as s:
        return response.open_incident(s, who, title="suspect batch", drill=drill).id


def _states(ctx: AppContext, ids: list[str]) -> dict[str, str]:
    with ctx.db.read() as s:
        return dict(
            s.execute(select(Device.device_id, Device.state).where(Device.device_id.in_(ids))).all()
        )


def test_playbooks_are_versioned_per_tenant(ctx: AppContext) -> None:
    with ctx.db.session() as s:
        assert response.put_playbook(s, SEC, REVOKE).version == 1
        assert response.put_playbook(s, SEC, REVOKE.replace("50", "60")).version == 2
        added = response.install_standard(s, SEC)
        assert len(added) == 5
        assert response.install_standard(s, SEC) == []
    with ctx.db.read() as s:
        assert response.get_playbook(s, SEC, "revoke-batch").version == 2
        assert "50" in response.get_playbook(s, SEC, "revoke-batch", 1).source
        names = [p.name for p in response.list_playbooks(s, SEC)]
        assert names == sorted(names) and "revoke-batch" in names
        other = Principal(99, "other", "security", "x")
        with pytest.raises(NotFoundError):
            response.get_playbook(s, other, "revoke-batch")


def test_a_playbook_naming_another_tenant_or_a_reader_is_refused(ctx: AppContext) -> None:
    with ctx.db.session() as s, pytest.raises(PermissionDeniedError, match="tenant 'acme'"):
        response.put_playbook(s, SEC, "tenant: acme\n" + REVOKE)
    with ctx.db.session() as s, pytest.raises(PermissionDeniedError):
        response.put_playbook(s, AUDITOR, REVOKE)


def test_dry_run_shows_the_blast_radius_and_changes_nothing(ctx: AppContext) -> None:
    ids = [f"b7-{i}" for i in range(12)]
    enroll(ctx, ids, batch=7)
    enroll(ctx, ["other-0", "other-1"], batch=8)
    with ctx.db.session() as s:
        response.put_playbook(s, SEC, REVOKE)
        now = utcnow()
        pk = s.execute(select(Device.id).where(Device.device_id == "b7-3")).scalar_one()
        s.add(Event(tenant_id=1, device_pk=pk, type="metric", at=now, count=1, fields="{}"))
    incident = _incident(ctx)
    with ctx.db.read() as s:
        head = s.execute(select(func.max(AuditEntry.seq))).scalar_one()
    with ctx.db.read() as s:
        radius = runs.dry_run(
            s, SEC, incident_id=incident, playbook="revoke-batch", params={"batch": 7},
            environment="test",
        )  # fmt: skip
    assert radius.devices == 12 and radius.online == 1 and radius.offline == 11
    assert radius.certificates == 12 and len(radius.sample_certificates) == 12
    assert radius.cohort == "batch 7" and radius.population == 14
    assert [s["action"] for s in radius.steps] == ["quarantine", "revoke"]
    assert "revoke 12 certificate(s) of 12 device(s)" in radius.steps[1]["effect"]
    assert radius.approvals_needed == 1 and radius.refusal is None
    assert set(_states(ctx, ids).values()) == {"active"}
    with ctx.db.read() as s:
        assert s.execute(select(func.max(AuditEntry.seq))).scalar_one() == head


def test_runs_refuse_empty_oversized_and_foreign_cohorts(ctx: AppContext) -> None:
    enroll(ctx, [f"b1-{i}" for i in range(60)], batch=1)
    with ctx.db.session() as s:
        response.put_playbook(s, SEC, REVOKE)
        response.install_standard(s, SEC)
        other = tenancy.create_tenant(s, name="acme", actor="test")
        ca_service.create_tenant_pki(s, ctx.pki, tenant=other, actor="test")
    acme = Principal(other.id, "acme", "admin", "token:acme")
    enroll_as = [f"acme-{i}" for i in range(2)]
    from cryptography.hazmat.primitives.asymmetric import ec

    from fleetward.identity import issuance

    key = ec.generate_private_key(ec.SECP256R1())
    issuance.enroll_many(
        ctx.db, ctx.pki, acme, environment="test",
        items=[issuance.BatchItem(device_id=d, csr=csr_pem(key, d)) for d in enroll_as],
    )  # fmt: skip
    incident = _incident(ctx)

    def start(**kw: Any) -> None:
        with ctx.db.session() as s:
            runs.start_run(s, SEC, incident_id=incident, environment="test", **kw)

    with pytest.raises(InvalidInputError, match="matches no device"):
        start(playbook="revoke-batch", params={"batch": 99})
    with pytest.raises(InvalidInputError, match="repeat with confirm=60"):
        start(playbook="revoke-batch", params={"batch": 1})
    with pytest.raises(InvalidInputError, match="has 60 devices"):
        start(playbook="revoke-batch", params={"batch": 1}, confirm=59)
    with pytest.raises(InvalidInputError, match="not devices of tenant default"):
        start(playbook="mass-credential-revocation", params={"devices": ["acme-0", "b1-0"]})
    with pytest.raises(InvalidInputError, match="unknown parameter"):
        start(playbook="revoke-batch", params={"batch": 1, "tenant": "acme"})


def test_a_drill_never_acts_outside_the_drill_environment(ctx: AppContext) -> None:
    enroll(ctx, [f"p-{i}" for i in range(3)], env="production", batch=3)
    enroll(ctx, [f"d-{i}" for i in range(3)], env="drill", batch=3)
    with ctx.db.session() as s:
        response.put_playbook(s, SEC, REVOKE)
    drill = _incident(ctx, drill=True)
    real = _incident(ctx)
    with (
        ctx.db.session() as s,
        pytest.raises(PermissionDeniedError, match="drill environment only"),
    ):
        runs.start_run(s, SEC, incident_id=drill, playbook="revoke-batch", params={"batch": 3},
                       environment="production")  # fmt: skip
    with ctx.db.session() as s, pytest.raises(InvalidInputError, match="as a drill"):
        runs.start_run(s, SEC, incident_id=real, playbook="revoke-batch", params={"batch": 3},
                       environment="drill")  # fmt: skip
    with ctx.db.read() as s:
        radius = runs.dry_run(s, SEC, incident_id=drill, playbook="revoke-batch",
                              params={"batch": 3}, environment="drill")  # fmt: skip
    assert radius.sample_devices == ["d-0", "d-1", "d-2"]


def test_destructive_steps_wait_for_approval_by_another_security_operator(
    ctx: AppContext,
) -> None:
    ids = [f"v-{i}" for i in range(5)]
    enroll(ctx, ids, batch=5)
    enroll(ctx, ["bystander"], batch=6)
    with ctx.db.session() as s:
        response.put_playbook(s, SEC, REVOKE)
    incident = _incident(ctx)
    with ctx.db.session() as s:
        run = runs.start_run(s, SEC, incident_id=incident, playbook="revoke-batch",
                             params={"batch": 5}, environment="test")  # fmt: skip
        run_id = run.id
        assert run.state == "awaiting-approval"
    with pytest.raises(ConflictError, match="0 of 1 approvals"):
        runs.execute_run(ctx, SEC, run_id, effects=FakeEffects())
    assert set(_states(ctx, ids).values()) == {"active"}
    with ctx.db.session() as s, pytest.raises(PermissionDeniedError, match="cannot approve"):
        runs.approve_run(s, SEC, run_id)
    with ctx.db.session() as s, pytest.raises(PermissionDeniedError, match="security operators"):
        runs.approve_run(s, ADMIN, run_id)
    with ctx.db.session() as s:
        assert runs.approve_run(s, SEC2, run_id).state == "ready"
    done = runs.execute_run(ctx, SEC, run_id, effects=FakeEffects())
    assert done.state == "done", done.outcome
    assert _states(ctx, ids) == dict.fromkeys(ids, "revoked")
    assert _states(ctx, ["bystander"]) == {"bystander": "active"}
    with ctx.db.read() as s:
        goods = s.execute(
            select(CertificateRecord.serial)
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(Device.device_id.in_(ids), CertificateRecord.status == "good")
        ).all()
        assert goods == []
        incident_row = response.get_incident(s, SEC, incident)
        assert incident_row.state == "contained"
        events = response.timeline(s, SEC, incident)
        kinds = [e.kind for e in events]
        assert kinds == ["opened", "run.planned", "run.approved", "step.quarantine",
                         "step.revoke", "run.done", "contained"]  # fmt: skip
        # Every line links to the audit entry that records it, and the chain verifies.
        for e in events:
            entry = s.get(AuditEntry, e.audit_seq)
            assert entry is not None and entry.subject == f"incident:{incident}"
        audit.verify(s, public_key=None)  # raises if the chain is broken


def test_rotate_ca_and_renew_track_devices_until_they_renew(ctx: AppContext) -> None:
    ids = [f"r-{i}" for i in range(4)]
    key = enroll(ctx, ids, batch=9)
    with ctx.db.session() as s:
        response.install_standard(s, SEC)
        pk = s.execute(select(Device.id).where(Device.device_id == "r-0")).scalar_one()
        s.add(Event(tenant_id=1, device_pk=pk, type="metric", at=utcnow(), count=1, fields="{}"))
    incident = _incident(ctx, who=ADMIN)  # rotating a CA is an admin's step
    with ctx.db.read() as s:
        old = ca_service.active_issuing_ca(s, tenant_id=1, environment="test").id
    with ctx.db.session() as s:
        run_id = runs.start_run(s, ADMIN, incident_id=incident, playbook="compromised-issuing-ca",
                                environment="test", confirm=4).id  # fmt: skip
    with ctx.db.session() as s:
        runs.approve_run(s, SEC, run_id)
    effects = FakeEffects()
    assert runs.execute_run(ctx, ADMIN, run_id, effects=effects).state == "done"
    with ctx.db.read() as s:
        new = ca_service.active_issuing_ca(s, tenant_id=1, environment="test").id
        assert new != old
        assert s.get_one(CertificateAuthority, old).status == "retired"
        assert response.get_incident(s, ADMIN, incident).state == "open"
        left = compliance.stragglers(s, ADMIN, incident)
    assert effects.commands == [("default", "r-0", "renew")]  # the one online device
    assert [(x["device_id"], x["online_when_run"]) for x in left] == [
        ("r-0", True), ("r-1", False), ("r-2", False), ("r-3", False),
    ]  # fmt: skip
    # Three devices renew with their own key (what the agent does on the
    # renew command): they comply; the fourth stays a straggler.
    for d in ids[:3]:
        assert renew(ctx, key, d).ca_id == new
    with ctx.db.session() as s:
        assert compliance.track(s, incident_id=incident) == 3
    with ctx.db.read() as s:
        assert [x["device_id"] for x in compliance.stragglers(s, ADMIN, incident)] == ["r-3"]
        assert response.get_incident(s, ADMIN, incident).state == "open"
        with pytest.raises(ConflictError, match="1 device"):
            response.close_incident(s, ADMIN, incident)


def test_webhook_step_posts_the_incident(ctx: AppContext, monkeypatch: pytest.MonkeyPatch) -> None:
    # FLEETWARD_WEBHOOK_HOSTS, read once into the settings
    monkeypatch.setattr(ctx, "settings", ctx.settings.replace(webhook_hosts="127.0.0.1"))
    got: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    enroll(ctx, ["w-0"], batch=4)
    with ctx.db.session() as s:
        source = (
            f"name: notify\ncohort: {{batch: 4}}\nsteps: [{{action: webhook, url: '{url}'}},"
            " {action: webhook, url: 'http://127.0.0.1:9/closed'}]"
        )
        response.put_playbook(s, SEC, source)
    incident = _incident(ctx)
    with ctx.db.session() as s:
        run_id = runs.start_run(s, SEC, incident_id=incident, playbook="notify",
                                environment="test").id  # fmt: skip
    effects = LiveEffects(ctx.settings.home)
    try:
        assert runs.execute_run(ctx, SEC, run_id, effects=effects).state == "done"
    finally:
        server.shutdown()
        server.server_close()
        effects.close()
    assert got == [{"incident": incident, "title": "suspect batch", "severity": "high",
                    "state": "open", "drill": False, "run": run_id}]  # fmt: skip
    with ctx.db.read() as s:
        lines = [e.summary for e in response.timeline(s, SEC, incident) if e.kind == "step.webhook"]
    assert lines[0].endswith("HTTP 204") and lines[1].startswith("could not notify")


def test_incident_from_alert_and_closing(ctx: AppContext) -> None:
    now = utcnow()
    with ctx.db.session() as s:
        alert = Alert(tenant_id=1, kind="boot-integrity-cohort", key="batch:4", severity="critical",
                      state="open", subject="batch 4", summary="5 of 100", evidence="{}",
                      count=1, response="", first_seen=now, last_seen=now)  # fmt: skip
        s.add(alert)
        s.flush()
        alert_id = alert.id
    with ctx.db.session() as s:
        incident = response.open_incident(s, SEC, alert_id=alert_id)
        assert incident.severity == "critical" and incident.detected_at == now
        assert incident.title == "boot-integrity-cohort: batch 4"
        incident_id = incident.id
    with ctx.db.session() as s, pytest.raises(ConflictError, match="already handled"):
        response.open_incident(s, SEC, alert_id=alert_id)
    with ctx.db.session() as s, pytest.raises(NotFoundError):
        response.open_incident(s, Principal(99, "x", "security", "y"), alert_id=alert_id)
    with ctx.db.session() as s:
        response.note(s, SEC, incident_id, "called the factory")
        response.close_incident(s, SEC, incident_id)
    with ctx.db.session() as s, pytest.raises(ConflictError, match="already closed"):
        response.close_incident(s, SEC, incident_id)


def test_an_installation_without_a_drill_ca_gets_one(ctx: AppContext) -> None:
    with ctx.db.session() as s:
        drill = ca_service.active_issuing_ca(s, tenant_id=1, environment="drill")
        drill.status = "retired"  # as if made before the drill environment existed
    with ctx.db.session() as s:
        tenant = tenancy.get_tenant(s, 1)
        [created] = ca_service.ensure_issuing_cas(s, ctx.pki, tenant=tenant, actor="test")
        assert created.environment == "drill" and created.status == "active"
        assert ca_service.ensure_issuing_cas(s, ctx.pki, tenant=tenant, actor="test") == []
    enroll(ctx, ["late-drill"], env="drill")


def test_the_tracker_contains_an_incident_once_devices_comply(ctx: AppContext) -> None:
    from fleetward.runtime.workers import ComplianceTracker

    ids = [f"t-{i}" for i in range(2)]
    key = enroll(ctx, ids, batch=12)
    enroll(ctx, ["t-other"], batch=13)
    with ctx.db.session() as s:
        response.install_standard(s, SEC)
        response.put_playbook(s, ADMIN, "name: renew-batch\ncohort: {batch: 12}\n"
                              "steps: [{action: renew}]")  # fmt: skip
    incident = _incident(ctx, who=ADMIN)
    with ctx.db.session() as s:
        run_id = runs.start_run(s, ADMIN, incident_id=incident, playbook="renew-batch",
                                environment="test").id  # fmt: skip
    assert runs.execute_run(ctx, ADMIN, run_id, effects=FakeEffects()).state == "done"
    tracker = ComplianceTracker(ctx, resend=3600)  # stepped by hand, never started
    try:
        assert tracker.run_once() and tracker.complied == 0
        for d in ids:
            renew(ctx, key, d)
        assert tracker.run_once() and tracker.complied == 2
    finally:
        tracker.stop()
    with ctx.db.read() as s:
        incident_row = response.get_incident(s, ADMIN, incident)
        assert incident_row.state == "contained" and incident_row.contained_at is not None


QUARANTINE = (
    "name: q\nparams: {batch: null}\ncohort: {batch: '{batch}'}\nsteps: [{action: quarantine}]"
)


def _plan(ctx: AppContext, who: Principal, incident: int, **kw: Any) -> int:
    with ctx.db.session() as s:
        return runs.start_run(s, who, incident_id=incident, **kw).id


def test_a_device_with_certificates_in_two_environments_is_not_a_drill_target(
    ctx: AppContext,
) -> None:
    enroll(ctx, ["twice"], env="production", batch=40)
    enroll(ctx, ["drill-only"], env="drill", batch=40)
    # The device also holds a good drill certificate (as after a reprovisioning).
    with ctx.db.session() as s:
        twice = s.execute(select(Device.id).where(Device.device_id == "twice")).scalar_one()
        drill_cert = s.execute(
            select(CertificateRecord)
            .join(Device, Device.id == CertificateRecord.device_pk)
            .where(Device.device_id == "drill-only")
        ).scalar_one()
        s.add(
            CertificateRecord(
                serial="7" * 40, tenant_id=1, device_pk=twice, ca_id=drill_cert.ca_id,
                environment="drill", key_origin="software", fingerprint="f" * 64,
                not_before=drill_cert.not_before, not_after=drill_cert.not_after,
                status="good", der=drill_cert.der,
            )
        )  # fmt: skip
    with ctx.db.session() as s:
        response.put_playbook(s, SEC, REVOKE)
    drill = _incident(ctx, drill=True)
    with pytest.raises(PermissionDeniedError, match="also hold certificates outside drill"):
        _plan(ctx, SEC, drill, playbook="revoke-batch", params={"batch": 40},
              environment="drill")  # fmt: skip
    assert _states(ctx, ["twice"]) == {"twice": "active"}


def test_scoped_tokens_readers_and_security_stay_in_their_lane(ctx: AppContext) -> None:
    enroll(ctx, ["lane-0", "lane-1"], batch=41)
    enroll(ctx, ["lane-x"], batch=42)
    with ctx.db.session() as s:
        response.put_playbook(s, SEC, QUARANTINE)
        response.install_standard(s, SEC)
    incident = _incident(ctx)
    drill_scoped = Principal(1, "default", "security", "token:scoped", environment="drill")
    with pytest.raises(PermissionDeniedError, match="scoped to the drill environment"):
        _plan(ctx, drill_scoped, incident, playbook="q", params={"batch": 41}, environment="test")
    # Creating an emergency campaign is a release manager's right, not security's.
    with pytest.raises(PermissionDeniedError, match="release manage"):
        _plan(ctx, SEC, incident, playbook="emergency-ota",
              params={"product": "thermo", "release": 1}, environment="test")  # fmt: skip
    run_id = _plan(ctx, SEC, incident, playbook="q", params={"batch": 41}, environment="test")
    for outsider in (AUDITOR, drill_scoped):
        with pytest.raises(PermissionDeniedError):
            runs.execute_run(ctx, outsider, run_id, effects=FakeEffects())
    assert _states(ctx, ["lane-0"]) == {"lane-0": "active"}
    done = runs.execute_run(ctx, SEC2, run_id, effects=FakeEffects())
    assert done.state == "done" and done.executed_by == SEC2.actor
    assert _states(ctx, ["lane-0", "lane-1"]) == {"lane-0": "quarantined", "lane-1": "quarantined"}
    with pytest.raises(ConflictError, match="is done"):
        runs.execute_run(ctx, SEC, run_id, effects=FakeEffects())
    with ctx.db.read() as s:
        step = next(e for e in response.timeline(s, SEC, incident) if e.kind == "step.quarantine")
        assert json.loads(step.details)["executed_by"] == SEC2.actor


def test_a_crashing_step_fails_the_run_and_says_so(ctx: AppContext) -> None:
    enroll(ctx, ["crash-0"], batch=43)
    enroll(ctx, ["crash-x"], batch=44)
    with ctx.db.session() as s:
        pk = s.execute(select(Device.id).where(Device.device_id == "crash-0")).scalar_one()
        s.add(Event(tenant_id=1, device_pk=pk, type="metric", at=utcnow(), count=1, fields="{}"))
        response.put_playbook(s, ADMIN, "name: r\ncohort: {batch: 43}\nsteps: [{action: renew}]")
    incident = _incident(ctx, who=ADMIN)
    run_id = _plan(ctx, ADMIN, incident, playbook="r", environment="test")

    class Broken(FakeEffects):
        def command(self, tenant: str, device_id: str, name: str) -> None:
            raise RuntimeError("socket gone")

    with pytest.raises(RuntimeError):
        runs.execute_run(ctx, ADMIN, run_id, effects=Broken())
    with ctx.db.read() as s:
        run = runs.get_run(s, ADMIN, run_id)
        assert run.state == "failed" and run.outcome == "step 1 (renew): RuntimeError"
        kinds = [e.kind for e in response.timeline(s, ADMIN, incident)]
        assert kinds[-1] == "run.failed"
        assert response.get_incident(s, ADMIN, incident).state == "open"


def test_new_work_reopens_a_contained_incident_and_closing_is_guarded(ctx: AppContext) -> None:
    enroll(ctx, ["c-0"], batch=45)
    enroll(ctx, ["c-1"], batch=46)
    with ctx.db.session() as s:
        response.put_playbook(s, SEC, QUARANTINE)
        response.put_playbook(s, SEC, REVOKE)
    incident = _incident(ctx)
    first = _plan(ctx, SEC, incident, playbook="q", params={"batch": 45}, environment="test")
    runs.execute_run(ctx, SEC, first, effects=FakeEffects())
    with ctx.db.read() as s:
        assert response.get_incident(s, SEC, incident).state == "contained"
    second = _plan(ctx, SEC, incident, playbook="revoke-batch", params={"batch": 45},
                   environment="test")  # fmt: skip
    with ctx.db.read() as s:
        assert response.get_incident(s, SEC, incident).state == "open"  # waits for approval
    with ctx.db.session() as s, pytest.raises(ConflictError, match="not finished"):
        response.close_incident(s, SEC, incident)
    with ctx.db.session() as s:
        response.close_incident(s, SEC, incident, force=True)
    with ctx.db.session() as s, pytest.raises(ConflictError, match="is closed"):
        runs.approve_run(s, SEC2, second)
    assert _states(ctx, ["c-0"]) == {"c-0": "quarantined"}


def test_a_drill_cannot_take_an_alert_about_production_devices(ctx: AppContext) -> None:
    enroll(ctx, ["real-1"], env="production")
    now = utcnow()
    with ctx.db.session() as s:
        alert = Alert(tenant_id=1, kind="boot-integrity", key="device:real-1", severity="high",
                      state="open", subject="device real-1", summary="tampered", evidence="{}",
                      count=1, response="", first_seen=now, last_seen=now)  # fmt: skip
        s.add(alert)
        s.flush()
        alert_id = alert.id
    with ctx.db.session() as s, pytest.raises(PermissionDeniedError, match="outside the drill"):
        response.open_incident(s, SEC, alert_id=alert_id, drill=True)
    with ctx.db.session() as s:
        assert response.open_incident(s, SEC, alert_id=alert_id).alert_id == alert_id


def test_webhooks_reach_only_the_hosts_the_installation_allows(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plan.webhook_allowed("https://hooks.example/x", {"hooks.example"})
    assert plan.webhook_allowed("https://hooks.example:8443/x", {"hooks.example:8443"})
    assert not plan.webhook_allowed("https://hooks.example:8443/x", {"hooks.example:443"})
    assert not plan.webhook_allowed("http://169.254.169.254/latest", {"hooks.example"})
    # FLEETWARD_WEBHOOK_HOSTS, read once into the settings
    monkeypatch.setattr(ctx, "settings", ctx.settings.replace(webhook_hosts="hooks.example"))
    enroll(ctx, ["wh-0"], batch=48)
    with ctx.db.session() as s:
        response.put_playbook(
            s, SEC, "name: meta\ncohort: {batch: 48}\n"
            "steps: [{action: webhook, url: 'http://169.254.169.254/latest/meta-data'}]",
        )  # fmt: skip
    incident = _incident(ctx)
    run_id = _plan(ctx, SEC, incident, playbook="meta", environment="test")
    effects = FakeEffects()
    assert runs.execute_run(ctx, SEC, run_id, effects=effects).state == "done"
    assert effects.hooks == []  # nothing was sent
    with ctx.db.read() as s:
        [line] = [e for e in response.timeline(s, SEC, incident) if e.kind == "step.webhook"]
    assert line.summary.endswith("its host is not in FLEETWARD_WEBHOOK_HOSTS")


def test_webhook_lines_do_not_leak_credentials_or_errors(
    ctx: AppContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FLEETWARD_WEBHOOK_HOSTS, read once into the settings
    monkeypatch.setattr(ctx, "settings", ctx.settings.replace(webhook_hosts="hooks.example:8443"))
    enroll(ctx, ["h-0"], batch=47)
    with ctx.db.session() as s:
        response.put_playbook(
            s, SEC, "name: h\ncohort: {batch: 47}\n"
            "steps: [{action: webhook, url: 'https://user:pw@hooks.example:8443/x?token=s3cret'}]",
        )  # fmt: skip
    incident = _incident(ctx)
    run_id = _plan(ctx, SEC, incident, playbook="h", environment="test")

    class Down(FakeEffects):
        def webhook(self, url: str, payload: dict[str, Any]) -> int:
            raise ConnectionRefusedError("port 8443 closed on 10.0.0.7")

    assert runs.execute_run(ctx, SEC, run_id, effects=Down()).state == "done"
    with ctx.db.read() as s:
        [line] = [e for e in response.timeline(s, SEC, incident) if e.kind == "step.webhook"]
        entry = s.get_one(AuditEntry, line.audit_seq)
    assert line.summary == "could not notify https://hooks.example:8443/x"
    assert (
        "s3cret" not in entry.details
        and "pw" not in entry.details
        and "10.0.0.7" not in entry.details
    )


def test_bulk_quarantine_touches_only_the_tenants_active_devices(ctx: AppContext) -> None:
    from fleetward.identity import service as identity

    enroll(ctx, ["bq-0", "bq-1", "bq-2"], batch=50)
    with ctx.db.session() as s:
        identity.revoke_device(s, ADMIN, "bq-2", reason="keyCompromise")
        pks = list(s.execute(select(Device.id).where(Device.device_id.like("bq-%"))).scalars())
        head = s.execute(select(func.max(AuditEntry.seq))).scalar_one()
    other = Principal(99, "other", "admin", "token:other")
    with ctx.db.session() as s:
        assert identity.quarantine_devices(s, other, pks, reason="x") == []
        done = identity.quarantine_devices(s, SEC, pks, reason="suspect batch")
    assert sorted(done) == ["bq-0", "bq-1"]
    assert _states(ctx, ["bq-0", "bq-1", "bq-2"]) == {
        "bq-0": "quarantined", "bq-1": "quarantined", "bq-2": "revoked",
    }  # fmt: skip
    with ctx.db.read() as s:
        entries = s.execute(select(AuditEntry).where(AuditEntry.seq > head)).scalars().all()
        assert sorted(e.subject for e in entries) == ["device:bq-0", "device:bq-1"]
        assert all(json.loads(e.details)["to"] == "quarantined" for e in entries)
        audit.verify(s, public_key=None)
    with ctx.db.session() as s, pytest.raises(PermissionDeniedError):
        identity.quarantine_devices(s, AUDITOR, pks, reason="x")


def test_cohort_quarantine_acts_on_the_devices_its_alert_names(ctx: AppContext) -> None:
    enroll(ctx, ["al-0", "al-1"], batch=60)
    enroll(ctx, ["al-x"], batch=61)
    now = utcnow()
    with ctx.db.session() as s:
        response.install_standard(s, SEC)
        alert = Alert(tenant_id=1, kind="boot-integrity-cohort", key="batch:60", severity="high",
                      state="open", subject="batch 60", summary="2 of 2", evidence="{}",
                      count=1, response="", first_seen=now, last_seen=now)  # fmt: skip
        s.add(alert)
        s.flush()
        incident = response.open_incident(s, SEC, alert_id=alert.id).id
        by_hand = response.open_incident(s, SEC, title="no alert").id
    run_id = _plan(ctx, SEC, incident, playbook="cohort-quarantine", environment="test")
    assert runs.execute_run(ctx, SEC, run_id, effects=FakeEffects()).state == "done"
    assert _states(ctx, ["al-0", "al-1", "al-x"]) == {
        "al-0": "quarantined", "al-1": "quarantined", "al-x": "active",
    }  # fmt: skip
    with pytest.raises(InvalidInputError, match="needs an incident opened from an alert"):
        _plan(ctx, SEC, by_hand, playbook="cohort-quarantine", environment="test")
