"""Vulnerability matching at fleet scale: 10,000 components x 200,000 OSV advisories.

Issue 16 asks: 10,000 components across 100 releases against at least
200,000 generated advisories in the OSV schema: matching time and peak
memory (goal: at most 10 s and 1 GB on this 2-core machine), beside a
brute-force baseline in the same run, and an incremental re-import of 1,000
changed advisories.

Measured on a fresh installation (SQLite WAL by default, ``--database-url``
for another empty database):

(0) generation, not timed: ``--advisories`` OSV 1.6 records, seeded, as an
    OSV ``all.zip`` (one ``<id>.json`` member each) across PyPI, npm, Maven,
    Go, Debian:12 and crates.io, over ``--packages`` package names (a tenth
    of them "hot", carrying half of the advisories); ranges with
    introduced/fixed, some last_affected, some ``versions[]`` lists, some
    with two ranges or two affected packages. A second zip holds the same
    records with ``--changed`` of them changed (later ``modified``, a
    different fixed version). ``--releases`` CycloneDX 1.5 SBOMs of
    ``--components`` components each, purls drawn from the same packages
    (15% hot), versions at random: most components hit 0-3 advisories, the
    hot ones many;
(a) the release rows are inserted with SQLAlchemy Core (the ota upload path
    signs artifacts: not what is measured here), then each is indexed with
    ``vulns.index_release`` (SBOM validation, parse, components stored);
(b) ``vulns.import_feed`` of the first zip (parse, digest, store, and the
    first matching of every advisory against the indexed components);
(c) **matching**: the findings are deleted and ``vulns.rematch_all`` runs
    over every release (the database join on package keys, every candidate
    pair decided by ``vulns.match``, every finding inserted, then the
    exposure refresh) -- the figure the 10 s goal is for -- with the peak
    RSS of the process during that pass (``VmHWM`` after resetting it
    through ``/proc/self/clear_refs``): the figure the 1 GB goal is for.
    Then once more with the findings in place (nothing to write);
(d) baselines, pure and in memory: ``feeds.iter_osv`` over the zip alone
    (the parse an import cannot avoid); ``match.match_components`` with an
    ``AdvisoryIndex`` of every affected entry (the key index without the
    database: the ceiling of (c)); ``match.brute_force`` (every component
    against every affected entry, no index) on a sample of the advisories,
    extrapolated linearly to all of them;
(e) incremental re-import: ``vulns.import_feed`` of the second zip; its
    counts must be 0 added / ``--changed`` updated / the rest unchanged,
    and the rematch of the changed advisories is timed inside it.

Targets (issue 16's absolute goals, so the "ceiling" is the goal itself):
matching <= 1.0 x 10 s, peak RSS <= 1.0 x 1024 MiB. The same-run baselines
of (d) are printed beside them as ratios. Errors: releases not indexed,
records skipped, unevaluable pairs, findings that differ from the pure
index's matches, brute-force matches that differ from the index's on the
sample, re-import counts that are not exactly the changes.

    .venv/bin/python benchmarks/vulns.py           # 200,000 advisories, 100 x 100 components
    .venv/bin/python benchmarks/vulns.py --smoke   # CI size
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import random
import resource
import sys
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _harness import HOST, Bench, Row, log
from packageurl import PackageURL
from sqlalchemy import delete, func, insert, select

from fleetward import vulns
from fleetward.config import Settings
from fleetward.ota.models import Release
from fleetward.runtime.installation import initialise
from fleetward.tenancy import service as tenancy_service
from fleetward.vulns import _store, feeds, imports
from fleetward.vulns import match as m
from fleetward.vulns.models import Finding, SbomComponent, SbomIndex
from fleetward.vulns.records import Advisory, AffectedPackage, Component

GOAL_SECONDS = 10.0
GOAL_RSS_MIB = 1024.0
GOAL_SOURCE = "issue 16: matching <= 10 s and <= 1 GB on this 2-core machine"
SMOKE = {
    "advisories": 2_000,
    "packages": 400,
    "releases": 10,
    "components": 20,
    "changed": 50,
    "brute_advisories": 2_000,
}

# (OSV ecosystem, purl type, purl namespace or None, range type, id prefix)
ECOSYSTEMS = (
    ("PyPI", "pypi", None, "ECOSYSTEM", "PYSEC-2024"),
    ("npm", "npm", None, "SEMVER", "GHSA-npm"),
    ("Maven", "maven", None, "ECOSYSTEM", "GHSA-mvn"),
    ("Go", "golang", None, "SEMVER", "GO-2024"),
    ("Debian:12", "deb", "debian", "ECOSYSTEM", "DEBIAN-CVE-2024"),
    ("crates.io", "cargo", None, "SEMVER", "RUSTSEC-2024"),
)
VECTORS = (
    "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
    "CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:U/C:L/I:L/A:N",
    "CVSS:3.1/AV:L/AC:H/PR:L/UI:N/S:U/C:H/I:N/A:N",
    "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:C/C:L/I:N/A:L",
)
VERSIONS = 1000  # ordinal o -> major o // 200, minor o // 10 % 20, patch o % 10
HOT_SHARE = 0.1  # of the packages: they carry half of the advisories
HOT_COMPONENTS = 0.15  # of the components, drawn from the hot packages


# --- generation (not timed) ------------------------------------------------------------------


def package_name(eco: int, i: int) -> str:
    """The package ``i`` as its ecosystem spells it (OSV's ``package.name``)."""
    return (
        f"pkg{i}-lib",
        f"@scope{i % 97}/lib{i}" if i % 2 else f"lib{i}-js",
        f"org.example{i % 53}:artifact{i}",
        f"github.com/org{i % 89}/mod{i}",
        f"libfoo{i}",
        f"crate{i}_rs",
    )[eco]


def version_text(eco: int, o: int, *, component: bool = False, rev: int = 1) -> str:
    """Version ordinal ``o`` as the ecosystem writes it (Go components carry a ``v``)."""
    text = f"{o // 200}.{o // 10 % 20}.{o % 10}"
    if eco == 4:
        return f"{text}-{rev}"
    if eco == 3 and component:
        return f"v{text}"
    return text


def purl_of(eco: int, name: str, version: str) -> str:
    """The component's purl, written by packageurl-python."""
    _, ptype, namespace, _, _ = ECOSYSTEMS[eco]
    if ptype == "npm" and name.startswith("@"):
        namespace, name = name.split("/", 1)
    elif ptype == "maven":
        namespace, name = name.split(":", 1)
    elif ptype == "golang":
        namespace, name = name.rsplit("/", 1)
    qualifiers = {"distro": "debian-12"} if ptype == "deb" else None
    return str(PackageURL(ptype, namespace, name, version, qualifiers).to_string())


class Packages:
    """``n`` packages spread over the ecosystems; the first tenth are hot."""

    def __init__(self, n: int) -> None:
        self.items = [(i % len(ECOSYSTEMS), package_name(i % len(ECOSYSTEMS), i)) for i in range(n)]
        self.hot = max(1, int(n * HOT_SHARE))

    def draw(self, rng: random.Random, hot_share: float) -> int:
        if rng.random() < hot_share:
            return rng.randrange(self.hot)
        return rng.randrange(self.hot, len(self.items))


def affected_entry(rng: random.Random, pkgs: Packages, p: int, bump: int = 0) -> dict[str, Any]:
    """One OSV ``affected[]`` entry; ``bump`` moves the fixed version (a changed record)."""
    eco, name = pkgs.items[p]
    ecosystem, _, _, range_type, _ = ECOSYSTEMS[eco]
    ranges = []
    for _ in range(2 if rng.random() < 0.05 else 1):
        start = 0 if rng.random() < 0.2 else rng.randrange(VERSIONS - 160)
        end = min(VERSIONS - 1, start + rng.randrange(5, 150) + bump)
        events: list[dict[str, str]] = [
            {"introduced": "0" if start == 0 else version_text(eco, start)}
        ]
        if rng.random() < 0.15:
            events.append({"last_affected": version_text(eco, end)})
        else:
            events.append({"fixed": version_text(eco, end)})
        ranges.append({"type": range_type, "events": events})
    entry: dict[str, Any] = {"package": {"ecosystem": ecosystem, "name": name}, "ranges": ranges}
    if rng.random() < 0.1:
        entry["versions"] = [version_text(eco, rng.randrange(VERSIONS)) for _ in range(4)]
    return entry


def osv_record(i: int, pkgs: Packages, seed: int, *, changed: bool) -> dict[str, Any]:
    """Advisory ``i`` (deterministic in ``seed`` and ``i``), changed or not."""
    rng = random.Random(seed * 1_000_003 + i)
    p = pkgs.draw(rng, 0.5)
    eco = pkgs.items[p][0]
    bump = 7 if changed else 0
    affected = [affected_entry(rng, pkgs, p, bump)]
    if rng.random() < 0.1:
        affected.append(affected_entry(rng, pkgs, pkgs.draw(rng, 0.5), bump))
    modified = dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=i)
    if changed:
        modified += dt.timedelta(days=400)
    record: dict[str, Any] = {
        "schema_version": "1.6.0",
        "id": f"{ECOSYSTEMS[eco][4]}-{i:07d}",
        "modified": modified.isoformat().replace("+00:00", "Z"),
        "published": "2024-01-01T00:00:00Z",
        "summary": f"Synthetic advisory {i} in {pkgs.items[p][1]}",
        "details": "Generated by benchmarks/vulns.py.\n\nNot a real vulnerability.",
        "affected": affected,
        "references": [{"type": "WEB", "url": f"https://example.invalid/adv/{i}"}],
    }
    if rng.random() < 0.5:
        record["aliases"] = [f"CVE-2024-{i + 10000}"]
    if rng.random() < 0.6:
        record["severity"] = [{"type": "CVSS_V3", "score": VECTORS[i % len(VECTORS)]}]
    return record


