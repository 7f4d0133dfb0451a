"""Attacks on vulnerability operations (issue 16): every ``/api/v1/vulns``
route and the ``fleetward vulns`` CLI, tried as a narrow or hostile caller.

Anonymous, another tenant, an environment-scoped or factory-bound token and
the weakest roles; hostile input (oversized, bombs, bad encodings, deep
nesting, out-of-range numbers, forged cursors, odd names); floods of refused
requests; an import that fails midway. The answer is always a 4xx problem
detail (never a 500), a refusal is counted rather than audited one by one,
and a failed import leaves nothing behind. The defects this file found
(issue 16) were mended; their tests now pass.

The route x role x scope table (``tests/tenancy/test_scope_table.py``) is
generated from the app's routes, so it already calls every vulns route with
every role and scope; the tests here add real objects (so that an allowed
call is not merely a 404) and the other tenant's ids.
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import sqlalchemy as sa
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql
from typer.testing import CliRunner

from fleetward import store
from fleetward.audit.models import AuditEntry
from fleetward.cli.main import app as cli
from fleetward.errors import FleetwardError, PayloadTooLargeError
from fleetward.provisioning import service as provisioning
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.vulns import _store, imports
from fleetward.vulns.models import Advisory, AdvisoryAlias, FeedImport, Finding
from tests.response.helpers import ADMIN
from tests.vulns.test_flow import (
    NVD_OPENSSL,
    OPENSSL_CVE,
    OSV_REQUESTS,
    PRODUCT,
    auth,
    fleet,
    kev,
    release,
    sbom,
    token,
    upload_feed,
)

__all__ = ["fleet"]  # the fixture, re-exported so that pytest finds it here

GHSA = str(OSV_REQUESTS["id"])
PREFIX = "/api/v1/vulns"
PROBLEM = "application/problem+json"
KEVF = "known_exploited_vulnerabilities.json"
Json = dict[str, Any]


def problem(resp: Response, status: int) -> Json:
    """``resp`` is a problem detail with ``status``."""
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    assert resp.headers["content-type"].startswith(PROBLEM), resp.headers["content-type"]
    body: Json = resp.json()
    return body


def lenient(client: TestClient) -> TestClient:
    """The same app, answering 500 instead of raising (to assert there is none)."""
    return TestClient(client.app, raise_server_exceptions=False)


def js(value: Any) -> bytes:
    return json.dumps(value).encode()


def osv(**changes: Any) -> bytes:
    return js({**OSV_REQUESTS, **changes})


def req(c: TestClient, method: str, url: str, tok: str, **kw: Any) -> Response:
    resp: Response = c.request(method, PREFIX + url, headers=auth(tok), **kw)
    return resp


def post_feed(c: TestClient, tok: str, name: str, body: bytes, kind: str | None = None) -> Response:
    files = {"file": (name, body, "application/octet-stream")}
    return req(c, "POST", "/imports", tok, files=files, data={"kind": kind} if kind else None)


def count(ctx: AppContext, model: Any, *where: Any) -> int:
    with ctx.db.read() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def refused_rows(ctx: AppContext) -> int:
    return count(ctx, AuditEntry, AuditEntry.outcome == "refused")


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _flat(routes: list[Any]) -> list[Any]:
    """Every route, through included routers (as tests/tenancy/test_scope_table.py)."""
    out: list[Any] = []
    for route in routes:
        has = hasattr(route, "effective_candidates")
        out.extend(_flat(route.effective_candidates()) if has else [route])
    return out


def vuln_routes(client: TestClient) -> list[tuple[str, str]]:
    """(method, path below PREFIX) of every vulns route of the app."""
    out = set()
    for route in _flat(client.app.routes):  # type: ignore[attr-defined]
        path = getattr(route, "path", "")
        if path.startswith(PREFIX):
            out |= {(m, path[len(PREFIX) :]) for m in getattr(route, "methods", set()) - {"HEAD"}}
    return sorted(out)


@pytest.fixture
def world(client: TestClient, ctx: AppContext, fleet: Json) -> Json:
    """Tenant A with a finding of each feed, a KEV case, a review and imports."""
    sec = fleet["sec"]
    upload_feed(client, sec, "GHSA.json", osv())
    upload_feed(client, sec, "nvd.json", js(NVD_OPENSSL))
    upload_feed(client, sec, KEVF, js(kev(OPENSSL_CVE)))
    items = req(client, "GET", "/findings", sec).json()["items"]
    [case] = req(client, "GET", "/cases", sec).json()["items"]
    review = req(client, "POST", "/reviews", sec).json()
    imp = req(client, "GET", "/imports", sec).json()["items"][0]
    ids = {"finding_id": items[0]["id"], "case_id": case["id"], "review_id": review["id"]}
    return {**fleet, **ids, "import_id": imp["id"], "release_id": fleet["v1"]}


def fill(path: str, w: Json, kind: str = "early-warning") -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(w.get(m.group(1), kind)), path)


# What each write route is sent (a valid request for the owner).
WRITES: dict[tuple[str, str], Json] = {
    ("POST", "/imports"): {"files": {"file": ("k.json", js(kev("CVE-2020-1")))}},
    ("POST", "/findings/{finding_id}/triage"): {"json": {"exploited": True}},
    ("PUT", "/policy"): {"json": {"critical_days": 1}},
    ("POST", "/reviews"): {},
    ("POST", "/cases"): {"json": {"vulnerability": GHSA}},
    ("POST", "/cases/{case_id}/reports/{kind}"): {"json": {"reference": "R-1"}},
}


# --- who may call ---------------------------------------------------------------------------


@pytest.mark.sqlite_run_only  # HTTP-level refusals: the database does not matter
def test_every_vulns_route_refuses_anonymous_and_bad_tokens(client: TestClient) -> None:
    routes = vuln_routes(client)
    assert len(routes) == 19, routes  # a new route: add it to WRITES if it writes
    assert {r for r in routes if r[0] != "GET"} == set(WRITES)
    for n, bad in enumerate(("", "fw_0123456789abcdef_" + "x" * 43)):
        # One source per credential: 19 failures stay under the rate limit.
        c = TestClient(client.app, client=(f"192.0.2.{n + 1}", 1))
        for method, path in routes:
            url = PREFIX + re.sub(r"\{\w+\}", "1", path)
            headers = auth(bad) if bad else {}
            body = b"{not json" if method != "GET" else None
            problem(c.request(method, url, content=body, headers=headers), 401)  # not 422


def test_another_tenant_gets_404_for_every_object_and_cannot_change_ours(
    client: TestClient, ctx: AppContext, world: Json
) -> None:
    with ctx.db.session() as s:
        tenancy.create_tenant(s, name="other", actor="t")
    b_sec, b_admin = token(ctx, "security", "other"), token(ctx, "admin", "other")
    c, sec = lenient(client), world["sec"]
    for method, path in vuln_routes(client):
        if "{" in path:
            for tok in (b_sec, b_admin):
                kw = WRITES.get((method, path), {})
                problem(req(c, method, fill(path, world), tok, **kw), 404)
    # B's lists are empty; B opening a case for A's vulnerability finds nothing.
    for lst in ("findings", "imports", "reviews", "cases"):
        assert req(c, "GET", f"/{lst}", b_sec).json()["items"] == []
    problem(req(c, "POST", "/cases", b_sec, json={"vulnerability": OPENSSL_CVE}), 404)
    # B withdraws the advisory and KEV-lists its CVE: A's finding is untouched.
    withdrawn = osv(modified="2026-12-05T00:00:00Z", withdrawn="2026-12-05T00:00:00Z")
    upload_feed(client, b_sec, "GHSA.json", withdrawn)
    upload_feed(client, b_sec, KEVF, js(kev("CVE-2023-32681")))
    mine = {f["advisory"]: f for f in req(c, "GET", "/findings", sec).json()["items"]}
    assert set(mine) == {OPENSSL_CVE, GHSA}
    assert mine[GHSA]["state"] == "open" and not mine[GHSA]["exploited"]
    assert len(req(c, "GET", "/cases", sec).json()["items"]) == 1
    # A names B's release as its fix, opens a case from B's incident, asks B's VEX: 404.
    b_rm = token(ctx, "release-manager", "other")
    url = f"/api/v1/ota/products/{PRODUCT}"
    product = client.post(url, json={"threshold": 1}, headers=auth(b_rm))
    assert product.status_code == 201, product.text
    b_rel = release(client, b_rm, "9.0.0", sbom("3.0.13", "2.31.0"))
    triage = f"/findings/{world['finding_id']}/triage"
    problem(req(c, "POST", triage, sec, json={"fix_release_id": b_rel}), 404)
    inc = client.post("/api/v1/incidents", json={"title": "b"}, headers=auth(b_admin)).json()["id"]
    problem(req(c, "POST", "/cases", sec, json={"vulnerability": GHSA, "incident_id": inc}), 404)
    problem(req(c, "GET", f"/releases/{b_rel}/vex", sec), 404)


def _narrow_tokens(ctx: AppContext) -> dict[str, str]:
    with ctx.db.session() as s:
        tenant = tenancy.get_tenant_by_name(s, "default")
        factory = provisioning.create_factory(s, ADMIN, name="line-t", environment="test")
        out = {}
        for role, env in (("security", "test"), ("security", "production"), ("admin", "test")):
            _, out[f"{role}@{env}"] = tenancy.create_token(
                s, tenant=tenant, name=f"{role}-{env}", role=role, environment=env, actor="t"
            )
        _, out["factory-bound"] = tenancy.create_token(
            s, tenant=tenant, name="station", role="factory-operator", environment="test",
            factory_id=factory.id, actor="t",
        )  # fmt: skip
    for role in ("auditor", "factory-operator", "release-manager"):
        out[role] = token(ctx, role)
    return out


@pytest.mark.sqlite_run_only  # HTTP-level refusals: the database does not matter
def test_scoped_bound_and_weak_tokens_read_but_never_write(
    client: TestClient, ctx: AppContext, world: Json
) -> None:
    c = lenient(client)
    before = count(ctx, FeedImport)
    for name, tok in _narrow_tokens(ctx).items():
        for method, path in vuln_routes(client):
            resp = req(c, method, fill(path, world), tok, **WRITES.get((method, path), {}))
            if method == "GET" and name != "factory-bound":  # bound: its factory's work only
                assert resp.status_code == 200, (name, path, resp.text[:200])
                continue
            body = problem(resp, 403)
            if "@" in name and method != "GET":  # role yes, scope no: the change is tenant-wide
                assert body["type"].endswith("out-of-scope"), (name, path, body)
    assert count(ctx, FeedImport) == before
    finding = req(c, "GET", f"/findings/{world['finding_id']}", world["sec"]).json()
    assert finding["analysis"] == "in_triage"


# --- hostile input --------------------------------------------------------------------------


@pytest.mark.sqlite_run_only  # HTTP-level refusals: the database does not matter
def test_an_announced_oversized_upload_is_refused_before_reading(
    client: TestClient, ctx: AppContext, fleet: Json
) -> None:
    head = b'--b0\r\nContent-Disposition: form-data; name="file"; filename="a.json"\r\n\r\n{}\r\n'
    for tok in (fleet["sec"], None):
        headers = {
            "Content-Type": "multipart/form-data; boundary=b0",
            "Content-Length": str(256 * 1024 * 1024 + 1),  # announced; 70 bytes are sent
            **(auth(tok) if tok else {}),
        }
        resp = lenient(client).post(f"{PREFIX}/imports", content=head, headers=headers)
        if tok is None:
            problem(resp, 401)
        else:
            assert problem(resp, 413)["type"].endswith("payload-too-large")
    assert count(ctx, FeedImport) == 0


@pytest.mark.sqlite_run_only  # HTTP-level refusals: the database does not matter
def test_zip_and_gzip_bombs(client: TestClient, fleet: Json) -> None:
    sec, c = fleet["sec"], lenient(client)
    other = osv(id="GHSA-aaaa-bbbb-cccc", aliases=[])
    bomb = zip_of({"a.json": osv(), "bomb.json": b" " * 1_000_000, "b.json": other})
    r = upload_feed(client, sec, "PyPI-all.zip", bomb)
    assert (r["total"], r["added"], r["skipped"]) == (3, 2, 1), r
    assert "zip bomb" in r["problems"][0]["reason"]
    epss = gzip.compress(b"cve,epss,percentile\n" + b"0" * (129 * 1024 * 1024), 9)
    problem(post_feed(c, sec, "epss_scores-current.csv.gz", epss), 413)
    problem(post_feed(c, sec, "nvd.json.gz", gzip.compress(b"{" * 10) + b"junk", "nvd"), 400)


DEEP = b"[" * 10_000 + b"]" * 10_000
HOSTILE_FILES = {
    "non-utf8-kev": (KEVF, b'{"\xff\xfe":1}', "kev", 400),
    "non-utf8-nvd": ("nvd.json", b"\xff\xfe{}", "nvd", 400),
    "non-utf8-osv": ("x.json", b"\xff\xfe{}", "osv", 400),  # its one record unreadable
    "deep-nvd": ("nvd.json", DEEP, "nvd", 400),
    "deep-kev": ("k.json", b'{"vulnerabilities":' + DEEP + b"}", "kev", 400),
    "deep-osv": ("x.json", DEEP, "osv", 400),
    "epss-no-header": ("epss.csv", b"\x00\x01\x02", "epss", 400),
    "kind-mismatch": ("nvd.json", osv(), "kev", 400),
    "not-a-zip": ("all.zip", b"PK\x03\x04junk", "osv", 400),
    "empty": ("x.json", b"", None, 400),
    "zip-empty-detected": ("all.zip", zip_of({}), None, 400),
    "zip-no-members": ("all.zip", zip_of({}), "osv", 400),
    "zip-no-json-members": ("all.zip", zip_of({"README.txt": b"hi", "x/": b""}), "osv", 400),
}


@pytest.mark.sqlite_run_only  # HTTP-level refusals: the database does not matter
@pytest.mark.parametrize(
    "case",
    list(HOSTILE_FILES),
)
def test_hostile_feed_files_are_4xx_or_skipped(
    client: TestClient, ctx: AppContext, fleet: Json, case: str
) -> None:
    name, body, kind, status = HOSTILE_FILES[case]
    resp = post_feed(lenient(client), fleet["sec"], name, body, kind)
    if status == 201:
        assert resp.status_code == 201, resp.text
        assert (resp.json()["skipped"], resp.json()["added"]) == (1, 0)
    else:
        problem(resp, status)
        assert count(ctx, FeedImport) == 0


BAD_IDS = [1e309, -1, 2**64, "x" * 129, None, ["CVE-1"], " ", ""]
MANY = "GHSA-many-many-many"
ALIASES = [f"CVE-2020-{i:05}" for i in range(10_000)]


def test_hostile_records_are_skipped_one_by_one_or_bounded(
    client: TestClient, ctx: AppContext, fleet: Json
) -> None:
    sec = fleet["sec"]
    members = {f"m{i}.json": osv(id=v) for i, v in enumerate(BAD_IDS)} | {"ok.json": osv()}
    r = upload_feed(client, sec, "all.zip", zip_of(members))
    assert (r["added"], r["skipped"]) == (1, len(BAD_IDS)), r["problems"]
    # 10,000 aliases, 100,000 references: stored within limits.
    upload_feed(client, sec, "m.json", osv(id=MANY, aliases=ALIASES))
    [f] = [f for f in req(client, "GET", "/findings", sec).json()["items"] if f["advisory"] == MANY]
    assert len(f["aliases"]) <= 100
    nvd = json.loads(js(NVD_OPENSSL))
    refs_in = [{"url": f"https://e.x/{i}"} for i in range(100_000)]
    nvd["vulnerabilities"][0]["cve"]["references"] = refs_in
    assert upload_feed(client, sec, "nvd.json", js(nvd))["added"] == 1
    with ctx.db.read() as s:
        refs = s.scalar(select(Advisory.references).where(Advisory.advisory_id == OPENSSL_CVE))
    assert refs is not None and len(json.loads(refs)) == _store.MAX_REFERENCES
    # A KEV file listing the same CVE twice: one entry, one case.
    twice = upload_feed(client, sec, KEVF, js(kev(OPENSSL_CVE, OPENSSL_CVE)))
    assert (twice["total"], twice["added"]) == (2, 1)
    assert len(req(client, "GET", "/cases", sec).json()["items"]) == 1


def test_alias_rows_are_bounded(client: TestClient, ctx: AppContext, fleet: Json) -> None:
    upload_feed(client, fleet["sec"], "m.json", osv(id=MANY, aliases=ALIASES))
    assert count(ctx, AdvisoryAlias) <= 100


def test_a_nul_in_an_advisory_id_skips_that_record(client: TestClient, fleet: Json) -> None:
    members = {"nul.json": osv(id="GHSA-nul\x00"), "ok.json": osv(id="GHSA-okok-okok-okok")}
    resp = post_feed(lenient(client), fleet["sec"], "all.zip", zip_of(members))
    assert resp.status_code == 201, resp.text
    assert (resp.json()["added"], resp.json()["skipped"]) == (1, 1)


NAMES = ["../../etc/x.json", "..\\..\\x.json", "a\x00b.json", "/", "é" * 300]


@pytest.mark.sqlite_run_only  # HTTP-level refusals: the database does not matter
@pytest.mark.parametrize("filename", NAMES)
def test_upload_filenames_never_escape_or_break(
    client: TestClient, ctx: AppContext, fleet: Json, filename: str
) -> None:
    resp = post_feed(lenient(client), fleet["sec"], filename, osv(), "osv")
    assert resp.status_code == 201, resp.text
    name = resp.json()["name"]
    assert "/" not in name and "\x00" not in name and len(name) <= 200, name
    assert not (ctx.settings.home.parent / "etc").exists()


def test_sbom_with_a_10_kb_purl_and_escaped_cpes_is_indexed_and_its_vex_valid(
    client: TestClient, fleet: Json
) -> None:
    doc = json.loads(sbom("3.0.11", "2.30.0"))
    lib = {"type": "library", "version": "3.0.11"}
    escaped = r"cpe:2.3:a:open\:ssl:open\!ssl\*:3.0.11:*:*:*:*:*:*:*"
    doc["components"] += [
        {**lib, "bom-ref": "long", "name": "long", "purl": "pkg:pypi/" + "a" * 10_240 + "@1"},
        {**lib, "bom-ref": "esc", "name": "esc", "cpe": escaped},
        {**lib, "bom-ref": "bad", "name": "bad", "cpe": "cpe:2.3:" + "\\" * 500},
    ]
    rid = release(client, fleet["rm"], "1.0.5", js(doc))
    upload_feed(client, fleet["sec"], "nvd.json", js(NVD_OPENSSL))
    vex = req(client, "GET", f"/releases/{rid}/vex", fleet["sec"])
    assert vex.status_code == 200 and "openssl" in vex.text
    assert JsonStrictValidator(SchemaVersion.V1_5).validate_str(vex.text) is None


PATH_IDS = ["-1", "0", str(2**63), str(2**64), "1e309", "nan", "%00", "1.5"]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


CURSORS = ["!!!", "é", b64(b"not json"), b64(b'["nan", 1]'), b64(b'["inf", 1]'),
           b64(b'["-Infinity", 1]'), b64(b'["1e309", 1]'), b64(b'["1", 18446744073709551616]'),
           b64(b'["1", -1]'), b64(b"[1, 1]"), b64(b'["1", true]'), b64(b"[" * 300)]  # fmt: skip


@pytest.mark.sqlite_run_only  # HTTP-level refusals: the database does not matter
def test_out_of_range_ids_and_forged_cursors_are_4xx(
    client: TestClient, ctx: AppContext, world: Json
) -> None:
    c, sec = lenient(client), world["sec"]
    for method, path in vuln_routes(client):
        for bad in PATH_IDS if "{" in path else ():
            url = re.sub(r"\{\w+_id\}", bad, path).replace("{kind}", "final")
            resp = req(c, method, url, sec, **WRITES.get((method, path), {}))
            assert 400 <= resp.status_code < 500, (url, resp.status_code, resp.text[:200])
            assert resp.headers["content-type"].startswith(PROBLEM), url
    triage = f"/findings/{world['finding_id']}/triage"
    for body in ({"fix_release_id": 2**64}, {"fix_release_id": -1}, {"exploited": "maybe"}):
        problem(req(c, "POST", triage, sec, json=body), 422)
    problem(req(c, "POST", "/cases", sec, json={"vulnerability": GHSA, "incident_id": 2**64}), 422)
    headers = {**auth(sec), "content-type": "application/json"}
    problem(c.put(f"{PREFIX}/policy", content=b'{"epss_high": NaN}', headers=headers), 422)
    for lst in ("findings", "imports", "reviews", "cases"):
        for cur in CURSORS:
            problem(req(c, "GET", f"/{lst}", sec, params={"cursor": cur}), 400)
        problem(req(c, "GET", f"/{lst}", sec, params={"cursor": "A" * 10_000}), 422)


@pytest.mark.sqlite_run_only  # HTTP-level refusals: the database does not matter
def test_field_limits_and_state_checks(client: TestClient, world: Json) -> None:
    c, sec, case = lenient(client), world["sec"], world["case_id"]
    triage = f"/findings/{world['finding_id']}/triage"
    problem(req(c, "POST", triage, sec, json={"detail": "x" * 4001}), 422)
    assert req(c, "POST", triage, sec, json={"detail": "x" * 4000}).status_code == 200
    submit = f"/cases/{case}/reports/early-warning"
    problem(req(c, "POST", submit, sec, json={"reference": "r" * 201}), 422)
    problem(req(c, "POST", submit, sec, json={"reference": " " * 200}), 400)
    problem(req(c, "POST", "/cases", sec, json={"vulnerability": "CVE-1999-0001"}), 404)
    problem(req(c, "POST", "/cases", sec, json={"vulnerability": "v" * 129}), 422)
    for kind, status in (("interim", 422), ("FINAL", 422), ("final%00", 422), ("../final", 404)):
        problem(req(c, "GET", f"/cases/{case}/reports/{kind}", sec), status)
        url = f"/cases/{case}/reports/{kind}"
        problem(req(c, "POST", url, sec, json={"reference": "r"}), status)
    problem(req(c, "POST", f"/cases/{case}/reports/final", sec, json={"reference": "r"}), 409)
    got = req(c, "GET", f"/cases/{case}", sec).json()
    assert got["state"] == "open" and got["submitted"] == {}


# --- floods ---------------------------------------------------------------------------------


@pytest.mark.parametrize("distinct", [False, True], ids=["same", "distinct"])
def test_fifty_refused_imports_leave_a_handful_of_audit_rows(
    client: TestClient, ctx: AppContext, fleet: Json, distinct: bool
) -> None:
    c, before = lenient(client), refused_rows(ctx)
    auditor = token(ctx, "auditor")
    for i in range(50):
        name = f"junk-{i}.json" if distinct else "junk.json"
        problem(post_feed(c, fleet["sec"], name, b"{not json", "nvd"), 400)
        problem(post_feed(c, auditor, name, b"{}", "nvd"), 403)
    assert refused_rows(ctx) - before <= 6
    ctx.flush_refusals(everything=True)
    with ctx.db.read() as s:
        rows = s.scalars(select(AuditEntry.details).where(AuditEntry.outcome == "refused"))
        total = sum(json.loads(d or "{}").get("count", 1) for d in rows)
    # Every 400 is counted. Role refusals (403) are not audited at all: the
    # app-wide Authorize dependency records nothing, here as on every route.
    assert total == 50


# Refused writes whose audit subject is caller text: a case's vulnerability,
# or ids (finding, case) that do not exist. Each distinct subject is a new
# refusal key, so each refusal is one audit row.
SUBJECTS: dict[str, Callable[[int], tuple[str, Json]]] = {
    "case-vulnerability": lambda i: ("/cases", {"vulnerability": f"CVE-2099-{i}"}),
    "triage-finding-id": lambda i: (f"/findings/{10_000 + i}/triage", {"exploited": True}),
    "submit-case-id": lambda i: (f"/cases/{10_000 + i}/reports/final", {"reference": "r"}),
}


@pytest.mark.parametrize("case", SUBJECTS)
def test_fifty_refused_writes_with_distinct_subjects_leave_a_handful_of_audit_rows(
    client: TestClient, ctx: AppContext, fleet: Json, case: str
) -> None:
    c, before = lenient(client), refused_rows(ctx)
    for i in range(50):
        url, body = SUBJECTS[case](i)
        problem(req(c, "POST", url, fleet["sec"], json=body), 404)
    assert refused_rows(ctx) - before <= 6


# --- never a half-imported state ------------------------------------------------------------


MIDWAY = {"runtime": (RuntimeError("disk gone"), 500), "oserror": (OSError(5, "EIO"), 500),
          "refused": (PayloadTooLargeError("too big"), 413)}  # fmt: skip


@pytest.mark.parametrize("case", MIDWAY)
def test_an_import_failing_midway_leaves_nothing_behind(
    client: TestClient, ctx: AppContext, fleet: Json, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    error, status = MIDWAY[case]
    real, calls = _store.store_advisories, [0]

    def flaky(*args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise error
        real(*args, **kwargs)

    monkeypatch.setattr(imports, "BATCH", 1)
    monkeypatch.setattr(_store, "store_advisories", flaky)
    members = {f"{x}.json": osv(id=f"GHSA-{x * 4}-{x * 4}-{x * 4}") for x in "abc"}
    resp = post_feed(lenient(client), fleet["sec"], "all.zip", zip_of(members))
    assert resp.status_code == status and calls[0] == 2, resp.text
    assert (count(ctx, Advisory), count(ctx, Finding), count(ctx, FeedImport)) == (0, 0, 0)
    ok = count(ctx, AuditEntry, AuditEntry.action == "vulns.import", AuditEntry.outcome == "ok")
    assert ok == 0


# --- the CLI --------------------------------------------------------------------------------


def _cli_input(tmp_path: Path, case: str) -> list[str]:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README.md").write_text("no feeds here")
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    names = {"missing": "missing.json", "empty-dir": "empty", "bad": "bad.json"}
    names["fifo"] = "fifo.json"
    return ["vulns", "import", str(tmp_path / names[case])]


@pytest.mark.sqlite_run_only  # HTTP-level refusals: the database does not matter
@pytest.mark.parametrize("case", ["missing", "empty-dir", "bad"])
def test_cli_import_of_bad_paths_is_one_error(ctx: AppContext, tmp_path: Path, case: str) -> None:
    argv = ["--home", str(ctx.settings.home), *_cli_input(tmp_path, case)]
    result = CliRunner().invoke(cli, argv)
    assert isinstance(result.exception, FleetwardError), repr(result.exception)
    assert "Traceback" not in result.output
    assert count(ctx, FeedImport) == 0


@pytest.mark.sqlite_run_only  # HTTP-level refusals: the database does not matter
def test_cli_import_of_a_fifo_is_refused_at_once(ctx: AppContext, tmp_path: Path) -> None:
    argv = ["--home", str(ctx.settings.home), *_cli_input(tmp_path, "fifo")]
    code = "from fleetward.cli.main import main; main()"
    try:
        run = subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=8,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("blocked on the FIFO")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr


# --- the schema on PostgreSQL ---------------------------------------------------------------


def test_the_vulns_migration_s_boolean_defaults_are_valid_on_postgresql() -> None:
    """``BOOLEAN DEFAULT 0`` is an error on PostgreSQL (the migration aborts)."""
    path = Path(store.__file__).parent / "migrations/versions/0011_vulnerability_operations.py"
    spec = importlib.util.spec_from_file_location("m0011", path)
    assert spec is not None and spec.loader is not None
    module: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.op = mock.MagicMock()
    module.upgrade()
    pg = postgresql.dialect()  # type: ignore[no-untyped-call]
    defaults: dict[str, str] = {}
    for call in module.op.create_table.call_args_list:
        for col in call.args[1:]:
            default: Any = getattr(col, "server_default", None)
            if isinstance(col, sa.Column) and isinstance(col.type, sa.Boolean) and default:
                defaults[f"{call.args[0]}.{col.name}"] = str(default.arg.compile(dialect=pg))
    assert defaults and set(defaults.values()) <= {"false", "true"}, defaults
