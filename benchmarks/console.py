"""The console's posture page at fleet scale: GET / with 10,000 devices.

Issue 18 asks: "page load of the posture view with 10,000 devices under
1 s (server time, in a benchmark)".

Measured on a fresh installation (SQLite WAL by default, ``--database-url``
for another empty database):

(0) the fleet, not timed: ``--devices`` devices of one tenant bulk-inserted
    (SQLAlchemy Core, like ``ota.py``): mostly active, some quarantined,
    pending, revoked; key origins mixed; one good certificate row each
    (production or test, issued by the tenant's issuing CA of that
    environment; a few expiring within 30 days, a few expired); each live
    device's running firmware (``device_firmware``) over ``--releases``
    deployable releases made through the OTA service (most on the newest,
    the rest drifting, a few on a version no release has); two boot
    verdicts per live device (one older than 24 h, one within: mostly
    ``pass``, the devices of one old version ``fail``, the unknown version
    ``unknown-firmware``) and ``--events-per-device`` other events each;
    ``--alerts`` open alerts raised through detection; and a second tenant
    with a tenth as many devices and verdicts, which must never be counted;
(a) the page: a TestClient on the operator app (``create_app``, no runtime
    workers) signs in through ``/login`` with the tenant's admin token, so
    the real gate and session path runs; ``GET /`` is timed in this process
    (``time.perf_counter`` around the request: routing, the gate's session
    lookup, the aggregate reads, rendering) ``--repeats`` times after
    ``--warmup`` untimed ones; median and p95;
(b) ceiling: the same aggregate reads (``web.pages.posture.read_posture``)
    called directly in one read-only session, without HTTP, the gate or
    rendering, once after each page load of (a) (alternating, so the shared
    machine's load changes touch both alike); median.

Targets: page median <= 1.0 x 1 s (issue 18's goal itself is the
"ceiling"); page median / reads median printed beside it, with a regression
floor (twice the ratio measured when the benchmark was accepted).
Errors: a request that is not 200, a page whose device count is not the
tenant's, a figure of the other tenant on the page.

    .venv/bin/python benchmarks/console.py           # 10,000 devices
    .venv/bin/python benchmarks/console.py --smoke   # CI size
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import HOST, Bench, Row, log
from fastapi.testclient import TestClient
from sqlalchemy import insert, select

from fleetward import detection, identity
from fleetward.api.app import create_app
from fleetward.config import Settings
from fleetward.identity.models import CertificateRecord, Device
from fleetward.ota import repository
from fleetward.ota import service as ota_service
from fleetward.ota.blobs import LocalBlobStore
from fleetward.ota.models import DeviceFirmware
from fleetward.runtime.context import AppContext
from fleetward.runtime.installation import initialise
from fleetward.runtime.stack import Stack
from fleetward.store import utcnow
from fleetward.telemetry.models import Event
from fleetward.tenancy import Principal
from fleetward.tenancy import service as tenancy
from fleetward.web.pages.posture import read_posture

GOAL_SECONDS = 1.0
GOAL_SOURCE = "issue 18: posture page with 10,000 devices under 1 s server time"
# page / reads: twice the 1.18 measured when this benchmark was accepted (10,000 devices).
RATIO_FLOOR = 2.4
RATIO_SOURCE = "regression floor: twice the page/reads ratio measured at acceptance (1.18)"
SMOKE = {"devices": 500, "repeats": 5, "warmup": 1, "alerts": 10, "events_per_device": 2}
PRODUCT = "gateway"
HARDWARE = "board-a"
ORIGIN = "http://testserver"  # the TestClient's origin (the login form checks it)
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_TOTAL = re.compile(r'id="devices-total">(\d+)<')
CHUNK = 5_000  # rows per Core insert


# --- the fleet (not timed) -------------------------------------------------------------------


def new_installation(tmp: Path, database_url: str | None) -> tuple[AppContext, str]:
    """A fresh home (as ``fleetward init``) on SQLite, or on ``database_url``."""
    settings = Settings(
        home=tmp / "home",
        database_url=database_url or f"sqlite:///{tmp / 'fw.db'}",
        public_url=f"https://{HOST}:8501",
        operator_port=8500,
        device_port=8501,
    )
    return initialise(settings, actor="bench")


def make_releases(ctx: AppContext, who: Principal, count: int) -> list[str]:
    """``count`` deployable releases of the product through the OTA service, oldest first."""
    with ctx.db.session() as s:
        repository.ensure_product(s, ctx.pki.keyring, who, PRODUCT)
    blobs = LocalBlobStore(ctx.settings.home / "blobs")
    versions = [f"1.{i}.0" for i in range(count)]
    for version in versions:
        image = f"firmware {version}".encode()
        meas = {
            "bootloader": hashlib.sha256(b"bootloader-v1").hexdigest(),
            "kernel": hashlib.sha256(b"kernel-v1").hexdigest(),
            "application": hashlib.sha256(image).hexdigest(),
        }
        sbom = json.dumps(
            {"bomFormat": "CycloneDX", "specVersion": "1.5", "components": []}
        ).encode()
        with ctx.db.session() as s:
            r = ota_service.create_release(
                s, ctx.pki.keyring, blobs, who, product=PRODUCT, version=version,
                filename="fw.bin", artifact=io.BytesIO(image), hardware=[HARDWARE],
                sbom=sbom, measurements=meas,
            )  # fmt: skip
            rid = r.id
        with ctx.db.session() as s:
            if ota_service.approve_release(s, ctx.pki.keyring, who, rid).state != "deployable":
                raise RuntimeError(f"release {version} did not become deployable")
    return versions


def _chunks(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]


def insert_rows(ctx: AppContext, table: Any, rows: list[dict[str, Any]]) -> None:
    for part in _chunks(rows):
        with ctx.db.session() as s:
            s.execute(insert(table), part)


def make_fleet(
    ctx: AppContext,
    *,
    tenant_id: int,
    prefix: str,
    n: int,
    versions: list[str],
    events_per_device: int,
    rng: random.Random,
    certificates: bool,
) -> dict[str, int]:
    """Bulk-insert one tenant's devices and what the posture reads about them."""
    now = utcnow()
    states = rng.choices(
        ("active", "quarantined", "pending", "revoked"), weights=(94, 3, 2, 1), k=n
    )
    origins = rng.choices(("hardware-attested", "software", None), weights=(70, 25, 5), k=n)
    insert_rows(
        ctx,
        Device,
        [
            {
                "tenant_id": tenant_id, "device_id": f"{prefix}-{i:06d}", "product": PRODUCT,
                "labels": "{}", "state": states[i], "key_origin": origins[i],
                "created_at": now, "updated_at": now,
            }
            for i in range(n)
        ],
    )  # fmt: skip
    with ctx.db.read() as s:
        pks = [
            int(pk)
            for pk in s.execute(
                select(Device.id).where(Device.tenant_id == tenant_id).order_by(Device.id)
            ).scalars()
        ]
    live = [pk for pk, st in zip(pks, states, strict=True) if st in ("active", "quarantined")]
    counts = {"devices": n, "live": len(live), "expiring": 0, "expired": 0}
    if certificates:
        with ctx.db.read() as s:
            cas = {
                env: identity.active_issuing_ca(s, tenant_id=tenant_id, environment=env).id
                for env in ("production", "test")
            }
        cert_rows = []
        for i, (pk, st) in enumerate(zip(pks, states, strict=True)):
            if st == "pending":
                continue
            env = "production" if i % 5 else "test"
            roll = rng.random()
            if roll < 0.05:
                not_after = now + dt.timedelta(days=rng.uniform(1, 29))
                counts["expiring"] += st in ("active", "quarantined")
            elif roll < 0.06:
                not_after = now - dt.timedelta(days=rng.uniform(1, 30))
                counts["expired"] += st in ("active", "quarantined")
            else:
                not_after = now + dt.timedelta(days=rng.uniform(31, 365))
            revoked = st == "revoked"
            cert_rows.append(
                {
                    "serial": format(tenant_id * 10**9 + i + 1, "x"), "tenant_id": tenant_id,
                    "device_pk": pk, "ca_id": cas[env], "environment": env,
                    "key_origin": origins[i], "fingerprint": f"{tenant_id:08d}{i:056d}",
                    "not_before": not_after - dt.timedelta(days=400), "not_after": not_after,
                    "status": "revoked" if revoked else "good",
                    "revoked_at": now if revoked else None,
                    "revocation_reason": "keyCompromise" if revoked else None,
                    "der": b"",
                }
            )  # fmt: skip
        insert_rows(ctx, CertificateRecord, cert_rows)
    newest, unknown = versions[-1], "0.9.0"
    bad = versions[0] if len(versions) > 1 else None
    running: dict[int, str] = {}
    for pk in live:
        roll = rng.random()
        if roll < 0.7:
            running[pk] = newest
        elif roll < 0.98:
            running[pk] = rng.choice(versions[:-1] or versions)
        else:
            running[pk] = unknown
    insert_rows(
        ctx,
        DeviceFirmware,
        [
            {"device_pk": pk, "tenant_id": tenant_id, "product": PRODUCT, "version": v,
             "reported_at": now}
            for pk, v in running.items()
        ],
    )  # fmt: skip
    events: list[dict[str, Any]] = []
    for pk, version in running.items():
        verdict = "unknown-firmware" if version == unknown else "pass"
        if version == bad and rng.random() < 0.3:
            verdict = "fail"
        for age, result in ((dt.timedelta(days=2), "pass"), (dt.timedelta(hours=1), verdict)):
            fields = {"verdict": result, "failed": ["secboot"] if result == "fail" else []}
            events.append(
                {
                    "tenant_id": tenant_id, "device_pk": pk, "type": "attestation.verdict",
                    "at": now - age - dt.timedelta(seconds=rng.uniform(0, 600)), "count": 1,
                    "fields": json.dumps({**fields, "swversion": version, "bootcount": 3}),
                }
            )  # fmt: skip
        for j in range(events_per_device):
            events.append(
                {
                    "tenant_id": tenant_id, "device_pk": pk, "type": "metric",
                    "at": now - dt.timedelta(minutes=j), "count": 1,
                    "fields": '{"temp":21.5,"hum":40}',
                }
            )  # fmt: skip
    insert_rows(ctx, Event, events)
    counts["events"] = len(events)
    return counts


