"""``fleetward vulns``: feed imports, findings, triage, VEX, reviews and CRA cases.

The local CLI acts as the tenant's admin. ``import`` reads the file where it
lies (no upload limit) and shows progress on large OSV feeds; the rest
print the REST API's models with ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich.table import Table

from fleetward import vulns
from fleetward.api.routes.vulns import (
    Analysis,
    CaseOut,
    FeedKind,
    FindingOut,
    ImportOut,
    Justification,
    ReportKind,
    review_out,
)
from fleetward.cli.common import (
    JSON,
    TENANT,
    admin_session,
    console,
    load_ctx,
    local_principal,
    print_items,
    print_json,
)

vulns_app = typer.Typer(
    help="Vulnerabilities: feeds, findings, triage, VEX, reviews, CRA cases.",
    no_args_is_help=True,
)
review_app = typer.Typer(help="Periodic vulnerability reviews.", no_args_is_help=True)
cases_app = typer.Typer(help="CRA Article 14 cases and their reports.", no_args_is_help=True)
vulns_app.add_typer(review_app, name="review")
vulns_app.add_typer(cases_app, name="cases")


@vulns_app.command("import")
def import_feed(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="OSV .json/.zip/directory, NVD JSON, KEV JSON, EPSS CSV"),
    kind: FeedKind | None = typer.Option(None, "--kind", help="the feed kind (default: detected)"),
    tenant: str = TENANT,
    as_json: bool = JSON,
) -> None:
    """Import a downloaded feed, incrementally, in one transaction."""
    work = admin_session(ctx, tenant, action="vulns.import", subject=f"feed:{path.name}")
    with work as (_app, who, s), console.status(f"importing {path.name} ...") as status:

        def progress(n: int) -> None:
            status.update(f"importing {path.name}: {n:,} records read")

        report = vulns.import_feed(s, who, path, kind=kind, progress=progress)
    out = ImportOut.of(report)
    if as_json:
        print_json(out.model_dump(mode="json"))
        return
    console.print(
        f"{out.kind} import {out.id} of {out.name}: {out.total} records, {out.added} added, "
        f"{out.updated} updated, {out.unchanged} unchanged, {out.skipped} skipped; "
        f"{out.findings_new} new findings, {out.findings_closed} closed"
    )
    for p in out.problems[:20]:
        console.print(f"  skipped {p['where']}: {p['reason']}", markup=False)


@vulns_app.command("findings")
def findings(
    ctx: typer.Context,
    state: Literal["open", "closed"] = typer.Option("open", "--state"),
    priority: Literal["P1", "P2", "P3", "P4"] | None = typer.Option(None, "--priority"),
    product: str | None = typer.Option(None, "--product"),
    overdue: bool = typer.Option(False, "--overdue", help="only findings past their due date"),
    limit: int = typer.Option(100, "--limit", min=1, max=1000),
    tenant: str = TENANT,
    as_json: bool = JSON,
) -> None:
    """Findings, most urgent first."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.db.read() as s:
        items = [
            FindingOut.of(v)
            for v in vulns.list_findings(
                s,
                who,
                state=state,
                priority=priority,
                product=product,
                overdue=overdue,
                limit=limit,
            )
        ]
    if as_json:
        print_items(items)
        return
    table = Table("id", "prio", "due", "advisory", "component", "release", "devices", "analysis")
    for f in items:
        due = f.due_at.date().isoformat() + (" OVERDUE" if f.overdue else "")
        table.add_row(
            str(f.id), f.priority, due, f.advisory, f"{f.component} {f.component_version or ''}",
            f"{f.product} {f.version}", str(f.devices), f.analysis,
        )  # fmt: skip
    console.print(table)


@vulns_app.command("show")
def show(ctx: typer.Context, finding_id: int, tenant: str = TENANT, as_json: bool = JSON) -> None:
    """One finding with its reasons."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        f = FindingOut.of(vulns.get_finding(s, local_principal(app, tenant), finding_id))
    if as_json:
        print_json(f.model_dump(mode="json"))
        return
    console.print(
        f"[bold]{f.advisory}[/bold] {f.severity} in {f.component} {f.component_version} "
        f"({f.product} {f.version}): {f.priority}, due {f.due_at:%Y-%m-%d}", markup=True,
    )  # fmt: skip
    for r in f.reasons:
        console.print(f"  - {r}", markup=False)


@vulns_app.command("triage")
def triage(
    ctx: typer.Context,
    finding_id: int,
    analysis: Analysis | None = typer.Option(None, "--analysis"),
    justification: Justification | None = typer.Option(None, "--justification"),
    detail: str | None = typer.Option(None, "--detail"),
    exploited: bool | None = typer.Option(None, "--exploited/--not-exploited"),
    fix_release: int | None = typer.Option(None, "--fix-release", help="release id of the fix"),
    tenant: str = TENANT,
    as_json: bool = JSON,
) -> None:
    """Set a finding's analysis, mark it exploited, or name its fix release."""
    subject = f"vuln-finding:{finding_id}"
    with admin_session(ctx, tenant, action="vulns.triage", subject=subject) as (_app, who, s):
        f = FindingOut.of(
            vulns.triage(
                s,
                who,
                finding_id,
                analysis=analysis,
                justification=justification,
                detail=detail,
                exploited=exploited,
                fix_release_id=fix_release,
            )
        )
    if as_json:
        print_json(f.model_dump(mode="json"))
    else:
        console.print(f"finding {f.id}: {f.analysis}, {f.priority}, due {f.due_at:%Y-%m-%d}")


