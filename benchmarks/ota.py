"""OTA: per-device update checks, campaign planning at 1,000,000 devices, waves with a bad release.

Set-up: a fresh installation and ``fleetward serve`` (1 worker) on
127.0.0.1. Products and releases go through the REST API (multipart upload,
then approval by a release-manager token), except the planning product of
(b), made with the service calls while the server is stopped.

Measured:

(a) one device's update check with a **fresh stock** ``tuf.ngclient.Updater``
    over HTTP: construct (bootstrap root), ``refresh()``,
    ``get_targetinfo()``, ``download_target()`` of a ``--artifact-kib``
    artifact; ``--checks`` times with an empty metadata directory (a device's
    first check) and with the metadata the previous check left (a device's
    periodic check), with 1 release and with ``--releases`` releases in the
    product role. The ceiling of each kind, measured in the same run: the
    same GETs with plain urllib3 (p50), plus the signature verifications one
    check does (counted by wrapping ``SSlibKey.verify_signature``) times one
    P-256 ``public_key.verify``, plus SHA-256 of the artifact and of the
    signed metadata payloads;
(b) planning a campaign over ``--plan-devices`` active devices of one
    product: the devices are **bulk-inserted** into ``devices`` (SQLAlchemy
    Core ``insert``, not enrolled, not timed), then
    ``campaigns.create_campaign`` (cohort query, label filter, keyed-hash
    ordering, the ``campaign_devices`` rows, commit) is timed, with SQLite's
    own executemany time from cursor events, and ``rollout.plan_waves``
    alone. The ceiling: the SQL any plan of that cohort needs, in SQLAlchemy
    Core on one connection (the cohort SELECT, one INSERT row per device
    into a scratch copy of ``campaign_devices`` with its keys and indexes,
    COMMIT). cProfile (rolled back) when over 3 ceilings or with
    ``--profile``;
(c) a campaign with default waves (1/10/50/100 %) and the default gate over
    ``--fleet`` simulated devices and a **bad** release (its image fails the
    health check, so each device that installs it boots it
    ``DEFAULT_BOOT_ATTEMPTS`` times and falls back): every device is the real
    agent code (a fresh stock Updater per offer, ``agent.ota.install`` into
    ``Slots``, the boot loop, then ``campaigns.report``) in
    ``--device-threads`` threads; this process calls ``campaigns.step`` every
    campaign driver round (its default interval unless ``--step-interval``)
    until the campaign halts. Figures: devices that staged the bad image
    before the halt and in all, time to halt. Then the bad campaign is
    aborted and a good release goes over the same fleet to completion (time
    per wave, devices/s: ``drill.py``'s reference rate).

Targets, as ratios to ceilings of the same run: an update check p50 <= 2.0
of its ceiling (issue 5 set none: a regression floor at twice its closing
run's 1.03); ``create_campaign`` <= 2.2 of its ceiling (issue 5: 10 s at
1,000,000 devices, where its closing run took 8.70 s; that code measured
1.93 ceilings at that size when this ratio was set); the bad release
staged on no more devices than wave 1 (issue 5). Errors: a failed update
check (the run stops), a plan that misses devices, a bad release that does
not halt or reaches past wave 1, a good release that does not complete on
every device.

    .venv/bin/python benchmarks/ota.py           # issue 5 sizes (1,000,000 devices planned)
    .venv/bin/python benchmarks/ota.py --smoke   # CI size
"""

from __future__ import annotations

import cProfile
import hashlib
import io
import json
import os
import pstats
import queue
import shutil
import signal
import ssl
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import urllib3
from _harness import (
    Bench,
    Row,
    Server,
    free_port,
    given,
    log,
    new_installation,
    rate,
)
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from securesystemslib.signer import Signature, SSlibKey
from sqlalchemy import Table, event, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.sql.elements import quoted_name
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from fleetward.agent import HttpsFetcher
from fleetward.agent.ota import DEFAULT_BOOT_ATTEMPTS, Slots, install
from fleetward.identity.models import Device
from fleetward.ota import campaigns, repository, reviews, rollout
from fleetward.ota import service as ota
from fleetward.ota.blobs import LocalBlobStore
from fleetward.ota.models import Campaign, CampaignDevice
from fleetward.runtime.context import AppContext
from fleetward.runtime.workers import CampaignDriver
from fleetward.store import utcnow
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal
from fleetward.trustmap import review as trustmap_review

# Targets: ratios to ceilings of the same run (see the module docstring).
TARGET_CHECK = 2.0
TARGET_CHECK_SOURCE = "regression floor: twice issue 5's closing ratio 1.03"
# Issue 5 asked for 10 s at 1,000,000 devices; its closing run took 8.70 s. The
# same code measured 1.93 ceilings at that size (19.5 s over a 10.1 s ceiling on
# a loaded machine), so 10 s is about 2.2 ceilings.
TARGET_PLAN = 2.2
TARGET_PLAN_SOURCE = "issue 5: 10 s at 1M devices, where 8.70 s measured 1.93 ceilings"
TARGET_BAD = 1.0
TARGET_BAD_SOURCE = "issue 5: no more devices than the first wave"
SMOKE = {
    "checks": 5,
    "releases": 3,
    "artifact_kib": 256,
    "plan_devices": 5000,
    "fleet": 100,
    "fleet_artifact_kib": 16,
    "ceiling_seconds": 0.3,
}
TENANT = "default"
HARDWARE = "board-a"
LABELS = json.dumps({"hardware": HARDWARE})
BROKEN = b"BROKEN"  # the simulated health check fails on images holding this
SBOM = json.dumps(
    {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "components": [{"name": "openssl", "version": "3.0.19"}, {"name": "busybox"}],
    }
).encode()
PRINCIPAL = Principal(tenant_id=1, tenant_name=TENANT, role="release-manager", actor="bench")


def measurements(image: bytes) -> dict[str, str]:
    """Reference measurements whose application stage is ``image``'s hash."""
    return {
        "bootloader": hashlib.sha256(b"bootloader-v1").hexdigest(),
        "kernel": hashlib.sha256(b"kernel-v1").hexdigest(),
        "application": hashlib.sha256(image).hexdigest(),
    }


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank below), in the values' unit."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def image_of(size: int, tag: bytes) -> bytes:
    """``size`` bytes starting with ``tag`` (random after it: distinct content)."""
    return (tag + os.urandom(size))[:size]


# --------------------------------------------------------------------------- REST