def write_feeds(
    tmp: Path, n: int, pkgs: Packages, seed: int, changed: set[int]
) -> tuple[Path, Path]:
    """all.zip and its changed copy (``changed`` record indices differ)."""
    first, second = tmp / "all.zip", tmp / "all-changed.zip"
    opts: dict[str, Any] = {"compression": zipfile.ZIP_DEFLATED, "compresslevel": 1}
    with zipfile.ZipFile(first, "w", **opts) as z1, zipfile.ZipFile(second, "w", **opts) as z2:
        for i in range(n):
            record = osv_record(i, pkgs, seed, changed=False)
            data = json.dumps(record, separators=(",", ":"))
            z1.writestr(f"{record['id']}.json", data)
            if i in changed:
                data = json.dumps(osv_record(i, pkgs, seed, changed=True), separators=(",", ":"))
            z2.writestr(f"{record['id']}.json", data)
            if i and i % 50_000 == 0:
                log.print(f"  generated {i:,} records")
    return first, second


def sbom_of(r: int, n: int, pkgs: Packages, seed: int) -> str:
    """A CycloneDX 1.5 SBOM of release ``r``: ``n`` distinct packages."""
    rng = random.Random(seed * 7_919 + r)
    chosen: dict[int, None] = {}
    while len(chosen) < min(n, len(pkgs.items)):
        chosen[pkgs.draw(rng, HOT_COMPONENTS)] = None
    components = []
    for j, p in enumerate(chosen):
        eco, name = pkgs.items[p]
        version = version_text(eco, rng.randrange(VERSIONS), component=True, rev=rng.randint(1, 3))
        components.append(
            {
                "type": "library",
                "bom-ref": f"c{j}",
                "name": name.rsplit("/", 1)[-1].rsplit(":", 1)[-1],
                "version": version,
                "purl": purl_of(eco, name, version),
            }
        )
    return json.dumps(
        {
            "bomFormat": "CycloneDX",
            "specVersion": "1.5",
            "version": 1,
            "metadata": {"component": {"type": "firmware", "name": f"fw{r % 10}"}},
            "components": components,
        }
    )