@vulns_app.command("vex")
def vex(
    ctx: typer.Context,
    release_id: int,
    out: Path | None = typer.Option(None, "--out", help="write here instead of stdout"),
    tenant: str = TENANT,
) -> None:
    """The CycloneDX 1.5 VEX document of a release."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        body = vulns.release_vex(s, local_principal(app, tenant), release_id)
    if out is None:
        typer.echo(body.decode())
    else:
        out.write_bytes(body)


@review_app.command("run")
def review_run(ctx: typer.Context, tenant: str = TENANT, as_json: bool = JSON) -> None:
    """Write a review of the period since the last one, now."""
    with admin_session(ctx, tenant, action="vulns.review", subject="vuln-review") as (
        _app, who, s,
    ):  # fmt: skip
        r = vulns.create_review(s, who.tenant_id, actor=who.actor)
        out = review_out(r)
    if as_json:
        print_json(out.model_dump(mode="json"))
    else:
        typer.echo(out.markdown)


@review_app.command("list")
def review_list(ctx: typer.Context, tenant: str = TENANT, as_json: bool = JSON) -> None:
    """The reviews, newest first."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        items = [review_out(r) for r in vulns.list_reviews(s, local_principal(app, tenant))]
    if as_json:
        print_items(items)
        return
    table = Table("id", "date", "since", "exposed devices", "by")
    for r in items:
        table.add_row(
            str(r.id), f"{r.created_at:%Y-%m-%d %H:%M}", f"{r.period_start:%Y-%m-%d}",
            str(r.exposed), r.created_by,
        )  # fmt: skip
    console.print(table)


@review_app.command("show")
def review_show(
    ctx: typer.Context, review_id: int, tenant: str = TENANT, as_json: bool = JSON
) -> None:
    """One review (Markdown; --json for the JSON body)."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        r = review_out(vulns.get_review(s, local_principal(app, tenant), review_id))
    if as_json:
        print_json(r.model_dump(mode="json"))
    else:
        typer.echo(r.markdown)


@cases_app.command("list")
def cases_list(
    ctx: typer.Context,
    state: Literal["open", "closed"] | None = typer.Option(None, "--state"),
    tenant: str = TENANT,
    as_json: bool = JSON,
) -> None:
    """CRA cases with their next deadline."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        items = [
            CaseOut.of(v) for v in vulns.list_cases(s, local_principal(app, tenant), state=state)
        ]
    if as_json:
        print_items(items)
        return
    table = Table("id", "vulnerability", "trigger", "aware", "next report", "due", "state")
    for c in items:
        table.add_row(
            str(c.id), c.vulnerability, c.trigger, f"{c.aware_at:%Y-%m-%d %H:%M}",
            c.next_report or "-", f"{c.next_due:%Y-%m-%d %H:%M}" if c.next_due else "-", c.state,
        )  # fmt: skip
    console.print(table)


@cases_app.command("show")
def cases_show(
    ctx: typer.Context, case_id: int, tenant: str = TENANT, as_json: bool = JSON
) -> None:
    """One case and its deadlines."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        c = CaseOut.of(vulns.get_case(s, local_principal(app, tenant), case_id))
    if as_json:
        print_json(c.model_dump(mode="json"))
        return
    console.print(
        f"case {c.id}: {c.vulnerability} ({c.trigger}), aware {c.aware_at:%Y-%m-%d %H:%M}"
    )
    for kind, due in (
        ("early-warning", c.early_warning_due),
        ("notification", c.notification_due),
        ("final", c.final_due),
    ):
        done = c.submitted.get(kind)
        state = f"submitted ({done['reference']})" if done else "pending"
        when = f"{due:%Y-%m-%d %H:%M} UTC" if due else "when a fix is available + 14 days"
        console.print(f"  {kind}: due {when}, {state}")


@cases_app.command("draft")
def cases_draft(
    ctx: typer.Context, case_id: int, kind: ReportKind, tenant: str = TENANT, as_json: bool = JSON
) -> None:
    """A report drafted from live data (Markdown; --json for the JSON document)."""
    app = load_ctx(ctx)
    with app.db.read() as s:
        d = vulns.report_draft(s, local_principal(app, tenant), case_id, kind)
    if as_json:
        print_json(d.json)
    else:
        typer.echo(d.markdown)


@cases_app.command("submit")
def cases_submit(
    ctx: typer.Context,
    case_id: int,
    kind: ReportKind,
    reference: str = typer.Option(..., "--reference", help="the authority's reference"),
    tenant: str = TENANT,
) -> None:
    """Mark a report submitted (keeps the draft as it stands)."""
    with admin_session(ctx, tenant, action="vulns.case.submit", subject=f"vuln-case:{case_id}") as (
        _app, who, s,
    ):  # fmt: skip
        c = CaseOut.of(vulns.submit_report(s, who, case_id, kind, reference=reference))
    console.print(f"case {c.id}: {kind} submitted as {reference}; state {c.state}", markup=False)