class Api:
    """The release manager's REST calls."""

    def __init__(self, base: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=120
        )

    def product(self, name: str, threshold: int = 1) -> None:
        resp = self.client.post(f"/api/v1/ota/products/{name}", json={"threshold": threshold})
        if resp.status_code != 201:
            raise RuntimeError(f"product {name}: {resp.status_code} {resp.text[:300]}")

    def release(self, product: str, version: str, image: bytes, filename: str = "fw.bin") -> int:
        """Upload and approve; returns the (deployable) release id."""
        resp = self.client.post(
            "/api/v1/releases",
            data={
                "product": product,
                "version": version,
                "hardware": HARDWARE,
                "measurements": json.dumps(measurements(image)),
            },
            files={
                "artifact": (filename, image, "application/octet-stream"),
                "sbom": ("sbom.json", SBOM, "application/json"),
            },
        )
        if resp.status_code != 201:
            raise RuntimeError(f"upload {product} {version}: {resp.status_code} {resp.text[:300]}")
        rid = int(resp.json()["id"])
        resp = self.client.post(f"/api/v1/releases/{rid}/approvals")
        if resp.status_code != 200 or resp.json()["state"] != "deployable":
            raise RuntimeError(f"approve {rid}: {resp.status_code} {resp.text[:300]}")
        return rid

    def close(self) -> None:
        self.client.close()


def release_manager_token(ctx: AppContext) -> str:
    """A release-manager operator token of the default tenant."""
    with ctx.db.session() as s:
        tenant = tenancy.get_tenant_by_name(s, TENANT)
        _, token = tenancy.create_token(
            s, tenant=tenant, name="bench-rm", role="release-manager", actor="bench"
        )
    return token


def new_updater(base: str, directory: Path, root: bytes, tls: ssl.SSLContext) -> Updater:
    """A stock python-tuf client whose metadata and targets live in ``directory``,
    fetching from the device plane (HTTPS, the service CA) as the agent does."""
    return Updater(
        metadata_dir=str(directory),
        metadata_base_url=f"{base}/tuf/{TENANT}/metadata/",
        target_dir=str(directory / "targets"),
        target_base_url=f"{base}/tuf/{TENANT}/targets/",
        bootstrap=root,
        fetcher=HttpsFetcher(tls),
    )


# --------------------------------------------------------------------------- (a) checks


@dataclass
class Counts:
    """What one update check did, counted in-process."""

    verifications: int = 0
    verified_bytes: int = 0
    requests: int = 0
    received_bytes: int = 0
    urls: list[str] = field(default_factory=list)