def raise_alerts(ctx: AppContext, tenant_id: int, count: int, rng: random.Random) -> None:
    """``count`` open alerts through detection (as a detector would raise them)."""
    now = utcnow()
    with ctx.db.session() as s:
        for i in range(count):
            severity = rng.choice(("low", "medium", "high", "critical"))
            detection.raise_alert(
                s,
                detection.Finding(
                    tenant_id=tenant_id, kind="boot-integrity", key=f"device:bench-{i}",
                    severity=severity, subject=f"device:bench-{i}",
                    summary=f"benchmark alert {i}", evidence={},
                ),
                now=now,
            )  # fmt: skip


# --- the passes ------------------------------------------------------------------------------


def sign_in(client: TestClient, token: str) -> None:
    """Sign in through /login as a browser would (the session cookie stays in the client)."""
    form = client.get("/login")
    found = _CSRF.search(form.text)
    if form.status_code != 200 or found is None:
        raise RuntimeError(f"no sign-in form: {form.status_code}")
    done = client.post(
        "/login",
        data={"token": token, "csrf": found.group(1), "next": "/"},
        headers={"Origin": ORIGIN},
        follow_redirects=False,
    )
    if done.status_code != 303:
        raise RuntimeError(f"sign-in refused: {done.status_code} {done.text[:200]}")


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def one_page(bench: Bench, client: TestClient, *, devices: int) -> float:
    """(a): one GET / timed in process; the answer checked."""
    start = time.perf_counter()
    r = client.get("/")
    elapsed = time.perf_counter() - start
    found = _TOTAL.search(r.text)
    total = int(found.group(1)) if found else -1
    bench.check("page", r.status_code == 200, f"GET / answered {r.status_code}")
    bench.check("page", total == devices, f"the page counts {total} devices, not {devices}")
    return elapsed


