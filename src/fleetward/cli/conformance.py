"""``fleetward trustmap conformance``: ETSI EN 303 645 and CRA Annex I evidence.

Reads the installation as the tenant's local admin, writes nothing (not even
an audit entry, so reading a report never moves the log it cites). The
report cites the audit entries it counted; ``--as-of SEQ`` rebuilds the
report of an earlier point from the log (docs/conformance.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from fleetward.cli.common import TENANT, load_ctx, local_principal
from fleetward.trustmap import conformance, evidence

__all__ = ["report"]


def report(
    ctx: typer.Context,
    tenant: str = TENANT,
    product: str | None = typer.Option(
        None, "--product", help="narrow release, campaign and device evidence to one product"
    ),
    as_of: int | None = typer.Option(
        None, "--as-of", help="the last audit sequence number counted (default: the newest)"
    ),
    format: Literal["markdown", "json"] = typer.Option(
        "markdown", "--format", help="markdown or json"
    ),
    out: Path | None = typer.Option(None, "--out", help="write here instead of stdout"),
) -> None:
    """Conformance evidence for ETSI EN 303 645 and the CRA's Annex I, from the audit log."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.read() as s:
        found = evidence.gather(
            s,
            tenant_id=who.tenant_id,
            product=product,
            as_of=as_of,
            settings=app.settings,
            checkpoint_key=app.checkpoint_public_key(),
        )
    result = conformance.evaluate(found)
    text = conformance.to_json(result) if format == "json" else conformance.to_markdown(result)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