@contextmanager
def counting() -> Iterator[Counts]:
    """Count signature verifications and HTTP fetches of the stock TUF client."""
    counts = Counts()
    verify = SSlibKey.verify_signature
    fetch = FetcherInterface.fetch

    def counted_verify(self: SSlibKey, signature: Signature, data: bytes) -> None:
        counts.verifications += 1
        counts.verified_bytes += len(data)
        verify(self, signature, data)

    def counted_chunks(chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            counts.received_bytes += len(chunk)
            yield chunk

    def counted_fetch(self: FetcherInterface, url: str) -> Iterator[bytes]:
        counts.requests += 1
        counts.urls.append(url)
        return counted_chunks(fetch(self, url))

    SSlibKey.verify_signature = counted_verify  # type: ignore[method-assign]
    FetcherInterface.fetch = counted_fetch  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        SSlibKey.verify_signature = verify  # type: ignore[method-assign]
        FetcherInterface.fetch = fetch  # type: ignore[method-assign]


@dataclass
class Checks:
    """Timings of ``--checks`` update checks of one kind."""

    label: str
    total: list[float] = field(default_factory=list)
    construct: list[float] = field(default_factory=list)
    refresh: list[float] = field(default_factory=list)
    targetinfo: list[float] = field(default_factory=list)
    download: list[float] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    plain_get: list[float] = field(default_factory=list)  # the same URLs without TUF
    server_cpu_s: float = 0.0  # the server's CPU over the timed checks

    def ms(self, values: list[float], p: float) -> float:
        return 1000 * percentile(values, p)


def one_check(
    base: str,
    root: bytes,
    directory: Path,
    target: str,
    into: Checks | None,
    tls: ssl.SSLContext,
) -> None:
    """Construct a fresh Updater over ``directory``, refresh, look up and download ``target``."""
    t0 = time.perf_counter()
    updater = new_updater(base, directory, root, tls)
    t1 = time.perf_counter()
    updater.refresh()
    t2 = time.perf_counter()
    info = updater.get_targetinfo(target)
    t3 = time.perf_counter()
    if info is None:
        raise RuntimeError(f"{target} is not in the signed targets")
    path = updater.download_target(info)
    t4 = time.perf_counter()
    if into is not None:
        into.construct.append(t1 - t0)
        into.refresh.append(t2 - t1)
        into.targetinfo.append(t3 - t2)
        into.download.append(t4 - t3)
        into.total.append(t4 - t0)
    os.unlink(path)


def run_checks(
    server: Server, root: bytes, work: Path, target: str, n: int, label: str
) -> tuple[Checks, Checks]:
    """``n`` cold checks (empty metadata directory each) and ``n`` warm ones (one directory)."""
    cold, warm = Checks(f"{label}, empty metadata dir"), Checks(f"{label}, metadata cached")
    base, tls = server.device_base, server.tls()
    work.mkdir(parents=True)
    # One counted (untimed) check of each kind, after a warm-up of the server's paths.
    one_check(base, root, work / "warmup", target, None, tls)
    with counting() as cold.counts:
        one_check(base, root, work / "counted-cold", target, None, tls)
    warm_dir = work / "warm"
    one_check(base, root, warm_dir, target, None, tls)
    with counting() as warm.counts:
        one_check(base, root, warm_dir, target, None, tls)
    cpu = server.cpu_seconds()
    for i in range(n):
        directory = work / f"cold-{i}"
        directory.mkdir()
        one_check(base, root, directory, target, cold, tls)
        shutil.rmtree(directory)
    cold.server_cpu_s, cpu = server.cpu_seconds() - cpu, server.cpu_seconds()
    for _ in range(n):
        one_check(base, root, warm_dir, target, warm, tls)
    warm.server_cpu_s = server.cpu_seconds() - cpu
    shutil.rmtree(work)
    for c in (cold, warm):
        c.plain_get = plain_gets(c.counts.urls, n, tls)
    return cold, warm


def plain_gets(urls: list[str], n: int, tls: ssl.SSLContext) -> list[float]:
    """``n`` times: a new connection pool (as each Updater makes) GETs ``urls``; no TUF."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with urllib3.PoolManager(ssl_context=tls) as pool:
            for url in urls:
                pool.request("GET", url, preload_content=True)
        times.append(time.perf_counter() - t0)
    return times


@dataclass
class Ceiling:
    """Raw costs measured in this process (one core)."""

    verify_per_s: float
    sha256_bytes_per_s: float

    def seconds(self, counts: Counts, artifact: int) -> float:
        """Signature verifications + SHA-256 of the artifact and the signed payloads."""
        hashed = artifact + counts.verified_bytes
        return counts.verifications / self.verify_per_s + hashed / self.sha256_bytes_per_s


def measure_ceiling(seconds: float) -> Ceiling:
    """One P-256 ``public_key.verify`` of a short message; SHA-256 throughput on 1 MiB."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    message = os.urandom(64)  # the payload's hashing is counted apart (SHA-256 rate)
    signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
    verify = rate(
        lambda _: public.verify(signature, message, ec.ECDSA(hashes.SHA256())), seconds=seconds
    )
    blob = os.urandom(1 << 20)
    sha = rate(lambda _: hashlib.sha256(blob).digest(), seconds=seconds)
    return Ceiling(verify_per_s=verify, sha256_bytes_per_s=sha * len(blob))


# --------------------------------------------------------------------------- (b) planning


def insert_devices(
    ctx: AppContext, *, prefix: str, n: int, product: str, chunk: int = 50_000
) -> float:
    """Bulk-insert ``n`` active devices of ``product`` (Core insert, not enrolled)."""
    now = utcnow()
    start = time.perf_counter()
    for lo in range(0, n, chunk):
        rows = [
            {
                "tenant_id": 1,
                "device_id": f"{prefix}-{i:07d}",
                "product": product,
                "labels": LABELS,
                "state": "active",
                "created_at": now,
                "updated_at": now,
            }
            for i in range(lo, min(n, lo + chunk))
        ]
        with ctx.db.session() as s:
            s.execute(insert(Device), rows)
        if lo and lo % (chunk * 4) == 0:
            log.print(f"  {lo:,} devices inserted")
    return time.perf_counter() - start


def service_release(ctx: AppContext, product: str, version: str, image: bytes) -> int:
    """Product role + deployable release through the service calls (no server)."""
    with ctx.db.session() as s:
        repository.ensure_product(s, ctx.pki.keyring, PRINCIPAL, product)
    blobs = LocalBlobStore(ctx.settings.home / "blobs")
    with ctx.db.session() as s:
        r = ota.create_release(
            s,
            ctx.pki.keyring,
            blobs,
            PRINCIPAL,
            product=product,
            version=version,
            filename="fw.bin",
            artifact=io.BytesIO(image),
            hardware=[HARDWARE],
            sbom=SBOM,
            measurements=measurements(image),
        )
        rid = r.id
    with ctx.db.session() as s:
        if ota.approve_release(s, ctx.pki.keyring, PRINCIPAL, rid).state != "deployable":
            raise RuntimeError(f"release {rid} did not become deployable")
    return rid


@contextmanager
def cursor_time(engine: Engine) -> Iterator[dict[str, list[float]]]:
    """SQLite's time inside cursor.execute/executemany, per statement kind: [calls, rows, s]."""
    stats: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    started: list[float] = []

    def before(*_: Any) -> None:
        started.append(time.perf_counter())

    def after(
        _conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, many: bool
    ) -> None:
        elapsed = time.perf_counter() - started.pop()
        key = " ".join(statement.split()[:3])
        entry = stats[key]
        entry[0] += 1
        entry[1] += len(parameters) if many else 1
        entry[2] += elapsed

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield stats
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


@dataclass
class Planning:
    """Figures of (b)."""

    devices: int
    insert_s: float
    create_s: float = 0.0
    commit_s: float = 0.0
    sqlite_insert_s: float = 0.0
    select_s: float = 0.0
    raw_select_s: float = 0.0
    raw_insert_s: float = 0.0
    plan_waves_s: float = 0.0
    campaign_rows: int = 0
    wave_sizes: list[int] = field(default_factory=list)
    sql: dict[str, list[float]] = field(default_factory=dict)
    profile: list[dict[str, Any]] = field(default_factory=list)

    @property
    def raw_s(self) -> float:
        """The ceiling: the cohort SELECT and the rows' INSERT + COMMIT in Core, no ORM."""
        return self.raw_select_s + self.raw_insert_s


class _RollbackError(Exception):
    """Raised to roll a profiled transaction back."""


def raw_planning(ctx: AppContext, plan: Planning, *, product: str, campaign_id: int) -> None:
    """The SQL any plan of this cohort needs, in SQLAlchemy Core on one connection: the
    cohort SELECT, then one INSERT row per device into a scratch copy of
    ``campaign_devices`` (same columns, keys and indexes) and COMMIT."""
    # In the models' own metadata, so its foreign keys resolve; removed again below.
    metadata = CampaignDevice.metadata
    table = cast(Table, CampaignDevice.__table__)
    scratch = table.to_metadata(metadata, name="bench_plan_scratch")
    for index in scratch.indexes:
        index.name = quoted_name(f"bench_{index.name}", None)  # index names are per database
    try:
        _raw_planning(ctx, plan, scratch, product=product, campaign_id=campaign_id)
    finally:
        metadata.remove(scratch)


def _raw_planning(
    ctx: AppContext, plan: Planning, scratch: Table, *, product: str, campaign_id: int
) -> None:
    with ctx.db.engine.connect() as conn:
        scratch.create(conn)
        conn.commit()
        t0 = time.perf_counter()
        rows = conn.execute(
            select(Device.id, Device.device_id, Device.labels).where(
                Device.tenant_id == 1, Device.product == product, Device.state == "active"
            )
        ).all()
        t1 = time.perf_counter()
        for lo in range(0, len(rows), 10_000):
            conn.execute(
                scratch.insert(),
                [
                    {
                        "campaign_id": campaign_id,
                        "device_pk": pk,
                        "wave": i % 4,
                        "status": "planned",
                    }
                    for i, (pk, _d, _l) in enumerate(rows[lo : lo + 10_000], start=lo)
                ],
            )
        conn.commit()
        t2 = time.perf_counter()
        scratch.drop(conn)
        conn.commit()
    plan.raw_select_s, plan.raw_insert_s = t1 - t0, t2 - t1


def planning_phase(ctx: AppContext, n: int, profile: str, profile_top: int) -> Planning:
    """(b): ``n`` devices: create_campaign timed, plan_waves alone, the raw SQL ceiling."""
    product = "mass"
    rid = service_release(ctx, product, "1.0.0", image_of(4096, b"mass"))
    log.print(f"(b) bulk-inserting {n:,} active devices of product {product!r} (not timed)")
    plan = Planning(devices=n, insert_s=insert_devices(ctx, prefix="mass", n=n, product=product))
    log.print(f"  {plan.insert_s:.1f} s")

    log.print("(b) campaigns.create_campaign (timed, committed)")
    with cursor_time(ctx.db.engine) as sql:
        t0 = time.perf_counter()
        with ctx.db.session() as s:
            campaign = campaigns.create_campaign(s, PRINCIPAL, release_id=rid)
            t1 = time.perf_counter()
            cid, seed = campaign.id, campaign.seed
        t2 = time.perf_counter()
    plan.create_s, plan.commit_s = t2 - t0, t2 - t1
    plan.sql = {k: [int(v[0]), int(v[1]), round(v[2], 3)] for k, v in sql.items()}
    plan.sqlite_insert_s = sum(v[2] for k, v in sql.items() if "campaign_devices" in k)
    log.print(f"  {plan.create_s:.2f} s")
    with ctx.db.read() as s:
        waves = s.execute(
            select(CampaignDevice.wave).where(CampaignDevice.campaign_id == cid)
        ).scalars()
        sizes: dict[int, int] = defaultdict(int)
        for wave in waves:
            sizes[wave] += 1
    plan.campaign_rows = sum(sizes.values())
    plan.wave_sizes = [sizes[w] for w in sorted(sizes)]

    log.print("(b) the ceiling (cohort SELECT + rows INSERT in Core), plan_waves alone")
    raw_planning(ctx, plan, product=product, campaign_id=cid)
    with ctx.db.read() as s:
        t0 = time.perf_counter()
        ids = list(
            s.execute(
                select(Device.device_id).where(
                    Device.tenant_id == 1, Device.product == product, Device.state == "active"
                )
            ).scalars()
        )
        plan.select_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rollout.plan_waves(seed, ids, rollout.DEFAULT_WAVES)
    plan.plan_waves_s = time.perf_counter() - t0
    del ids

    if profile == "always" or (profile == "auto" and plan.create_s > 3 * plan.raw_s):
        log.print("(b) cProfile of create_campaign (rolled back)")
        profiler = cProfile.Profile()
        try:
            with ctx.db.session() as s:
                profiler.enable()
                campaigns.create_campaign(s, PRINCIPAL, release_id=rid)
                s.flush()
                profiler.disable()
                raise _RollbackError
        except _RollbackError:
            pass
        stats = pstats.Stats(profiler, stream=sys.stderr)
        stats.sort_stats("tottime").print_stats(profile_top)
        raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
        ranked = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:profile_top]
        plan.profile = [
            {
                "function": f"{Path(file).name}:{line}({name})",
                "calls": nc,
                "tottime_s": round(tt, 3),
                "cumtime_s": round(ct, 3),
            }
            for (file, line, name), (_cc, nc, tt, ct, _callers) in ranked
        ]
    return plan