def one_read(ctx: AppContext, who: Principal) -> tuple[float, dict[str, Any]]:
    """(b): the same aggregate reads, in one read-only session, no HTTP."""
    start = time.perf_counter()
    with ctx.db.read() as s:
        data = read_posture(s, who, now=utcnow())
    return time.perf_counter() - start, data


def measure(
    bench: Bench,
    ctx: AppContext,
    who: Principal,
    token: str,
    *,
    repeats: int,
    warmup: int,
    devices: int,
) -> tuple[list[float], list[float], dict[str, Any]]:
    """(a) and (b) alternating, so a change in the shared machine's load
    touches both alike; the first ``warmup`` of each are not kept."""
    page: list[float] = []
    reads: list[float] = []
    data: dict[str, Any] = {}
    with TestClient(create_app(ctx, runtime=Stack()), base_url=ORIGIN) as client:
        sign_in(client, token)
        for i in range(warmup + repeats):
            p = one_page(bench, client, devices=devices)
            r, data = one_read(ctx, who)
            if i >= warmup:
                page.append(p)
                reads.append(r)
        partial = client.get("/", headers={"X-Console-Partial": "1"})
        bench.check(
            "page",
            partial.status_code == 200 and "<html" not in partial.text,
            f"the partial answer: {partial.status_code}",
        )
    return page, reads, data


