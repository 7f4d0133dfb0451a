"""An API caller verifies the audit log as its tenant's view of it.

The chain and its checkpoints span the installation (other tenants' entries
are links in it), so verification walks all of it; the answer counts and
names only the caller's tenant's entries. ``fleetward audit verify`` (the
local administrator) still checks and names everything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from fleetward.audit import service as audit
from fleetward.audit.models import AuditEntry
from fleetward.errors import AuditChainError
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy


class Tenants:
    """Tenant ``default`` (id 1) and ``acme``, an auditor token for each."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        with ctx.db.session() as s:
            default = tenancy.get_tenant_by_name(s, "default")
            acme = tenancy.create_tenant(s, name="acme", actor="test")
            _, self.default_token = tenancy.create_token(
                s, tenant=default, name="aud", role="auditor", actor="test"
            )
            _, self.acme_token = tenancy.create_token(
                s, tenant=acme, name="aud", role="auditor", actor="test"
            )
            self.ids = {"default": default.id, "acme": acme.id}

    def add(self, *tenants: str | None) -> list[int]:
        """One entry per name (``None``: a system entry), in order; their seqs."""
        with self.ctx.db.session() as s:
            return [
                audit.append(
                    s,
                    actor="test",
                    action="test.event",
                    subject=f"thing:{i}",
                    tenant_id=self.ids[t] if t else None,
                    details={"i": i},
                )
                for i, t in enumerate(tenants)
            ]

    def seqs(self, tenant: str) -> list[int]:
        with self.ctx.db.read() as s:
            stmt = select(AuditEntry.seq).where(AuditEntry.tenant_id == self.ids[tenant])
            return sorted(s.execute(stmt).scalars())

    def total(self) -> int:
        with self.ctx.db.read() as s:
            return int(s.execute(select(func.count()).select_from(AuditEntry)).scalar_one())

    def hash_of(self, seq: int) -> str:
        with self.ctx.db.read() as s:
            entry = s.get(AuditEntry, seq)
            assert entry is not None
            return entry.hash

    def checkpoint(self) -> None:
        with self.ctx.db.session() as s:
            audit.checkpoint(s, signer=self.ctx.checkpoint_signer())


@pytest.fixture
def tenants(ctx: AppContext) -> Iterator[Tenants]:
    yield Tenants(ctx)


def verify(client: TestClient, token: str) -> Any:
    return client.get("/api/v1/audit/verification", headers={"Authorization": f"Bearer {token}"})


def tamper(ctx: AppContext, seq: int) -> None:
    with ctx.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE audit_entries SET details = :d WHERE seq = :s"),
            {"d": json.dumps({"tampered": True}), "s": seq},
        )


def test_verify_reports_the_callers_tenant_only(client: TestClient, tenants: Tenants) -> None:
    tenants.add("acme", "default", None, "acme", "default", "default")
    tenants.checkpoint()
    tenants.add("acme", "default", "acme")
    for name, token in (("acme", tenants.acme_token), ("default", tenants.default_token)):
        resp = verify(client, token)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        mine = tenants.seqs(name)
        assert set(body) == {"ok", "entries", "checkpointed", "head_seq", "head_hash"}
        assert body["ok"] is True
        assert body["entries"] == len(mine)
        assert body["entries"] < tenants.total()  # never the installation's count
        assert body["head_seq"] == mine[-1]
        assert body["head_hash"] == tenants.hash_of(mine[-1])
        # The checkpoint covers the entries before it, not the later ones.
        assert 0 < body["checkpointed"] < body["entries"]


def test_tenant_without_entries_gets_an_empty_view(ctx: AppContext) -> None:
    with ctx.db.session() as s:
        empty = tenancy.create_tenant(s, name="empty", actor="test")
    with ctx.db.session() as s:  # the tenant's own creation entry is its only one
        report = audit.verify_tenant(s, tenant_id=empty.id, public_key=ctx.checkpoint_public_key())
    assert report.entries == 1
    with ctx.db.session() as s:
        nobody = audit.verify_tenant(s, tenant_id=999, public_key=ctx.checkpoint_public_key())
    assert (nobody.entries, nobody.head_seq, nobody.head_hash) == (0, None, None)