# --------------------------------------------------------------------------- (c) campaigns


@dataclass
class DeviceResult:
    """One device's handling of one offer."""

    device_id: str
    campaign: int
    status: str
    version: str
    staged_at: float | None
    reported_at: float
    counted: bool
    error: str = ""


class Fleet:
    """Simulated devices running the agent's update code, in worker threads."""

    def __init__(
        self,
        base: str,
        ctx: AppContext,
        root: bytes,
        directory: Path,
        ids: list[str],
        threads: int,
        health_check: Callable[[Path], bool],
        tls: ssl.SSLContext,
    ) -> None:
        self.base, self.ctx, self.root, self.directory = base, ctx, root, directory
        self.tls = tls
        self.health_check = health_check
        self.slots = {d: Slots(directory / d, initial_version="1.0.0") for d in ids}
        self.results: list[DeviceResult] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[campaigns.Offer, int] | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def send(self, offers: list[campaigns.Offer], campaign_id: int) -> None:
        for offer in offers:
            self._queue.put((offer, campaign_id))

    def drain(self) -> None:
        self._queue.join()

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=60)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._handle(*item)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _handle(self, offer: campaigns.Offer, campaign_id: int) -> None:
        device = offer.device_id
        slots = self.slots[device]
        staged_at, error = None, ""
        try:
            updater = new_updater(self.base, self.directory / device / "tuf", self.root, self.tls)
            install(updater, slots, target_path=offer.payload["target"], hardware=HARDWARE)
            staged_at = time.perf_counter()
            while slots.pending is not None:
                slots.boot(self.health_check)
        except Exception as exc:  # a refused or failed update is reported as failed
            error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            # The agent frees the downloaded artifact once it is in a slot.
            shutil.rmtree(self.directory / device / "tuf" / "targets", ignore_errors=True)
        version = slots.installed_version
        status = "succeeded" if not error and version == offer.payload["version"] else "failed"
        with self.ctx.db.session() as s:
            counted = campaigns.report(
                s,
                tenant_id=1,
                device_id=device,
                campaign_id=campaign_id,
                status=status,
                version=version,
            )
        result = DeviceResult(
            device, campaign_id, status, version, staged_at, time.perf_counter(), counted, error
        )
        with self._lock:
            self.results.append(result)

    def staged(self, marker: bytes) -> set[str]:
        """Devices whose B slot holds an image containing ``marker`` (ever staged it)."""
        return {
            d
            for d, s in self.slots.items()
            if s.image("b").exists() and marker in s.image("b").read_bytes()
        }


@dataclass
class Drive:
    """One campaign driven by ``campaigns.step`` until it stops running."""

    campaign: int
    waves: dict[str, int]  # device_id -> wave
    sizes: list[int]
    started: float = 0.0
    wave_start: dict[int, float] = field(default_factory=dict)
    ended: float = 0.0  # the step that left "running"
    drained: float = 0.0  # every offered device reported
    state: str = ""
    reason: str = ""
    steps: int = 0
    server_cpu_s: float = 0.0  # from the first step until every offered device reported
    client_cpu_s: float = 0.0  # this process: devices, reports and the driver


