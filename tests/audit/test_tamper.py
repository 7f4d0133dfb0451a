"""Tampering with audit rows directly in the database is detected and located.

Edits, deletions and reorderings are made with plain SQL, as an attacker with
database access would; ``verify`` (and ``fleetward audit verify``) must name
the first bad entry.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from fleetward.audit import service as audit
from fleetward.cli.main import app as cli
from fleetward.errors import AuditChainError
from fleetward.runtime.context import AppContext


def fill(ctx: AppContext, n: int = 10) -> None:
    with ctx.db.session() as s:
        for i in range(n):
            audit.append(
                s, actor="test", action="test.event", subject=f"thing:{i}", details={"i": i}
            )


def verify(ctx: AppContext) -> audit.VerifyReport:
    with ctx.db.session() as s:
        return audit.verify(s, public_key=ctx.checkpoint_public_key())


def sql(ctx: AppContext, statement: str, **params: object) -> None:
    with ctx.db.engine.begin() as conn:
        conn.execute(text(statement), params)


def bad_seq(ctx: AppContext) -> int | None:
    with pytest.raises(AuditChainError) as info:
        verify(ctx)
    return info.value.seq


def test_untouched_log_verifies(ctx: AppContext) -> None:
    fill(ctx)
    report = verify(ctx)
    assert report.entries > 10


def test_edited_entry_is_named(ctx: AppContext) -> None:
    fill(ctx)
    sql(ctx, "UPDATE audit_entries SET details = :d WHERE seq = 12", d=json.dumps({"i": 999}))
    assert bad_seq(ctx) == 12


def test_edited_actor_is_named(ctx: AppContext) -> None:
    fill(ctx)
    sql(ctx, "UPDATE audit_entries SET actor = 'someone-else' WHERE seq = 5")
    assert bad_seq(ctx) == 5


def test_deleted_entry_is_named(ctx: AppContext) -> None:
    fill(ctx)
    sql(ctx, "DELETE FROM audit_entries WHERE seq = 9")
    assert bad_seq(ctx) == 9


def test_deleted_tail_is_detected(ctx: AppContext) -> None:
    fill(ctx)
    total = verify(ctx).entries
    sql(ctx, "DELETE FROM audit_entries WHERE seq = :s", s=total)
    assert bad_seq(ctx) == total


def test_reordered_entries_are_named(ctx: AppContext) -> None:
    fill(ctx)
    sql(ctx, "UPDATE audit_entries SET seq = -1 WHERE seq = 7")
    sql(ctx, "UPDATE audit_entries SET seq = 7 WHERE seq = 8")
    sql(ctx, "UPDATE audit_entries SET seq = 8 WHERE seq = -1")
    assert bad_seq(ctx) == 7


def test_rewritten_chain_is_caught_by_the_signed_checkpoint(ctx: AppContext) -> None:
    """An attacker who rewrites an entry and recomputes every later hash keeps
    the chain consistent, but cannot re-sign the checkpoint."""
    fill(ctx)
    with ctx.db.session() as s:
        audit.checkpoint(s, signer=ctx.checkpoint_signer())
    from sqlalchemy import select

    from fleetward.audit.chain import EntryFields, entry_hash
    from fleetward.audit.models import AuditEntry, AuditHead

    with ctx.db.session() as s:  # the attacker writes rows directly, bypassing append()
        prev = "0" * 64
        for e in s.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars():
            if e.seq == 4:
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
    with pytest.raises(AuditChainError, match="do not match checkpoint"):
        verify(ctx)


def test_forged_checkpoint_signature_is_detected(ctx: AppContext) -> None:
    fill(ctx)
    with ctx.db.session() as s:
        audit.checkpoint(s, signer=ctx.checkpoint_signer())
    sql(ctx, "UPDATE audit_checkpoints SET root_hash = :r", r="00" * 32)
    with pytest.raises(AuditChainError, match="signature does not verify"):
        verify(ctx)


def test_inclusion_proof_round_trip(ctx: AppContext, tmp_path: Path) -> None:
    fill(ctx)
    with ctx.db.session() as s:
        audit.checkpoint(s, signer=ctx.checkpoint_signer())
        proof = audit.inclusion_proof(s, seq=6)
    key = ctx.checkpoint_public_key()
    assert key is not None
    audit.verify_proof(proof, public_key=key)
    forged = {**proof, "entry_hash": "ab" * 32}
    with pytest.raises(AuditChainError):
        audit.verify_proof(forged, public_key=key)


def test_cli_verify_exits_non_zero_naming_the_entry(ctx: AppContext) -> None:
    fill(ctx)
    runner = CliRunner()
    home = str(ctx.settings.home)
    ok = runner.invoke(cli, ["--home", home, "audit", "verify"])
    assert ok.exit_code == 0, ok.output
    assert "audit log OK" in ok.output
    sql(ctx, "UPDATE audit_entries SET subject = 'x' WHERE seq = 3")
    bad = runner.invoke(cli, ["--home", home, "audit", "verify"])
    assert bad.exit_code == 1
    assert "audit entry 3" in bad.output


def test_cli_verify_on_a_tampered_chain_prints_the_verdict_only(ctx: AppContext) -> None:
    """Through the real entry point: the verdict on one line, exit 1, and no
    "Error closing cursor" traceback from a cursor left open by the early stop."""
    fill(ctx)
    sql(ctx, "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 4")
    run = subprocess.run(
        [sys.executable, "-c", "from fleetward.cli.main import main; main()",
         "--home", str(ctx.settings.home), "audit", "verify"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and "Error closing cursor" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        "audit chain broken: audit entry 4 was modified (hash mismatch)"
    ]