def main(argv: list[str] | None = None) -> int:
    bench = Bench("console", __doc__ or "")
    p = bench.parser
    p.add_argument("--devices", type=int, default=10_000, help="devices of the measured tenant")
    p.add_argument("--repeats", type=int, default=30, help="timed page loads (and read passes)")
    p.add_argument("--warmup", type=int, default=3, help="untimed page loads first")
    p.add_argument("--releases", type=int, default=4, help="deployable releases of the product")
    p.add_argument("--alerts", type=int, default=100, help="open alerts of the tenant")
    p.add_argument(
        "--events-per-device", type=int, default=10, help="other events per device besides verdicts"
    )
    p.add_argument("--seed", type=int, default=18)
    p.add_argument(
        "--database-url", default=None, help="an empty database (default: SQLite in the temp dir)"
    )
    args = bench.parse(argv, smoke=SMOKE)
    return bench.run(lambda: run(bench, args))


def run(bench: Bench, args: Any) -> None:
    bench.title = "Console posture page (issue 18)"
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="fw-console-") as tmp_name:
        ctx, token = new_installation(Path(tmp_name), args.database_url)
        db = ctx.db.engine.url.get_backend_name()
        with ctx.db.read() as s:
            who = tenancy.authenticate(s, token)
        log.print(f"(0) a fleet of {args.devices:,} devices, {args.releases} releases")
        t0 = time.perf_counter()
        versions = make_releases(ctx, who, max(1, args.releases))
        mine = make_fleet(
            ctx, tenant_id=who.tenant_id, prefix="d", n=args.devices, versions=versions,
            events_per_device=args.events_per_device, rng=rng, certificates=True,
        )  # fmt: skip
        with ctx.db.session() as s:
            other_id = tenancy.create_tenant(s, name="other", actor="bench").id
        theirs = make_fleet(
            ctx, tenant_id=other_id, prefix="o", n=max(1, args.devices // 10), versions=versions,
            events_per_device=0, rng=rng, certificates=False,
        )  # fmt: skip
        raise_alerts(ctx, who.tenant_id, args.alerts, rng)
        setup_s = time.perf_counter() - t0
        log.print(f"(a)+(b) GET / and read_posture x {args.repeats} each, alternating")
        page, reads, data = measure(
            bench, ctx, who, token, repeats=args.repeats, warmup=args.warmup, devices=args.devices
        )
        fleet = data.get("fleet")
        certs = data.get("certs")
        bench.check(
            "reads",
            fleet is not None and fleet.total == args.devices,
            f"read_posture counted {getattr(fleet, 'total', None)} devices",
        )
        bench.check(
            "reads",
            certs is not None
            and (certs.expiring, certs.expired) == (mine["expiring"], mine["expired"]),
            f"certificates expiring/expired {getattr(certs, 'expiring', None)}/"
            f"{getattr(certs, 'expired', None)}, inserted {mine['expiring']}/{mine['expired']}",
        )
        appraised = sum(c.devices for c in data.get("cohorts", [])) + data.get("cohorts_more", 0)
        bench.check(
            "reads",
            appraised == mine["live"] and data.get("running") == mine["live"],
            f"{appraised} devices appraised and {data.get('running')} running, {mine['live']} live",
        )
        ctx.db.dispose()
    page_med, page_p95 = statistics.median(page), p95(page)
    reads_med = statistics.median(reads)
    bench.ceiling("goal_s", GOAL_SECONDS, unit="s", label="issue 18's goal (1 s)")
    bench.ceiling("reads_s", reads_med, unit="s", label="the aggregate reads alone (median)")
    bench.rows += [
        Row(
            f"(0) setup (not timed): {args.devices:,} + {theirs['devices']:,} devices, "
            f"{mine['events'] + theirs['events']:,} events, {args.alerts} alerts",
            f"{setup_s:.1f} s",
        ),
        bench.target(
            "page_median_s",
            label=f"(a) GET / median of {args.repeats}, {args.devices:,} devices",
            value=page_med,
            ceiling="goal_s",
            op="<=",
            goal=1.0,
            source=GOAL_SOURCE,
            shown=f"{page_med * 1000:.1f} ms",
        ),
        Row(
            "    p95 (ratio: to the 1 s goal)",
            f"{page_p95 * 1000:.1f} ms",
            f"{page_p95 / GOAL_SECONDS:.3g}",
        ),
        Row("    fastest / slowest", f"{min(page) * 1000:.1f} / {max(page) * 1000:.1f} ms"),
        bench.target(
            "page_over_reads",
            label="(a) over (b): routing, gate, session, rendering on top of the reads",
            value=page_med,
            ceiling="reads_s",
            op="<=",
            goal=RATIO_FLOOR,
            source=RATIO_SOURCE,
            shown=f"{page_med * 1000:.1f} ms",
        ),
        bench.ceiling_row("reads_s", f"{reads_med * 1000:.1f} ms"),
        Row("    p95 of the reads", f"{p95(reads) * 1000:.1f} ms"),
    ]
    bench.notes += [
        f"database: {db}; the fleet is bulk-inserted (Core insert), releases and alerts go "
        "through the OTA service and detection.",
        "flags this run sets: TestClient on create_app(ctx, runtime=Stack()) (no runtime "
        "workers, so nothing else uses the CPU or the database while it is timed); "
        f"base_url {ORIGIN}; signed in through /login with the tenant's admin token.",
        "server time is time.perf_counter around client.get('/') in this process (the "
        "TestClient's in-memory transport adds well under a millisecond).",
        f"fleet: {mine['live']:,} live devices; {mine['expiring']} expiring within 30 days, "
        f"{mine['expired']} expired; a second tenant with {theirs['devices']:,} devices is "
        "never counted. No vulnerability findings, CRA cases or trust maps (their reads run, "
        "on empty tables).",
    ]
    bench.figures = {
        "devices": args.devices,
        "other_tenant_devices": theirs["devices"],
        "events": mine["events"] + theirs["events"],
        "setup_s": round(setup_s, 1),
        "page_ms": {
            "median": round(page_med * 1000, 2),
            "p95": round(page_p95 * 1000, 2),
            "min": round(min(page) * 1000, 2),
            "max": round(max(page) * 1000, 2),
            "repeats": len(page),
        },
        "reads_ms": {"median": round(reads_med * 1000, 2), "p95": round(p95(reads) * 1000, 2)},
        "page_over_reads": round(page_med / reads_med, 3) if reads_med else None,
        "database": db,
    }


if __name__ == "__main__":
    sys.exit(main())