def plan_campaign(ctx: AppContext, release_id: int) -> Drive:
    """Create a campaign with default waves and gate; read back its wave of each device."""
    with ctx.db.session() as s:
        cid = campaigns.create_campaign(s, PRINCIPAL, release_id=release_id).id
    with ctx.db.read() as s:
        rows = s.execute(
            select(Device.device_id, CampaignDevice.wave)
            .join(CampaignDevice, CampaignDevice.device_pk == Device.id)
            .where(CampaignDevice.campaign_id == cid)
        ).all()
    waves = {str(d): int(w) for d, w in rows}
    sizes = [0] * (max(waves.values()) + 1)
    for w in waves.values():
        sizes[w] += 1
    return Drive(campaign=cid, waves=waves, sizes=sizes)


def process_cpu() -> float:
    """User + system CPU of this process so far."""
    t = os.times()
    return t.user + t.system


SECURITY = Principal(tenant_id=1, tenant_name=TENANT, role="security", actor="bench-security")


def pass_review_gate(ctx: AppContext, campaign_id: int) -> None:
    """The controls review after the first wave, as the trust map worker runs
    it; the benchmark registers no trust map, so it fails and a security
    operator waives it (printed; its time counts in the campaign's)."""
    with ctx.db.session() as s:
        c = s.get(Campaign, campaign_id)
        assert c is not None
        r = trustmap_review.review_campaign(s, c)
        if r.outcome == "failed":
            failed = [i["name"] for i in json.loads(r.items) if not i["ok"]]
            trustmap_review.waive(
                s, SECURITY, campaign_id, reason="benchmark: no trust map registered"
            )
            log.print(f"  controls review failed ({', '.join(failed)}): waived by security")


def drive(
    ctx: AppContext,
    server: Server,
    fleet: Fleet,
    run: Drive,
    interval: float,
    timeout: float,
) -> None:
    """Call ``campaigns.step`` every ``interval`` s, sending offers, until not running."""
    server_cpu, client_cpu = server.cpu_seconds(), process_cpu()
    run.started = time.perf_counter()
    deadline = run.started + timeout
    wave = -1
    while True:
        with ctx.db.session() as s:
            offers = campaigns.step(s, run.campaign)
            c = s.get(Campaign, run.campaign)
            assert c is not None
            state, current, reason = c.state, c.current_wave, c.reason
        run.steps += 1
        now = time.perf_counter()
        if current != wave:
            wave = current
            run.wave_start[wave] = now
            log.print(f"  wave {wave + 1} started: {len(offers)} offers")
        fleet.send(offers, run.campaign)
        if state == "running" and reason == reviews.WAITING:
            pass_review_gate(ctx, run.campaign)
        if state != "running":
            run.ended, run.state, run.reason = now, state, reason
            log.print(f"  campaign {state} after {now - run.started:.2f} s: {reason}")
            break
        if now > deadline:
            run.ended, run.state, run.reason = now, "timeout", f"still running after {timeout} s"
            break
        time.sleep(interval)
    fleet.drain()
    run.drained = time.perf_counter()
    run.server_cpu_s = server.cpu_seconds() - server_cpu
    run.client_cpu_s = process_cpu() - client_cpu


@dataclass
class WaveFigures:
    """One wave of the good campaign."""

    wave: int
    size: int
    gate_s: float  # wave start to the step that passed its gate
    all_reported_s: float  # wave start to its last device's report
    per_s: float


def wave_figures(run: Drive, results: list[DeviceResult]) -> list[WaveFigures]:
    last_report: dict[int, float] = defaultdict(float)
    for r in results:
        if r.campaign == run.campaign:
            w = run.waves[r.device_id]
            last_report[w] = max(last_report[w], r.reported_at)
    figures = []
    for w, size in enumerate(run.sizes):
        if w not in run.wave_start:
            continue
        start = run.wave_start[w]
        passed = run.wave_start.get(w + 1, run.ended)
        done = last_report.get(w, start) - start
        figures.append(WaveFigures(w + 1, size, passed - start, done, size / done if done else 0))
    return figures


@dataclass
class FleetFigures:
    """Figures of (c)."""

    devices: int
    threads: int
    interval: float
    artifact: int
    bad: Drive | None = None
    wave1: int = 0
    bad_staged_before_halt: int = 0
    bad_staged_total: int = 0
    bad_staged_outside_wave1: int = 0
    bad_reports: int = 0
    bad_fell_back: int = 0
    later_waves_untouched: bool = False
    fleet_on_old_version: int = 0
    fallbacks_on_abort: int = 0
    bad_errors: list[str] = field(default_factory=list)
    good: Drive | None = None
    good_waves: list[WaveFigures] = field(default_factory=list)
    good_installed: int = 0
    good_errors: list[str] = field(default_factory=list)
    device_update_ms_p50: float = 0.0


