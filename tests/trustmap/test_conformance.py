"""Conformance evidence on a live test installation: counts, reproducibility, refusals.

The installation is the test fixture's (``fleetward init``); the activity is
made through the API as in ``test_live.py`` (a product with a deployable
release, devices enrolled in test and production, a revocation, a campaign,
a vulnerability import, a refused enrollment), and the report's counts are
compared with what was done. The catalogue tests are pure.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fleetward import audit
from fleetward.cli.conformance import report
from fleetward.errors import InvalidInputError, NotFoundError
from fleetward.runtime.context import AppContext
from fleetward.trustmap import conformance, evidence
from fleetward.trustmap.conformance import CATALOGUE, CRA_ITEMS, ETSI_SECTIONS
from tests.helpers import csr_pem, new_key
from tests.trustmap.test_live import PRODUCT, auth, enroll, tenant_id, token
from tests.trustmap.test_live import product as product
from tests.vulns.test_flow import OSV_REQUESTS


def gather(ctx: AppContext, *, as_of: int | None = None, product: str | None = None) -> str:
    with ctx.db.read() as s:
        ev = evidence.gather(
            s, tenant_id=tenant_id(ctx), product=product, as_of=as_of, settings=ctx.settings,
            checkpoint_key=ctx.checkpoint_public_key(),
        )  # fmt: skip
    return conformance.to_json(conformance.evaluate(ev))


def head(ctx: AppContext) -> int:
    with ctx.db.read() as s:
        return audit.head_seq(s)


@pytest.fixture
def activity(client: TestClient, ctx: AppContext, admin_token: str, product: int) -> dict[str, int]:
    """On top of ``product`` (one release, gw-test-1 enrolled): what the report must count."""
    sec, rm = token(ctx, "security"), token(ctx, "release-manager")
    enroll(client, admin_token, "gw-prod-1", "production")
    enroll(client, admin_token, "gw-prod-2", "production")
    resp = client.post("/api/v1/devices/gw-prod-1/revocation", json={}, headers=auth(sec))
    assert resp.status_code == 200, resp.text
    resp = client.post(
        "/api/v1/campaigns", json={"release_id": product, "waves": [10, 100]}, headers=auth(rm)
    )
    assert resp.status_code == 201, resp.text
    resp = client.post(
        "/api/v1/vulns/imports",
        files={"file": ("GHSA.json", json.dumps(OSV_REQUESTS).encode(), "application/json")},
        headers=auth(sec),
    )
    assert resp.status_code == 201, resp.text
    # An enrollment refused: a CSR whose CN is not the device id.
    resp = client.post(
        "/api/v1/devices/gw-bad/certificates",
        json={"csr": csr_pem(new_key(), "someone-else").decode(), "environment": "test",
              "product": PRODUCT},
        headers=auth(admin_token),
    )  # fmt: skip
    assert resp.status_code == 422, resp.text
    return {"release": product}


def test_the_counts_are_what_was_done(ctx: AppContext, activity: dict[str, int]) -> None:
    doc = json.loads(gather(ctx))
    ev = doc["evidence"]
    issued = ev["certificates.issued"]
    assert issued["value"] == 3  # gw-test-1, gw-prod-1, gw-prod-2
    assert dict(issued["breakdown"]) == {
        "production / software / ec-p256": 2, "test / software / ec-p256": 1,
    }  # fmt: skip
    assert ev["certificates.production-software-keys"]["value"] == 2
    assert ev["certificates.revoked"]["value"] == 1
    assert ev["devices.revoked"]["value"] == 1
    assert ev["releases.created"]["value"] == 1 and ev["releases.deployable"]["value"] == 1
    assert ev["campaigns.created"]["value"] == 1
    assert dict(ev["campaigns.created"]["breakdown"]) == {"first wave 10 %": 1}
    assert ev["campaigns.large-first-wave"]["value"] == 0
    assert ev["vulns.imports"]["value"] == 1 and dict(ev["vulns.imports"]["breakdown"]) == {
        "osv": 1
    }
    assert ev["enrollments.refused"]["value"] == 1
    assert ev["ota.tuf-root-threshold"]["value"] == 2
    assert ev["ota.release-threshold"]["value"] == 1
    assert ev["tenant.allow-unattested-production"]["value"] is True
    assert ev["audit.chain-verified"]["value"] is True and doc["audit_chain"]["verified"]

    # Every audit line cites entries that hold what it counts.
    with ctx.db.read() as s:
        entries = {e.seq: e for e in audit.entries_upto(s, tenant_id=tenant_id(ctx), upto=10**9)}
    assert doc["as_of"]["seq"] == max(entries)
    assert doc["as_of"]["entry_hash"] == entries[max(entries)].hash
    assert [entries[q].action for q in ev["certificates.revoked"]["seqs"]] == ["certificate.revoke"]
    assert {entries[q].action for q in issued["seqs"]} == {"certificate.issue"}
    assert issued["entries"] == 3 and issued["first_seq"] < issued["last_seq"]
    assert ev["audit.entries"]["value"] == len(entries) == doc["as_of"]["tenant_entries"]
    # Configuration and platform lines cite no entry.
    assert ev["config.listener-per-environment"]["value"] is True
    assert "seqs" not in ev["config.listener-per-environment"]

    status = {r["id"]: r["status"] for r in doc["requirements"]}
    # Production software keys exist and no CA key is on a token: 5.4-1 is not met.
    assert status["ETSI 5.4-1"] == "not-met"
    assert status["ETSI 5.2-1"] == "manufacturer"
    assert status["ETSI 5.3-1"] == "partly"  # shared: the rest is the manufacturer's
    assert status["CRA I.2(b)"] == "partly"  # unattested keys allowed in production


def test_a_product_narrows_release_and_device_lines(
    client: TestClient, ctx: AppContext, admin_token: str, activity: dict[str, int]
) -> None:
    # A device of another product: counted for the tenant, not for gw.
    resp = client.post(
        "/api/v1/devices/cam-1/certificates",
        json={"csr": csr_pem(new_key(), "cam-1").decode(), "environment": "test",
              "product": "camera"},
        headers=auth(admin_token),
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    tenant = json.loads(gather(ctx))["evidence"]
    gw = json.loads(gather(ctx, product=PRODUCT))
    assert tenant["certificates.issued"]["value"] == 4
    assert gw["evidence"]["certificates.issued"]["value"] == 3
    assert gw["evidence"]["certificates.issued"]["scope"] == "product"
    assert gw["evidence"]["releases.created"]["value"] == 1
    # A refused enrollment names no registered device: counted for the tenant, whatever product.
    assert gw["evidence"]["enrollments.refused"]["value"] == 1
    assert gw["evidence"]["enrollments.refused"]["scope"] == "tenant"
    other = json.loads(gather(ctx, product="camera"))["evidence"]
    assert other["certificates.issued"]["value"] == 1
    assert other["releases.created"]["value"] == 0 and other["campaigns.created"]["value"] == 0
    assert other["vulns.imports"]["value"] == 1  # tenant-wide, and says so
    assert other["vulns.imports"]["scope"] == "tenant"


def test_a_report_as_of_is_reproducible_after_more_activity(
    client: TestClient, ctx: AppContext, admin_token: str, activity: dict[str, int]
) -> None:
    # A refused login after the tenant's newest entry: a system entry past the anchor.
    assert client.get("/api/v1/devices", headers=auth("fwt_nope_nope")).status_code == 401
    before = gather(ctx)
    seq = json.loads(before)["as_of"]["seq"]
    assert head(ctx) > seq and json.loads(before)["evidence"]["auth.refused"]["value"] == 0
    # More activity: devices enrolled and revoked, another campaign, a refused login.
    enroll(client, admin_token, "gw-prod-3", "production")
    sec, rm = token(ctx, "security"), token(ctx, "release-manager")
    resp = client.post("/api/v1/devices/gw-prod-2/revocation", json={}, headers=auth(sec))
    assert resp.status_code == 200, resp.text
    resp = client.post(
        "/api/v1/campaigns",
        json={"release_id": activity["release"], "waves": [50, 100]},
        headers=auth(rm),
    )
    assert resp.status_code in (201, 409), resp.text
    assert client.get("/api/v1/devices", headers=auth("fwt_nope_other")).status_code == 401
    now = json.loads(gather(ctx))
    assert now["as_of"]["seq"] > seq
    assert now["evidence"]["certificates.issued"]["value"] == 4
    # The earlier point, rebuilt from the log: byte for byte.
    assert gather(ctx, as_of=seq) == before
    # A sequence number past the tenant's newest entry anchors on that entry.
    assert gather(ctx, as_of=head(ctx)) == gather(ctx)


def test_bad_tenant_and_as_of_are_refused(ctx: AppContext, activity: dict[str, int]) -> None:
    with ctx.db.read() as s, pytest.raises(NotFoundError):
        evidence.gather(s, tenant_id=9999, product=None, as_of=None)
    for bad in (0, -1):
        with ctx.db.read() as s, pytest.raises(InvalidInputError, match=f"as_of must be .* {bad}"):
            evidence.gather(s, tenant_id=tenant_id(ctx), product=None, as_of=bad)
    with ctx.db.read() as s, pytest.raises(InvalidInputError, match="past the newest"):
        evidence.gather(s, tenant_id=tenant_id(ctx), product=None, as_of=head(ctx) + 1)


def cli() -> typer.Typer:
    """``report`` as ``fleetward trustmap conformance`` will run it (``--home`` on the root)."""
    app = typer.Typer()

    @app.callback()
    def root(ctx: typer.Context, home: Path = typer.Option(..., "--home")) -> None:
        ctx.obj = {"home": str(home)}

    app.command("conformance")(report)
    return app


def test_the_cli_renders_markdown_and_json(
    ctx: AppContext, activity: dict[str, int], tmp_path: Path
) -> None:
    home = str(ctx.settings.home)
    md = CliRunner().invoke(cli(), ["--home", home, "conformance"])
    assert md.exit_code == 0, md.output
    assert md.output.startswith("# Conformance evidence: tenant default")
    assert "## ETSI EN 303 645" in md.output and "## CRA Annex I" in md.output
    assert "| ETSI 5.13-1 |" in md.output and "| CRA II.8 |" in md.output
    out = tmp_path / "report.json"
    seq = json.loads(gather(ctx))["as_of"]["seq"]
    js = CliRunner().invoke(
        cli(), ["--home", home, "conformance", "--format", "json", "--as-of", str(seq),
                "--out", str(out)],
    )  # fmt: skip
    assert js.exit_code == 0, js.output
    assert out.read_text() == gather(ctx, as_of=seq)
    bad = CliRunner().invoke(cli(), ["--home", home, "conformance", "--as-of", "-5"])
    assert bad.exit_code != 0
    unknown = CliRunner().invoke(cli(), ["--home", home, "conformance", "--tenant", "nobody"])
    assert unknown.exit_code != 0


def test_every_etsi_section_and_cra_item_is_in_the_catalogue() -> None:
    ids = [r.id for r in CATALOGUE]
    assert len(ids) == len(set(ids))
    etsi = {r.section for r in CATALOGUE if r.framework == "ETSI EN 303 645"}
    assert etsi == set(ETSI_SECTIONS) and len(ETSI_SECTIONS) == 13
    cra = {r.id.removeprefix("CRA ") for r in CATALOGUE if r.framework == "CRA Annex I"}
    assert cra == set(CRA_ITEMS) and len(CRA_ITEMS) == 1 + 13 + 8
    for r in CATALOGUE:
        if r.framework == "ETSI EN 303 645":
            assert re.fullmatch(r"ETSI 5\.(\d+)-\d+", r.id), r.id
        assert (r.owner == "manufacturer") == (not r.checks), r.id


def test_the_gatherer_produces_every_key_the_catalogue_reads(
    ctx: AppContext, activity: dict[str, int]
) -> None:
    produced = set(json.loads(gather(ctx))["evidence"])
    assert conformance.evidence_keys() <= produced, conformance.evidence_keys() - produced


def line(key: str, value: conformance.Value, source: str = "audit") -> conformance.EvidenceLine:
    return conformance.EvidenceLine(key=key, text=key, source=source, scope="tenant", value=value)


def made(*lines: conformance.EvidenceLine) -> conformance.Evidence:
    return conformance.Evidence(
        tenant="t|x", product=None, as_of=7, as_of_hash="ab", tenant_entries=7,
        chain_verified=True, chain_detail="ok", lines=lines,
    )  # fmt: skip


def test_the_rules_decide_each_status() -> None:
    keys = sorted(conformance.evidence_keys())
    none = conformance.evaluate(made())
    assert {r.status for r in none.results} == {"not-met", "manufacturer"}
    assert all(o.missing for r in none.results for o in r.checks)
    # Every check holding: fleetward's requirements met, shared ones partly.
    good = {k: True for k in keys} | {
        k: 2 for k in keys if any(c.key == k and c.test in ("positive", "at-least-2")
                                  for r in CATALOGUE for c in r.checks)
    } | {k: 0 for k in keys if any(c.key == k and c.test == "zero"
                                   for r in CATALOGUE for c in r.checks)}  # fmt: skip
    good["tenant.allow-unattested-production"] = False
    all_hold = conformance.evaluate(made(*(line(k, v) for k, v in sorted(good.items()))))
    for r in all_hold.results:
        want = {"fleetward": "met", "shared": "partly", "manufacturer": "manufacturer"}
        assert r.status == want[r.requirement.owner], (r.requirement.id, r.checks)
    # Half of 5.1-4's checks: partly; a bool is not a count.
    half = conformance.evaluate(
        made(line("certificates.renewed", 1), line("certificates.revoked", True))
    )
    [r514] = [r for r in half.results if r.requirement.id == "ETSI 5.1-4"]
    assert (r514.status, r514.reason) == ("partly", "1 of 2 checks hold")


def test_rendering_is_deterministic_and_escapes_tenant_text() -> None:
    ev = made(line("certificates.issued", 3), line("x", "a|b\nc", "configuration"))
    rep = conformance.evaluate(ev)
    assert conformance.to_json(rep) == conformance.to_json(conformance.evaluate(ev))
    md = conformance.to_markdown(rep)
    assert "tenant t\\|x" in md and "a\\|b c" in md
    with pytest.raises(ValueError, match="distinct"):
        made(line("k", 1), line("k", 2))
    with pytest.raises(ValueError, match="only audit lines"):
        conformance.EvidenceLine(
            key="c", text="c", source="configuration", scope="tenant", value=1, entries=1
        )
