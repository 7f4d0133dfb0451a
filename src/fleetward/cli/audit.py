"""``fleetward audit``: verify, checkpoint, prove, list."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from rich.table import Table

from fleetward.api.routes.audit import EntryOut
from fleetward.audit import service
from fleetward.cli.common import JSON, TENANT, console, err, load_ctx, local_principal, print_items
from fleetward.errors import AuditChainError

audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)


@audit_app.command("verify")
def verify(ctx: typer.Context) -> None:
    """Verify every entry and checkpoint; exit 1 naming the first bad entry."""
    app = load_ctx(ctx)
    with app.db.session() as s:
        try:
            report = service.verify(s, public_key=app.checkpoint_public_key())
        except AuditChainError as exc:
            err.print(f"[red]audit chain broken[/red]: {exc.detail}")
            raise typer.Exit(1) from exc
    console.print(
        f"audit log OK: {report.entries} entries, {report.checkpoints} checkpoints, "
        f"head {report.head_hash[:16]}"
    )


@audit_app.command("checkpoint")
def checkpoint(ctx: typer.Context) -> None:
    """Sign a checkpoint (Merkle root) over the whole log now."""
    app = load_ctx(ctx)
    with app.db.session() as s:
        cp = service.checkpoint(s, signer=app.checkpoint_signer())
        console.print(f"checkpoint {cp.id}: {cp.tree_size} entries, root {cp.root_hash}")


@audit_app.command("prove")
def prove(ctx: typer.Context, seq: int) -> None:
    """Print an inclusion proof (JSON) of entry SEQ in the newest checkpoint covering it."""
    app = load_ctx(ctx)
    with app.db.session() as s:
        typer.echo(json.dumps(service.inclusion_proof(s, seq=seq), indent=2))


@audit_app.command("verify-proof")
def verify_proof(
    proof: Path,
    public_key: Path = typer.Option(..., help="the checkpoint public key (PEM)"),
) -> None:
    """Check an inclusion proof offline against the checkpoint public key."""
    key = load_pem_public_key(public_key.read_bytes())
    try:
        data = json.loads(proof.read_text())
        service.verify_proof(data, public_key=key)
    except (AuditChainError, json.JSONDecodeError) as exc:
        err.print(f"[red]proof rejected[/red]: {exc}")
        raise typer.Exit(1) from exc
    console.print(
        f"entry {data['seq']} is included in the checkpoint of {data['tree_size']} entries"
    )


@audit_app.command("list")
def list_entries(
    ctx: typer.Context,
    tenant: str = TENANT,
    after: int = typer.Option(0, "--after", min=0, help="only entries after this seq"),
    limit: int = typer.Option(50, "--limit", min=1, max=1000, help="entries at most"),
    as_json: bool = JSON,
) -> None:
    """List a tenant's entries, oldest first."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.session() as s:
        entries = [
            EntryOut.of(e)
            for e in service.list_entries(s, tenant_id=who.tenant_id, after=after, limit=limit)
        ]
    if as_json:
        print_items(entries)
        return
    table = Table("seq", "time", "actor", "action", "outcome", "subject", "details")
    for e in entries:
        table.add_row(
            str(e.seq),
            e.ts.isoformat(timespec="seconds"),
            e.actor,
            e.action,
            e.outcome,
            e.subject,
            json.dumps(e.details, separators=(",", ":")),
        )
    console.print(table)