def fleet_phase(
    ctx: AppContext,
    api: Api,
    server: Server,
    tmp: Path,
    *,
    n: int,
    threads: int,
    interval: float,
    artifact: int,
    timeout: float,
    bad: bool,
    good: bool,
) -> FleetFigures:
    """(c): a bad release halts in its first wave; then a good one over the same fleet."""
    product = "sim"
    figures = FleetFigures(devices=n, threads=threads, interval=interval, artifact=artifact)
    api.product(product)
    log.print(f"(c) {n:,} simulated devices (Core insert + A/B slots on disk, not timed)")
    insert_devices(ctx, prefix="sim", n=n, product=product)
    with ctx.db.read() as s:
        root = repository.trusted_root(s, TENANT)
    ids = [f"sim-{i:07d}" for i in range(n)]
    fleet = Fleet(
        server.device_base,
        ctx,
        root,
        tmp / "fleet",
        ids,
        threads,
        health_check=lambda image: BROKEN not in image.read_bytes(),
        tls=server.tls(),
    )
    try:
        if bad:
            bad_rid = api.release(product, "1.0.1", image_of(artifact, BROKEN))
            bad_run = plan_campaign(ctx, bad_rid)
            figures.bad, figures.wave1 = bad_run, bad_run.sizes[0]
            log.print(f"(c) bad release 1.0.1: waves {bad_run.sizes}, step every {interval:g} s")
            drive(ctx, server, fleet, bad_run, interval, timeout)
            mine = [r for r in fleet.results if r.campaign == bad_run.campaign]
            staged = [r for r in mine if r.staged_at is not None]
            staged_at = [r.staged_at for r in mine if r.staged_at is not None]
            figures.bad_staged_before_halt = sum(1 for t in staged_at if t <= bad_run.ended)
            on_disk = fleet.staged(BROKEN)
            figures.bad_staged_total = len(on_disk)
            figures.bad_staged_outside_wave1 = sum(1 for d in on_disk if bad_run.waves[d] != 0)
            figures.bad_reports = sum(1 for r in mine if r.counted)
            figures.bad_fell_back = sum(1 for r in staged if r.version == "1.0.0")
            figures.bad_errors = sorted({r.error for r in mine if r.error})[:5]
            figures.fleet_on_old_version = sum(
                1 for s in fleet.slots.values() if s.installed_version == "1.0.0"
            )
            with ctx.db.read() as s:
                later = set(
                    s.execute(
                        select(CampaignDevice.status).where(
                            CampaignDevice.campaign_id == bad_run.campaign, CampaignDevice.wave > 0
                        )
                    ).scalars()
                )
            figures.later_waves_untouched = later == {"planned"}
            with ctx.db.session() as s:
                figures.fallbacks_on_abort = len(
                    campaigns.abort(s, ctx.pki.keyring, PRINCIPAL, bad_run.campaign)
                )
        if good:
            good_rid = api.release(product, "1.1.0", image_of(artifact, b"GOOD"))
            run = plan_campaign(ctx, good_rid)
            figures.good = run
            log.print(f"(c) good release 1.1.0: waves {run.sizes}")
            drive(ctx, server, fleet, run, interval, timeout)
            figures.good_waves = wave_figures(run, fleet.results)
            figures.good_installed = sum(
                1 for s in fleet.slots.values() if s.installed_version == "1.1.0"
            )
            figures.good_errors = sorted(
                {r.error for r in fleet.results if r.campaign == run.campaign and r.error}
            )[:5]
    finally:
        fleet.stop()
    return figures


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    bench = Bench("ota", __doc__ or "")
    p = bench.parser
    p.add_argument("--checks", type=int, default=200, help="timed update checks per kind")
    p.add_argument("--artifact-kib", type=int, default=1024, help="artifact of (a), KiB")
    p.add_argument(
        "--releases", type=int, default=100, help="releases in the product role, 2nd run of (a)"
    )
    p.add_argument("--plan-devices", type=int, default=1_000_000, help="cohort of (b)")
    p.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="cProfile create_campaign (auto: when over 3x its ceiling)",
    )
    p.add_argument("--profile-top", type=int, default=15, help="profile lines shown")
    p.add_argument("--fleet", type=int, default=2000, help="simulated devices of (c)")
    p.add_argument("--fleet-artifact-kib", type=int, default=64, help="artifact of (c), KiB")
    p.add_argument("--device-threads", type=int, default=4, help="device worker threads")
    p.add_argument(
        "--step-interval",
        type=float,
        default=None,
        help="campaigns.step period, s (default: the campaign driver's)",
    )
    p.add_argument("--campaign-timeout", type=float, default=1800, help="per campaign, s")
    p.add_argument("--ceiling-seconds", type=float, default=2.0, help="time per ceiling")
    p.add_argument(
        "--skip",
        default="",
        help="parts to skip, comma-separated: checks, plan, fleet, bad (the bad release of "
        "(c)), good (the good release of (c))",
    )
    args = bench.parse(argv, smoke=SMOKE)
    if args.releases < 2 or args.fleet < 4 or args.checks < 1 or args.plan_devices < 1:
        p.error(
            "--releases >= 2, --fleet >= 4 (one device per wave), --checks and --plan-devices >= 1"
        )
    # SIGTERM unwinds like Ctrl-C: the server is stopped and the temp dir removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return bench.run(lambda: run(bench, args))