# --- measurement helpers ---------------------------------------------------------------------


class Timers:
    """Wall time spent in wrapped product functions, per name."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)

    @contextmanager
    def wrap(self, owner: Any, attr: str) -> Iterator[None]:
        original: Callable[..., Any] = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[attr] += time.perf_counter() - t0

        setattr(owner, attr, timed)
        try:
            yield
        finally:
            setattr(owner, attr, original)

    @contextmanager
    def product(self) -> Iterator[None]:
        """Time reconcile (the matching), refresh (exposure) and the advisory store."""
        with (
            self.wrap(imports, "reconcile"),
            self.wrap(imports, "refresh"),
            self.wrap(_store, "store_advisories"),
        ):
            yield


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def reset_peak() -> str:
    """Reset the process's peak RSS; returns how the peak will be read."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return "ru_maxrss since the process started (clear_refs unavailable)"
    return "VmHWM, reset through /proc/self/clear_refs just before the pass"


def peak_mib() -> float:
    """Peak RSS since the last reset, MiB."""
    kib = _status_kib("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def rss_mib() -> float:
    """Current RSS, MiB."""
    return _status_kib("VmRSS") / 1024


# --- the passes ------------------------------------------------------------------------------


def add_releases(bench: Bench, ctx: Any, sboms: list[str]) -> tuple[float, int]:
    """Insert the release rows, then index each; returns (seconds to index, components)."""
    now = dt.datetime.now(dt.UTC)
    with ctx.db.session() as s:
        s.execute(
            insert(Release),
            [
                {
                    "tenant_id": 1, "product": f"fw{r % 10}", "version": f"1.{r // 10}.0",
                    "filename": "fw.bin", "sha256": "0" * 64, "length": 1, "hardware": "[]",
                    "sbom": text, "measurements": "{}", "state": "deployable", "approvals": "[]",
                    "created_by": "bench", "created_at": now, "updated_at": now,
                }
                for r, text in enumerate(sboms)
            ],
        )  # fmt: skip
    start = time.perf_counter()
    with ctx.db.session() as s:
        for release in s.execute(select(Release).order_by(Release.id)).scalars():
            vulns.index_release(s, release, now=now)
    seconds = time.perf_counter() - start
    with ctx.db.read() as s:
        statuses = Counter(s.execute(select(SbomIndex.status)).scalars())
        stored = int(s.execute(select(func.count()).select_from(SbomComponent)).scalar_one())
    bad = len(sboms) - statuses["indexed"]
    bench.count("index", bad, first=f"statuses {dict(statuses)}")
    return seconds, stored


def do_import(
    bench: Bench, ctx: Any, token: str, path: Path, pass_name: str
) -> tuple[vulns.ImportReport, float, dict[str, float]]:
    """``import_feed`` of one zip in one transaction; (report, seconds, split)."""
    timers = Timers()
    done = [0]

    def progress(n: int) -> None:
        if n - done[0] >= 50_000:
            done[0] = n
            log.print(f"  {pass_name}: {n:,} records")

    start = time.perf_counter()
    with timers.product(), ctx.db.session() as s:
        principal = tenancy_service.authenticate(s, token)
        report = vulns.import_feed(s, principal, path, kind="osv", progress=progress)
    seconds = time.perf_counter() - start
    bench.count(pass_name, report.skipped, first=json.dumps(report.problems[:1]))
    bench.count(f"{pass_name} unevaluable", report.unevaluable, first="unevaluable pairs")
    return report, seconds, dict(timers.seconds)


def rematch(ctx: Any) -> tuple[float, Any, dict[str, float]]:
    """``rematch_all`` over every release; (seconds, outcome, split)."""
    timers = Timers()
    start = time.perf_counter()
    with timers.product(), ctx.db.session() as s:
        outcome = vulns.rematch_all(s, 1, now=dt.datetime.now(dt.UTC))
    return time.perf_counter() - start, outcome, dict(timers.seconds)


def open_findings(ctx: Any) -> set[tuple[int, str]]:
    with ctx.db.read() as s:
        return {
            (int(c), str(a))
            for c, a in s.execute(
                select(Finding.component_pk, Finding.advisory_id).where(Finding.state == "open")
            )
        }


def pure_baselines(
    bench: Bench,
    ctx: Any,
    path: Path,
    *,
    total: int,
    brute_advisories: int,
    db_pairs: set[tuple[int, str]],
) -> dict[str, Any]:
    """(d): parse alone, the in-memory index, and brute force on a sample."""
    with ctx.db.read() as s:
        rows = s.execute(select(SbomComponent).order_by(SbomComponent.id)).scalars().all()
        pks = [r.id for r in rows]
        components = [
            Component(
                name=r.name, version=r.version, purl=r.purl, cpe=r.cpe,
                ecosystem=r.ecosystem, package=r.package, bom_ref=r.bom_ref,
            )
            for r in rows
        ]  # fmt: skip
    entries: list[tuple[str, AffectedPackage]] = []
    sample: list[Advisory] = []
    # An even sample for brute force: every step-th record of the feed.
    step = max(1, total // max(1, brute_advisories))
    records = 0
    start = time.perf_counter()
    for rec in feeds.iter_osv(path):
        if isinstance(rec, Advisory):
            entries.extend((rec.id, a) for a in rec.affected)
            if records % step == 0:
                sample.append(rec)
        records += 1
    parse_s = time.perf_counter() - start
    log.print("  building the in-memory index")
    index = m.AdvisoryIndex(packages=entries)
    start = time.perf_counter()
    report = m.match_components(components, index, cache=m.VersionCache())
    index_s = time.perf_counter() - start
    pure_pairs = {(pks[i], mt.advisory_id) for i, ms in report.matches.items() for mt in ms}
    missing, extra = len(pure_pairs - db_pairs), len(db_pairs - pure_pairs)
    bench.count(
        "findings vs pure index",
        missing + extra,
        first=f"{missing} pure matches without a finding, {extra} findings the index lacks",
    )
    bench.count("pure index unevaluable", report.unevaluable, first="; ".join(report.samples[:2]))
    return {
        "records": records,
        "entries": len(entries),
        "parse_s": parse_s,
        "index_s": index_s,
        "index_decisions": report.decisions,
        "pure_pairs": pure_pairs,
        "components": components,
        "pks": pks,
        "sample": sample,
    }


def brute(bench: Bench, pure: dict[str, Any]) -> dict[str, Any]:
    """Every component against every affected entry of the sample, no index."""
    sample: list[Advisory] = pure["sample"]
    sample_entries = sum(len(a.affected) for a in sample)
    start = time.perf_counter()
    report = m.brute_force(pure["components"], sample, cache=m.VersionCache())
    seconds = time.perf_counter() - start
    pks = pure["pks"]
    found = {(pks[i], mt.advisory_id) for i, ms in report.matches.items() for mt in ms}
    ids = {a.id for a in sample}
    expected = {p for p in pure["pure_pairs"] if p[1] in ids}
    bench.count(
        "brute force vs index",
        len(found ^ expected),
        first=f"{len(found - expected)} only in brute force, {len(expected - found)} only indexed",
    )
    scale = pure["entries"] / sample_entries if sample_entries else float("nan")
    return {
        "advisories": len(sample),
        "entries": sample_entries,
        "pairs": report.decisions,
        "seconds": seconds,
        "matches": len(found),
        "extrapolated_s": seconds * scale,
        "extrapolated_pairs": int(report.decisions * scale) if sample_entries else 0,
    }


def main(argv: list[str] | None = None) -> int:
    bench = Bench("vulns", __doc__ or "")
    p = bench.parser
    p.add_argument("--advisories", type=int, default=200_000, help="OSV records generated")
    p.add_argument("--packages", type=int, default=20_000, help="distinct package names")
    p.add_argument("--releases", type=int, default=100)
    p.add_argument("--components", type=int, default=100, help="components per release")
    p.add_argument("--changed", type=int, default=1_000, help="records changed for (e)")
    p.add_argument(
        "--brute-advisories", type=int, default=1_000, help="advisories in the brute-force sample"
    )
    p.add_argument("--seed", type=int, default=16)
    p.add_argument(
        "--database-url", default=None, help="an empty database (default: SQLite in the temp dir)"
    )
    args = bench.parse(argv, smoke=SMOKE)
    return bench.run(lambda: run(bench, args))


def new_installation(tmp: Path, database_url: str | None) -> tuple[Any, str]:
    """A fresh home (as ``fleetward init``) on SQLite, or on ``database_url``."""
    settings = Settings(
        home=tmp / "home",
        database_url=database_url or f"sqlite:///{tmp / 'fw.db'}",
        public_url=f"https://{HOST}:8501",
        operator_port=8500,
        device_port=8501,
    )
    return initialise(settings, actor="bench")


def run(bench: Bench, args: Any) -> None:
    bench.title = "Vulnerability matching (issue 16)"
    with tempfile.TemporaryDirectory(prefix="fw-vulns-") as tmp_name:
        tmp = Path(tmp_name)
        pkgs = Packages(args.packages)
        changed = set(random.Random(args.seed).sample(range(args.advisories), args.changed))
        log.print(f"(0) generating {args.advisories:,} OSV records and {args.releases} SBOMs")
        t0 = time.perf_counter()
        first, second = write_feeds(tmp, args.advisories, pkgs, args.seed, changed)
        sboms = [sbom_of(r, args.components, pkgs, args.seed) for r in range(args.releases)]
        gen_s = time.perf_counter() - t0
        ctx, token = new_installation(tmp, args.database_url)
        db = ctx.db.engine.url.get_backend_name()
        log.print(f"(a) indexing {args.releases} releases")
        index_s, stored = add_releases(bench, ctx, sboms)
        log.print(f"(b) importing {first.name} ({first.stat().st_size / 2**20:.0f} MiB)")
        rep1, import_s, split1 = do_import(bench, ctx, token, first, "import")
        found_import = open_findings(ctx)
        log.print("(c) matching: rematch_all with no findings, then with them")
        with ctx.db.session() as s:
            s.execute(delete(Finding))
        rss_before = rss_mib()
        how = reset_peak()
        cold_s, cold, cold_split = rematch(ctx)
        peak = peak_mib()
        warm_s, warm, _ = rematch(ctx)
        db_pairs = open_findings(ctx)
        bench.check(
            "matching",
            db_pairs == found_import and len(cold.new) == len(db_pairs) and not warm.new,
            f"import found {len(found_import)}, rematch inserted {len(cold.new)}, "
            f"{len(db_pairs)} open, warm rematch inserted {len(warm.new)}",
        )
        bench.count("matching unevaluable", cold.unevaluable, first="; ".join(cold.samples[:2]))
        log.print("(d) pure baselines: parse, in-memory index, brute force sample")
        pure = pure_baselines(
            bench,
            ctx,
            first,
            total=args.advisories,
            brute_advisories=args.brute_advisories,
            db_pairs=db_pairs,
        )
        bf = brute(bench, pure)
        log.print(f"(e) re-importing with {args.changed:,} changed records")
        rep2, reimport_s, split2 = do_import(bench, ctx, token, second, "re-import")
        want = (0, args.changed, args.advisories - args.changed)
        bench.check(
            "re-import counts",
            (rep2.added, rep2.updated, rep2.unchanged) == want,
            f"added/updated/unchanged {rep2.added}/{rep2.updated}/{rep2.unchanged}, want "
            + "/".join(map(str, want)),
        )
        with ctx.db.read() as s:
            per_comp = Counter(
                s.execute(
                    select(func.count())
                    .select_from(Finding)
                    .where(Finding.state == "open")
                    .group_by(Finding.component_pk)
                ).scalars()
            )
        ctx.db.dispose()
    hist = {"0": stored - sum(per_comp.values())}
    hist["1-3"] = sum(v for k, v in per_comp.items() if k <= 3)
    hist["4-10"] = sum(v for k, v in per_comp.items() if 4 <= k <= 10)
    hist["11+"] = sum(v for k, v in per_comp.items() if k > 10)
    cold_match = cold_split.get("reconcile", 0.0)
    bench.ceiling("goal_s", GOAL_SECONDS, unit="s", label="issue 16's matching goal")
    bench.ceiling("goal_rss", GOAL_RSS_MIB, unit="MiB", label="issue 16's memory goal")
    bench.ceiling("pure_index", pure["index_s"], unit="s", label="pure match_components")
    bench.ceiling("brute", bf["extrapolated_s"], unit="s", label="pure brute force (extrap.)")
    bench.ceiling("parse", pure["parse_s"], unit="s", label="feeds.iter_osv alone")
    bench.rows += [
        Row(
            f"(0) generation (not timed): {args.advisories:,} records, 2 zips, "
            f"{args.releases} SBOMs",
            f"{gen_s:.1f} s",
        ),
        Row(
            f"(a) index_release x {args.releases} ({stored:,} components stored)",
            f"{index_s:.2f} s",
        ),
        Row(
            f"(b) import_feed, {rep1.total:,} records ({rep1.added:,} added)",
            f"{import_s:.1f} s",
            f"{import_s / pure['parse_s']:.2f}",
            "",
            "",
        ),
        Row(
            "    of which: store (digest + rows) / reconcile / refresh",
            f"{split1.get('store_advisories', 0):.1f} / {split1.get('reconcile', 0):.1f} / "
            f"{split1.get('refresh', 0):.1f} s",
        ),
        Row(
            "    ceiling: parse alone (feeds.iter_osv over the zip), ratio above",
            f"{pure['parse_s']:.1f} s",
            "1.00",
        ),
        bench.target(
            "matching_s",
            label=f"(c) matching: rematch_all, {stored:,} components x {rep1.added:,} advisories",
            value=cold_s,
            ceiling="goal_s",
            op="<=",
            goal=1.0,
            source=GOAL_SOURCE,
            shown=f"{cold_s:.2f} s",
        ),
        Row(
            "    of which: reconcile (join + decide + insert) / refresh (exposure)",
            f"{cold_match:.2f} / {cold_split.get('refresh', 0):.2f} s",
        ),
        Row(
            "    candidate pairs decided / findings",
            f"{cold.candidates:,} / {len(cold.new):,}",
        ),
        Row(
            "    components with 0 / 1-3 / 4-10 / 11+ findings",
            f"{hist['0']:,} / {hist['1-3']:,} / {hist['4-10']:,} / {hist['11+']:,}",
        ),
        bench.target(
            "peak_rss_mib",
            label="(c) peak RSS of the process during matching",
            value=peak,
            ceiling="goal_rss",
            op="<=",
            goal=1.0,
            source=GOAL_SOURCE,
            shown=f"{peak:,.0f} MiB",
        ),
        Row("    RSS just before the pass", f"{rss_before:,.0f} MiB"),
        Row(
            "    rematch_all again, findings in place (nothing written)",
            f"{warm_s:.2f} s",
            f"{warm_s / GOAL_SECONDS:.3g}",
        ),
        Row(
            "(d) pure index: match_components, in memory (ceiling of (c))",
            f"{pure['index_s']:.2f} s",
            f"{cold_s / pure['index_s']:.2f}" if pure["index_s"] else "",
            "",
            "",
        ),
        Row("    (ratio: (c) over it; decisions made)", f"{pure['index_decisions']:,}"),
        Row(
            f"(d) brute force, extrapolated from {bf['pairs']:,} pairs "
            f"({bf['advisories']:,} advisories x {stored:,} components)",
            f"{bf['extrapolated_s']:,.0f} s",
            f"{bf['extrapolated_s'] / cold_s:,.0f}x (c)" if cold_s else "",
        ),
        Row(
            f"    measured on the sample; all pairs: {bf['extrapolated_pairs']:,}",
            f"{bf['seconds']:.2f} s",
        ),
        Row(
            f"(e) re-import, {rep2.total:,} records: added / updated / unchanged",
            f"{rep2.added:,} / {rep2.updated:,} / {rep2.unchanged:,}",
        ),
        Row("    re-import time", f"{reimport_s:.1f} s", f"{reimport_s / import_s:.2f} of (b)"),
        Row(
            f"    rematch of the {rep2.updated:,} changed (reconcile) / refresh",
            f"{split2.get('reconcile', 0):.2f} / {split2.get('refresh', 0):.2f} s",
        ),
        Row(
            "    findings new / closed by the re-import",
            f"{rep2.findings_new:,} / {rep2.findings_closed:,}",
        ),
    ]
    bench.notes += [
        f"database: {db}; one transaction per import and per rematch; {args.packages:,} "
        f"packages ({HOT_SHARE:.0%} hot, carrying half of the advisories); "
        f"{HOT_COMPONENTS:.0%} of components from hot packages; seed {args.seed}.",
        f"peak RSS: {how}. RSS is the whole process (interpreter, SQLAlchemy, the "
        "session's identity map), not only the matcher's data.",
        "matching time is the first rematch_all after the findings were deleted: every "
        "candidate decided and every finding inserted, then the exposure refresh.",
        "brute force: match.brute_force (every component x every affected entry of an even "
        "sample of the feed), scaled by all entries / sampled entries.",
        "No CPE/NVD data: every component and advisory is OSV (package-key joins only).",
    ]
    bench.figures = {
        "advisories": args.advisories,
        "affected_entries": pure["entries"],
        "releases": args.releases,
        "components": stored,
        "generation_s": round(gen_s, 1),
        "index_releases_s": round(index_s, 3),
        "import": {
            "seconds": round(import_s, 2),
            "added": rep1.added,
            "findings_new": rep1.findings_new,
            "split_s": {k: round(v, 2) for k, v in split1.items()},
        },
        "parse_only_s": round(pure["parse_s"], 2),
        "matching": {
            "seconds": round(cold_s, 3),
            "split_s": {k: round(v, 3) for k, v in cold_split.items()},
            "candidates": cold.candidates,
            "findings": len(cold.new),
            "peak_rss_mib": round(peak, 1),
            "rss_before_mib": round(rss_before, 1),
            "peak_how": how,
            "warm_seconds": round(warm_s, 3),
            "per_component": hist,
        },
        "pure_index_s": round(pure["index_s"], 3),
        "brute_force": {k: round(v, 3) if isinstance(v, float) else v for k, v in bf.items()},
        "reimport": {
            "seconds": round(reimport_s, 2),
            "added": rep2.added,
            "updated": rep2.updated,
            "unchanged": rep2.unchanged,
            "findings_new": rep2.findings_new,
            "findings_closed": rep2.findings_closed,
            "split_s": {k: round(v, 3) for k, v in split2.items()},
        },
    }


if __name__ == "__main__":
    sys.exit(main())
