"""``fleetward trustmap``: validate a trust map, print its schema, generate its threat model.

``validate``, ``schema`` and ``threats`` read the map file only; ``check``
(and ``threats --live``) compare it with the installation's live facts, read
as the tenant's local admin without writing anything.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal

import typer
from rich.table import Table
from rich.text import Text

from fleetward import identity, ota, trustmap
from fleetward.cli.common import JSON, TENANT, console, load_ctx, local_principal, print_json
from fleetward.cli.conformance import report as conformance_report
from fleetward.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from fleetward.store import utcnow
from fleetward.trustmap import draft, service
from fleetward.trustmap.maps import PRODUCT

trustmap_app = typer.Typer(
    help="Trust map and threat model as code (docs/trustmap.md).", no_args_is_help=True
)

MAP = typer.Argument(..., help="the trust map (YAML)")


def _bytes(path: Path) -> bytes:
    # The map's size limit is checked by trustmap.load; a larger file is
    # refused there, so only read one byte past it.
    try:
        with path.open("rb") as f:
            return f.read(trustmap.schema.MAX_MAP_BYTES + 1)
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc


def _read(path: Path) -> trustmap.TrustMap:
    return trustmap.load(_bytes(path))


_FAILING = ("high", "critical")  # drift severities that make ``check`` exit 1


@trustmap_app.command("check")
def check(ctx: typer.Context, path: Path = MAP, tenant: str = TENANT, as_json: bool = JSON) -> None:
    """Compare a trust map with the live installation; exit 1 on a high or critical drift."""
    text = _bytes(path)
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.session() as s:
        result = service.check_map(s, tenant_id=who.tenant_id, map_text=text, now=utcnow())
    if as_json:
        print_json(
            {
                "drifts": [dataclasses.asdict(d) for d in result.drifts],
                "confirmed": sorted(result.confirmed),
                "checked": list(result.checked),
            }
        )
    else:
        table = Table("severity", "kind", "subject", "message")
        for d in result.drifts:
            objects = f" [{', '.join(d.objects)}]" if d.objects else ""
            # Names in drifts were written by tenants: plain text, never markup.
            table.add_row(*(Text(c) for c in (d.severity, d.kind, d.subject, d.message + objects)))
        if result.drifts:
            console.print(table)
        console.print(
            f"{len(result.drifts)} drift(s); checks run: {', '.join(result.checked)}; "
            f"confirmed: {', '.join(sorted(result.confirmed)) or 'none'}",
            markup=False,
        )
    if any(d.severity in _FAILING for d in result.drifts):
        raise typer.Exit(1)


@trustmap_app.command("init")
def init(
    ctx: typer.Context,
    product: str = typer.Option(..., "--product", help="the product the map describes"),
    tenant: str = TENANT,
    out: Path | None = typer.Option(None, "--out", help="write here instead of stdout"),
    force: bool = typer.Option(False, "--force", help="overwrite --out if it exists"),
) -> None:
    """Draft a trust map from the live installation (what it holds today: review it)."""
    if out is not None and out.exists() and not force:
        raise ConflictError(f"{out} exists; --force overwrites it")
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    now = utcnow()
    if not PRODUCT.fullmatch(product):  # no product can have this name: ask no database
        raise NotFoundError(f"no product {product[:70]!r} in tenant {who.tenant_name!r}")
    with app.db.session() as s:
        # fleetward has no product table: a product exists once a device, a
        # release or a TUF targets role (``ota`` products) names it.
        known = (
            identity.list_devices(s, who, product=product, limit=1)
            or ota.role_keys(s, tenant_id=who.tenant_id, role=f"product-{product}") is not None
            or ota.list_releases(s, who, product=product)
        )
        if not known:
            raise NotFoundError(f"no product {product!r} in tenant {who.tenant_name!r}")
        live = service.live_facts(s, tenant_id=who.tenant_id, product=product, now=now)
    doc = draft.from_live(live, product=product)
    text = draft.to_yaml(doc, tenant=who.tenant_name, now=now, live=live)
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        if not force:
            # "x" refuses a file that appeared since the check above.
            with out.open("x", encoding="utf-8") as f:
                f.write(text)
            return
        # --force: a whole new file renamed over the old one, never a write
        # through a symlink, never an old file left half written.
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, out)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except FileExistsError as exc:
        raise ConflictError(f"{out} exists; --force overwrites it") from exc
    except OSError as exc:
        raise InvalidInputError(f"cannot write {out}: {exc.strerror}") from exc


@trustmap_app.command("schema")
def schema(out: Path | None = typer.Option(None, "--out", help="write here")) -> None:
    """Print the trust map's JSON Schema."""
    text = json.dumps(trustmap.json_schema(), indent=2, sort_keys=True) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


@trustmap_app.command("validate")
def validate(path: Path = MAP) -> None:
    """Check a trust map against the schema; the first bad nodes are named."""
    m = _read(path)
    typer.echo(f"{path}: a valid trust map of {m.product}")


@trustmap_app.command("threats")
def threats(
    ctx: typer.Context,
    path: Path = MAP,
    format: Literal["markdown", "json", "dot", "svg"] = typer.Option(
        "markdown", "--format", help="markdown, json, dot (Graphviz) or svg (needs Graphviz)"
    ),
    out: Path | None = typer.Option(None, "--out", help="write here instead of stdout"),
    live: bool = typer.Option(
        False, "--live", help="count the controls the live installation confirms"
    ),
    tenant: str = TENANT,
) -> None:
    """The STRIDE threat model of a map (with --live: confirmed controls mitigate)."""
    m = _read(path)
    if live and format in ("markdown", "json"):
        app = load_ctx(ctx)
        who = local_principal(app, tenant)
        with app.db.session() as s:
            tm = service.threat_model(
                s, tenant_id=who.tenant_id, map_text=_bytes(path), now=utcnow()
            )
    else:
        tm = trustmap.model(m)
    if format == "markdown":
        text = trustmap.to_markdown(tm)
    elif format == "json":
        text = json.dumps(trustmap.to_json(tm), indent=2) + "\n"
    else:
        text = trustmap.to_dot(m)
        if format == "svg":
            dot = shutil.which("dot")
            if dot is None:
                raise UnavailableError("svg needs Graphviz's dot (Debian: apt install graphviz)")
            text = subprocess.run(
                [dot, "-Tsvg"], input=text.encode(), capture_output=True, check=True, timeout=60
            ).stdout.decode()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


trustmap_app.command("conformance")(conformance_report)