def test_break_in_another_tenants_entry_names_the_callers_first_unproven_entry(
    client: TestClient, ctx: AppContext, tenants: Tenants
) -> None:
    """An entry of ``default`` is edited after the checkpoint: ``acme`` learns
    that its entries after the checkpoint are not proven, by its own seq,
    and nothing about the other tenant's entry."""
    tenants.add("acme", "default", "acme")
    tenants.checkpoint()
    seqs = tenants.add("default", "default", "acme", "default", "acme")
    edited, acme_after = seqs[1], seqs[2]  # default's entry; acme's first after the checkpoint
    tamper(ctx, edited)

    resp = verify(client, tenants.acme_token)
    assert resp.status_code == 422
    body = resp.json()
    assert body["type"] == "urn:fleetward:problem:audit-chain"
    assert body["seq"] == acme_after
    assert str(edited) not in body["detail"]
    assert "modified" not in body["detail"]

    body = verify(client, tenants.default_token).json()
    assert body["seq"] == seqs[0]  # default's first entry after the checkpoint

    # The installation-wide check (the local CLI) names the edited entry itself.
    with ctx.db.read() as s, pytest.raises(AuditChainError) as info:
        audit.verify(s, public_key=ctx.checkpoint_public_key())
    assert info.value.seq == edited


def test_break_after_all_of_a_tenants_entries_still_fails_for_it(
    client: TestClient, ctx: AppContext, tenants: Tenants
) -> None:
    """A removed entry may have been the tenant's: a break past its last
    checkpointed entry is reported to it, without naming anyone's entry."""
    tenants.add("acme", "default")
    tenants.checkpoint()
    [last] = tenants.add("default")
    with ctx.db.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_entries WHERE seq = :s"), {"s": last})

    resp = verify(client, tenants.acme_token)
    assert resp.status_code == 422
    body = resp.json()
    assert "seq" not in body
    assert "may be missing" in body["detail"]
    assert str(last) not in body["detail"]


def test_rewrite_caught_only_by_the_checkpoint_leaves_nothing_before_it_proven(
    client: TestClient, ctx: AppContext, tenants: Tenants
) -> None:
    """A rewrite that recomputes every later hash shows only at the
    checkpoint: every entry of the caller's before it is unproven then."""
    acme_first = tenants.add("acme", "default", "acme")[0]
    tenants.checkpoint()
    from fleetward.audit.chain import EntryFields, entry_hash
    from fleetward.audit.models import AuditHead

    with ctx.db.session() as s:  # the attacker rewrites default's entry and re-chains
        prev = "0" * 64
        for e in s.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars():
            if e.seq == acme_first + 1:
                e.details = json.dumps({"rewritten": True})
            e.prev_hash = prev
            e.hash = entry_hash(
                EntryFields(
                    seq=e.seq, ts=e.ts, tenant_id=e.tenant_id, actor=e.actor, action=e.action,
                    outcome=e.outcome, subject=e.subject, details=e.details, prev_hash=prev,
                )
            )  # fmt: skip
            prev = e.hash
        head = s.get(AuditHead, 1)
        assert head is not None
        head.hash = prev
    body = verify(client, tenants.acme_token).json()
    assert body["status"] == 422
    assert body["seq"] == tenants.seqs("acme")[0]  # nothing before the break is proven


def test_proof_of_another_tenants_entry_is_not_found(
    client: TestClient, ctx: AppContext, tenants: Tenants
) -> None:
    mine, theirs, system = tenants.add("acme", "default", None)
    tenants.checkpoint()
    missing = tenants.total() + 100
    headers = {"Authorization": f"Bearer {tenants.acme_token}"}

    ok = client.get(f"/api/v1/audit/entries/{mine}/proof", headers=headers)
    assert ok.status_code == 200, ok.text
    key = ctx.checkpoint_public_key()
    assert key is not None
    audit.verify_proof(ok.json(), public_key=key)

    def answer(seq: int) -> dict[str, Any]:
        resp = client.get(f"/api/v1/audit/entries/{seq}/proof", headers=headers)
        assert resp.status_code == 404
        body: dict[str, Any] = resp.json()
        assert body.pop("instance") == f"/api/v1/audit/entries/{seq}/proof"
        return body

    # Another tenant's entry, a system entry and no entry read the same
    # (the requested number is the only thing that differs).
    expected = answer(missing)
    for seq in (theirs, system):
        assert answer(seq) == {**expected, "detail": f"audit entry {seq} not found"}
    assert expected["detail"] == f"audit entry {missing} not found"


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/audit/entries/99999999999999999999/proof",
        "/api/v1/audit/entries?limit=99999999999999999999",
    ],
)
def test_out_of_range_sequence_numbers_are_refused(
    client: TestClient, tenants: Tenants, path: str
) -> None:
    resp = client.get(path, headers={"Authorization": f"Bearer {tenants.acme_token}"})
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