def run(bench: Bench, args: Any) -> None:
    skip = {p.strip() for p in args.skip.split(",") if p.strip()}
    artifact = args.artifact_kib * 1024
    bench.title = "OTA: update checks, campaign planning, waves"

    checks: list[tuple[Checks, Checks]] = []
    metadata_sizes: dict[str, int] = {}
    fleet: FleetFigures | None = None
    planning: Planning | None = None
    with tempfile.TemporaryDirectory(prefix="fw-bench-ota-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        log.print(f"initialising a fleetward home in {tmp}")
        ctx, _admin = new_installation(tmp, port=port)
        # The product steps campaigns in the campaign driver's rounds: same period here.
        driver = CampaignDriver(ctx, **given(interval=args.step_interval))
        step_interval = bench.interval(
            "campaign step (campaign driver round)",
            driver.interval,
            flag="--step-interval",
            override=args.step_interval,
        )
        driver.stop()  # never started: only its interval was wanted
        token = release_manager_token(ctx)
        server = bench.server(home=tmp / "home", port=port)
        with server:
            api = Api(server.base, token)
            if "checks" not in skip:
                api.product("thermo")
                api.release("thermo", "1.0.0", image_of(artifact, b"thermo-1.0.0"))
                with ctx.db.read() as s:
                    root = repository.trusted_root(s, TENANT)
                log.print(f"(a) {args.checks} update checks x 2, 1 release")
                checks.append(
                    run_checks(
                        server,
                        root,
                        tmp / "checks1",
                        "thermo/1.0.0/fw.bin",
                        args.checks,
                        "1 release",
                    )
                )
                metadata_sizes["product role, 1 release"] = len(
                    httpx.get(
                        f"{server.device_base}/tuf/default/metadata/2.product-thermo.json",
                        verify=server.tls(),
                    ).content
                )
                log.print(
                    f"(a) {args.releases - 2} small releases + 1.1.0 ({args.artifact_kib} KiB)"
                )
                for i in range(1, args.releases - 1):
                    api.release("thermo", f"1.0.{i}", image_of(4096, f"filler-{i}".encode()))
                api.release("thermo", "1.1.0", image_of(artifact, b"thermo-1.1.0"))
                metadata_sizes[f"product role, {args.releases} releases"] = len(
                    httpx.get(
                        f"{server.device_base}/tuf/default/metadata/"
                        f"{args.releases + 1}.product-thermo.json",
                        verify=server.tls(),
                    ).content
                )
                log.print(f"(a) {args.checks} update checks x 2, {args.releases} releases")
                checks.append(
                    run_checks(
                        server,
                        root,
                        tmp / "checks2",
                        "thermo/1.1.0/fw.bin",
                        args.checks,
                        f"{args.releases} releases",
                    )
                )
                # A check that fails raises: every timed check that returned succeeded.
                bench.count("(a) update checks", 0)
            if "fleet" not in skip:
                fleet = fleet_phase(
                    ctx,
                    api,
                    server,
                    tmp,
                    n=args.fleet,
                    threads=args.device_threads,
                    interval=step_interval,
                    artifact=args.fleet_artifact_kib * 1024,
                    timeout=args.campaign_timeout,
                    bad="bad" not in skip,
                    good="good" not in skip,
                )
            api.close()
        log.print("ceilings: P-256 verify, SHA-256 (in-process, one core)")
        ceiling = measure_ceiling(args.ceiling_seconds)
        if "plan" not in skip:
            planning = planning_phase(ctx, args.plan_devices, args.profile, args.profile_top)
        ctx.db.dispose()
    report_checks(bench, checks, ceiling, artifact, metadata_sizes)
    if planning is not None:
        report_planning(bench, planning)
    if fleet is not None:
        report_fleet(bench, fleet)
    bench.notes.append(
        "Server: `fleetward serve` (uvicorn, 1 worker) in a subprocess on 127.0.0.1, SQLite "
        "WAL; the TUF clients, devices and campaign stepping run in this process (2 cores)."
    )


def report_checks(
    bench: Bench,
    checks: list[tuple[Checks, Checks]],
    ceiling: Ceiling,
    artifact: int,
    metadata_sizes: dict[str, int],
) -> None:
    bench.rows += [
        Row("P-256 public_key.verify, 1 core", f"{1e6 / ceiling.verify_per_s:.0f} µs"),
        Row("SHA-256, 1 core", f"{ceiling.sha256_bytes_per_s / 2**20:,.0f} MiB/s"),
    ]
    bench.figures["verify_us"] = round(1e6 / ceiling.verify_per_s, 2)
    bench.figures["sha256_mib_per_s"] = round(ceiling.sha256_bytes_per_s / 2**20, 1)
    check_json = []
    for i, c in enumerate(c for pair in checks for c in pair):
        crypto = ceiling.seconds(c.counts, artifact)
        p50, p99 = percentile(c.total, 50), percentile(c.total, 99)
        get50 = percentile(c.plain_get, 50)
        key = f"check_floor_{i + 1}"
        bench.ceiling(
            key,
            get50 + crypto,
            unit="s",
            label=f"{c.label}: the same GETs without TUF (p50) + signature checks and hashing",
        )
        bench.rows += [
            bench.ceiling_row(key, f"{1000 * (get50 + crypto):.1f} ms"),
            bench.target(
                f"check_{i + 1}",
                label=f"(a) update check p50, {c.label}",
                value=p50,
                ceiling=key,
                op="<=",
                goal=TARGET_CHECK,
                source=TARGET_CHECK_SOURCE,
                shown=f"{1000 * p50:.1f} ms",
            ),
            Row("    p99", f"{1000 * p99:.1f} ms"),
        ]
        bench.notes.append(
            f"(a) {c.label}: {c.counts.verifications} verifications "
            f"({c.counts.verified_bytes / 1024:.0f} KiB signed payloads, "
            f"{1000 * crypto:.2f} ms of crypto), {c.counts.requests} HTTP requests "
            f"({1000 * get50:.1f} ms without TUF), {c.counts.received_bytes / 1024:.0f} KiB "
            f"received, server CPU {1000 * c.server_cpu_s / len(c.total):.1f} ms/check; "
            f"p50 construct {c.ms(c.construct, 50):.1f} / refresh "
            f"{c.ms(c.refresh, 50):.1f} / get_targetinfo {c.ms(c.targetinfo, 50):.1f} / "
            f"download {c.ms(c.download, 50):.1f} ms"
        )
        check_json.append(
            {
                "label": c.label,
                "checks": len(c.total),
                "p50_ms": round(1000 * p50, 2),
                "p99_ms": round(1000 * p99, 2),
                "max_ms": round(1000 * max(c.total), 2),
                "crypto_ceiling_ms": round(1000 * crypto, 3),
                "plain_get_p50_ms": round(1000 * get50, 2),
                "p50_construct_ms": round(c.ms(c.construct, 50), 2),
                "p50_refresh_ms": round(c.ms(c.refresh, 50), 2),
                "p50_targetinfo_ms": round(c.ms(c.targetinfo, 50), 2),
                "p50_download_ms": round(c.ms(c.download, 50), 2),
                "server_cpu_ms_per_check": round(1000 * c.server_cpu_s / len(c.total), 2),
                "verifications": c.counts.verifications,
                "verified_bytes": c.counts.verified_bytes,
                "http_requests": c.counts.requests,
                "received_bytes": c.counts.received_bytes,
            }
        )
    if checks:
        bench.figures["update_checks"] = check_json
        bench.figures["artifact_bytes"] = artifact
        bench.figures["metadata_bytes"] = metadata_sizes
        bench.notes.append(
            "(a) ceiling = the check's own GETs with plain urllib3 (a new pool each, as each "
            "Updater makes) + verifications x one P-256 verify + SHA-256 of the artifact and "
            "of the signed payloads. "
            + ", ".join(f"{k}: {v / 1024:.1f} KiB" for k, v in metadata_sizes.items())
        )


def report_planning(bench: Bench, p: Planning) -> None:
    bench.check(
        "(b) campaign rows",
        p.campaign_rows == p.devices,
        f"{p.campaign_rows:,} campaign rows for {p.devices:,} devices",
    )
    bench.ceiling(
        "raw_plan",
        p.raw_s,
        unit="s",
        label=f"cohort SELECT + {p.devices:,} rows INSERT + COMMIT, Core",
    )
    bench.rows += [
        bench.ceiling_row("raw_plan", f"{p.raw_s:.2f} s"),
        Row(
            "    of which the SELECT / the INSERTs",
            f"{p.raw_select_s:.2f} / {p.raw_insert_s:.2f} s",
        ),
        bench.target(
            "plan",
            label=f"(b) create_campaign over {p.devices:,} devices (incl. commit)",
            value=p.create_s,
            ceiling="raw_plan",
            op="<=",
            goal=TARGET_PLAN,
            source=TARGET_PLAN_SOURCE,
            shown=f"{p.create_s:.2f} s",
        ),
        Row("    of which SQLite executemany of campaign_devices", f"{p.sqlite_insert_s:.2f} s"),
        Row("    of which the commit", f"{p.commit_s:.2f} s"),
        Row(
            "(b) rollout.plan_waves alone",
            f"{p.plan_waves_s:.2f} s",
            f"{p.plan_waves_s / p.raw_s:.2f}",
        ),
        Row("(b) the cohort's device ids through the ORM session", f"{p.select_s:.2f} s"),
    ]
    bench.notes.append(
        f"(b) the {p.devices:,} devices were BULK-INSERTED into `devices` (SQLAlchemy "
        f"Core insert, {p.insert_s:.1f} s, not timed), not enrolled; campaign_devices rows "
        f"{p.campaign_rows:,}, waves {p.wave_sizes}."
    )
    if p.profile:
        bench.notes.append("(b) cProfile of create_campaign (rolled back), by own time:")
        bench.notes += [
            f"      {e['tottime_s']:7.2f} s own, {e['cumtime_s']:7.2f} s cum, "
            f"{e['calls']:>9,} calls  {e['function']}"
            for e in p.profile[:10]
        ]
    bench.figures["planning"] = {
        "devices": p.devices,
        "devices_bulk_inserted": True,
        "bulk_insert_s": round(p.insert_s, 2),
        "create_campaign_s": round(p.create_s, 3),
        "plan_waves_s": round(p.plan_waves_s, 3),
        "select_s": round(p.select_s, 3),
        "raw_select_s": round(p.raw_select_s, 3),
        "raw_insert_s": round(p.raw_insert_s, 3),
        "sqlite_insert_s": round(p.sqlite_insert_s, 3),
        "commit_s": round(p.commit_s, 3),
        "campaign_rows": p.campaign_rows,
        "wave_sizes": p.wave_sizes,
        "sql": p.sql,
        "profile": p.profile,
    }


def report_fleet(bench: Bench, f: FleetFigures) -> None:
    bench.notes.append(
        f"(c) {f.devices:,} simulated devices (Core insert, A/B slots), {f.threads} device "
        f"threads, campaigns.step every {f.interval:g} s, default waves "
        f"{list(rollout.DEFAULT_WAVES)}, default gate {rollout.GatePolicy()}; artifact "
        f"{f.artifact // 1024} KiB."
    )
    if f.bad is not None:
        bad = f.bad
        halt_s = bad.ended - bad.started
        bench.check("(c) bad release halts", bad.state == "halted", f"{bad.state}: {bad.reason}")
        bench.count(
            "(c) bad release stays in wave 1",
            f.bad_staged_outside_wave1 + (0 if f.later_waves_untouched else 1),
            first=f"{f.bad_staged_outside_wave1} staged outside wave 1; later waves "
            f"untouched: {f.later_waves_untouched}",
        )
        bench.ceiling("wave1", f.wave1, unit="devices", label="wave 1 of the bad release")
        bench.rows += [
            bench.ceiling_row("wave1", f"{f.wave1:,}"),
            Row(
                "(c) bad release: devices staged before the halt",
                f"{f.bad_staged_before_halt:,}",
                f"{f.bad_staged_before_halt / f.wave1:.2f}",
            ),
            bench.target(
                "bad_staged",
                label="(c) bad release: devices staged in all (offers already sent finish)",
                value=f.bad_staged_total,
                ceiling="wave1",
                op="<=",
                goal=TARGET_BAD,
                source=TARGET_BAD_SOURCE,
                shown=f"{f.bad_staged_total:,}",
            ),
            Row(
                "    time to halt (wave 1 start -> halting step)", f"{halt_s:.2f} s", "", bad.state
            ),
        ]
        bench.notes.append(
            f"(c) bad: waves {bad.sizes}; {bad.reason}; {f.bad_reports} reports counted, "
            f"{f.bad_fell_back} fell back after {DEFAULT_BOOT_ATTEMPTS} boots, devices on "
            f"1.0.0: {f.fleet_on_old_version:,}/{f.devices:,}; abort returned "
            f"{f.fallbacks_on_abort} fallbacks"
            + (f"; errors: {f.bad_errors}" if f.bad_errors else "")
        )
        bench.figures["bad_campaign"] = {
            "devices": f.devices,
            "wave_sizes": bad.sizes,
            "wave1": f.wave1,
            "staged_before_halt": f.bad_staged_before_halt,
            "staged_total": f.bad_staged_total,
            "staged_outside_wave1": f.bad_staged_outside_wave1,
            "later_waves_untouched": f.later_waves_untouched,
            "reports": f.bad_reports,
            "fell_back": f.bad_fell_back,
            "devices_on_old_version": f.fleet_on_old_version,
            "time_to_halt_s": round(halt_s, 3),
            "state": bad.state,
            "reason": bad.reason,
            "fallbacks_on_abort": f.fallbacks_on_abort,
            "errors": f.bad_errors,
        }
    if f.good is not None:
        good = f.good
        total_s = good.drained - good.started
        bench.check(
            "(c) good release completes",
            good.state == "completed" and f.good_installed == f.devices,
            f"{good.state}; {f.good_installed:,}/{f.devices:,} run 1.1.0; {f.good_errors}",
        )
        for w in f.good_waves:
            bench.rows.append(
                Row(
                    f"(c) good release, wave {w.wave} ({w.size:,} devices): gate "
                    f"{w.gate_s:.2f} s, all reported {w.all_reported_s:.2f} s",
                    f"{w.per_s:.1f} dev/s",
                )
            )
        bench.rows.append(
            Row(
                f"(c) good release: whole campaign ({total_s:.1f} s, {good.state})",
                f"{f.devices / total_s:.1f} dev/s",
            )
        )
        bench.notes.append(
            f"(c) good: server {good.server_cpu_s / total_s:.2f} cores "
            f"({1000 * good.server_cpu_s / f.devices:.1f} ms CPU per device), this process "
            f"{good.client_cpu_s / total_s:.2f} cores "
            f"({1000 * good.client_cpu_s / f.devices:.1f} ms per device); a wave's gate passes "
            "at 95% succeeded, so the next wave starts while the last 5% still report"
        )
        bench.figures["good_campaign"] = {
            "state": good.state,
            "total_s": round(total_s, 2),
            "devices_per_s": round(f.devices / total_s, 1),
            "installed": f.good_installed,
            "server_cpu_ms_per_device": round(1000 * good.server_cpu_s / f.devices, 2),
            "client_cpu_ms_per_device": round(1000 * good.client_cpu_s / f.devices, 2),
            "waves": [
                {
                    "wave": w.wave,
                    "size": w.size,
                    "gate_s": round(w.gate_s, 2),
                    "all_reported_s": round(w.all_reported_s, 2),
                    "devices_per_s": round(w.per_s, 1),
                }
                for w in f.good_waves
            ],
            "errors": f.good_errors,
        }


if __name__ == "__main__":
    sys.exit(main())
