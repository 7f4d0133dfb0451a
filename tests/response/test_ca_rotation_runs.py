"""``compromised-issuing-ca`` to the end: the old CA's certificates revoked
as devices renew, the old CA distrusted once none depends on it, the
distrust on the incident's timeline (no broker needed)."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from fleetward import identity
from fleetward.audit.models import AuditEntry
from fleetward.errors import InvalidInputError
from fleetward.identity import ca_service, rotation
from fleetward.identity.models import CertificateAuthority, CertificateRecord, Device
from fleetward.response import playbook as pb
from fleetward.response import runs, tracker
from fleetward.response import service as response
from fleetward.runtime.context import AppContext
from tests.response.helpers import ADMIN, SEC, enroll, renew
from tests.response.test_runs import FakeEffects


def _run(ctx: AppContext, params: dict[str, object], confirm: int) -> tuple[int, int, int]:
    """Plan, approve and execute compromised-issuing-ca on ``test``;
    returns (incident, old CA, new CA)."""
    with ctx.db.session() as s:
        response.install_standard(s, SEC)
        incident = response.open_incident(s, ADMIN, title="CA key leaked").id
        old = ca_service.active_issuing_ca(s, tenant_id=1, environment="test").id
    with ctx.db.session() as s:
        run_id = runs.start_run(
            s, ADMIN, incident_id=incident, playbook="compromised-issuing-ca",
            environment="test", confirm=confirm, params=params,
        ).id  # fmt: skip
    with ctx.db.session() as s:
        runs.approve_run(s, SEC, run_id)
    assert runs.execute_run(ctx, ADMIN, run_id, effects=FakeEffects()).state == "done"
    with ctx.db.read() as s:
        new = ca_service.active_issuing_ca(s, tenant_id=1, environment="test").id
    return incident, old, new


def _goods(ctx: AppContext) -> dict[str, set[int]]:
    with ctx.db.read() as s:
        out: dict[str, set[int]] = {}
        for d, ca in s.execute(
            select(Device.device_id, CertificateRecord.ca_id)
            .join(CertificateRecord, CertificateRecord.device_pk == Device.id)
            .where(CertificateRecord.status == "good")
        ):
            out.setdefault(d, set()).add(ca)
        return out


def test_the_old_ca_is_distrusted_once_every_device_renewed(ctx: AppContext) -> None:
    ids = [f"c-{i}" for i in range(4)]
    key = enroll(ctx, ids)
    incident, old, new = _run(ctx, {}, confirm=4)
    with ctx.db.read() as s:
        row = s.get_one(CertificateAuthority, old)
        # The standard playbook: 7 days, cACompromise, closed when migrated.
        assert row.status == "retired" and row.retirement_reason == "cACompromise"
        assert row.distrust_when_migrated and row.retired_by is not None
        assert row.trusted_until is not None
        assert row.trusted_until - row.created_at > dt.timedelta(days=6)
        assert identity.dependents(s, ca_id=old) == 4
        kinds = [e.kind for e in response.timeline(s, ADMIN, incident)]
    assert kinds[-4:] == ["step.rotate-ca", "step.renew", "step.distrust-ca", "run.done"]
    for d in ids[:3]:
        renew(ctx, key, d)
    done = tracker.trust_round(ctx.db)
    assert [(t.kind, t.revoked) for t in done] == [("superseded", 3)]
    assert _goods(ctx) == {"c-0": {new}, "c-1": {new}, "c-2": {new}, "c-3": {old}}
    renew(ctx, key, "c-3")
    done = tracker.trust_round(ctx.db)
    assert [(t.kind, t.revoked) for t in done] == [("superseded", 1), ("distrusted", 0)]
    assert _goods(ctx) == {key_0: {new} for key_0 in ids}
    with ctx.db.read() as s:
        assert s.get_one(CertificateAuthority, old).status == "distrusted"
        reasons = set(
            s.execute(
                select(CertificateRecord.revocation_reason).where(CertificateRecord.ca_id == old)
            ).scalars()
        )
        assert reasons == {"cACompromise"}
        events = response.timeline(s, ADMIN, incident)
        last = events[-1]
        assert last.kind == "ca.distrusted" and f"CA {old} distrusted" in last.summary
        assert s.get_one(AuditEntry, last.audit_seq).actor == "system"
    assert tracker.trust_round(ctx.db) == []


def test_a_straggler_is_cut_off_when_the_window_closes(ctx: AppContext) -> None:
    ids = [f"s-{i}" for i in range(3)]
    key = enroll(ctx, ids)
    _incident, old, new = _run(ctx, {"window": 60, "reason": "superseded"}, confirm=3)
    for d in ids[:2]:
        renew(ctx, key, d)
    tracker.trust_round(ctx.db)
    with ctx.db.read() as s:
        row = s.get_one(CertificateAuthority, old)
        assert row.status == "retired" and row.trusted_until is not None
        deadline = row.trusted_until
    [closed] = rotation.rotation_round(ctx.db, now=deadline + dt.timedelta(seconds=1))
    assert closed.kind == "distrusted" and closed.stranded == ("s-2",)
    assert _goods(ctx) == {"s-0": {new}, "s-1": {new}}  # s-2 must be re-provisioned


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ("{window: -5}", "0 to"),
        ("{window: 1.5}", "whole number"),
        ("{window: true}", "whole number"),
        ("{window: 99999999999}", "0 to"),
        ("{window: '1e9'}", "whole number"),
        ("{reason: keyCompromise}", "reason must be one of"),
        ("{reason: 7}", "reason must be text"),
        ("{period: 5}", "unknown argument"),
    ],
)
def test_rotate_ca_arguments_are_checked_when_stored(
    ctx: AppContext, args: str, error: str
) -> None:
    source = "name: bad\ncohort: {all: true}\nsteps:\n  - {action: rotate-ca, " + args[1:] + "\n"
    with ctx.db.session() as s, pytest.raises(InvalidInputError, match=error):
        response.put_playbook(s, ADMIN, source)


def test_the_playbook_limits_are_identity_s() -> None:
    """playbook.py is pure and writes identity.rotation's limits out again."""
    assert int(rotation.MAX_TRUST_WINDOW.total_seconds()) == pb.MAX_TRUST_WINDOW_S
    assert pb.ROTATION_REASONS == rotation.ROTATION_REASONS
