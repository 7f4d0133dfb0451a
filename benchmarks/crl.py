"""CRL publication, revocation latency and OCSP throughput at 1,000,000 revocations (issue 2).

Set-up: a fresh installation; a few real device certificates issued through
``service.enroll``; then ``--entries`` revoked rows **bulk-inserted** into the
``certificates`` table (SQLAlchemy Core ``insert``, not issued: issuing 1M
certificates would take far longer than the benchmark), all under the
production issuing CA, plus ``--good`` bulk-inserted good rows for the OCSP
mix.

Measured:

(a) ``publish_crls(force=True)`` wall time at that size (DB read + build +
    sign + store), the DER size, and the raw ceiling in the same run: pyca
    ``CertificateRevocationListBuilder(revoked_certificates=...)`` build +
    sign of the same entries from in-memory tuples; then one more revocation
    in process (``service.revoke_certificate``, its transaction timed: the
    ceiling of (b)) and the publisher's incremental rebuild;
(b) with ``fleetward serve`` running on that home (its default publication
    interval unless ``--crl-interval``): one revocation over HTTP, an OCSP
    request right after it (must say revoked), and the seconds until
    ``/crl/<ca>.crl`` lists the serial. Two more revocations are timed, one
    right after a publication and one about a second into the next publisher
    round (which rebuilds the large CRL);
(c) OCSP responses/s over HTTPS (the device plane) for ``--ocsp-seconds`` (good / revoked /
    unknown serials), with the Python client (POST) and with ``wrk`` (GET)
    when it is installed, per server worker count, beside the in-process
    ``ocsp_answer`` rate and the raw pyca OCSP build + sign ceiling.

Targets, as ratios to ceilings of the same run: ``publish_crls`` <= 0.85 of
the raw pyca build (issue 2: 6 s at 1,000,000 entries, where its closing run
measured the raw build at 7.06 s); the CRL lists each revocation within 1.0
publication interval (issue 2); OCSP over HTTP >= 0.078 of the raw pyca
build + sign (issue 2: 2,000/s at the 25,665/s its closing run measured);
the first HTTP revocation <= 20 in-process revocation transactions (issue
2's 50 ms over the ~2.5 ms the in-process transaction takes on this
machine). Errors: a revocation refused, OCSP not saying ``revoked`` at once,
a CRL that never lists a revocation, a wrong OCSP answer, a failed request
under load, a CRL with the wrong entry count.

    .venv/bin/python benchmarks/crl.py           # 1,000,000 entries, OCSP on 1 and 2 workers
    .venv/bin/python benchmarks/crl.py --smoke   # CI size
"""

from __future__ import annotations

import base64
import datetime as dt
import itertools
import random
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _harness import (
    HOST,
    Bench,
    LoadResult,
    Row,
    Server,
    free_port,
    http_request,
    log,
    new_installation,
    rate,
    run_load,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from sqlalchemy import insert, select

from fleetward.identity import issuance, publication, service
from fleetward.identity.models import CertificateAuthority, CertificateRecord
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal

# Targets: ratios to ceilings measured in the run (see the module docstring).
TARGET_CRL = 0.85
TARGET_CRL_SOURCE = "issue 2: 6 s at 1M entries, raw pyca build 7.06 s in its closing run"
TARGET_VISIBLE = 1.0
TARGET_VISIBLE_SOURCE = "issue 2: in the CRL within the publication interval"
TARGET_OCSP = 0.078
TARGET_OCSP_SOURCE = "issue 2: 2,000/s at a raw pyca OCSP build + sign of 25,665/s"
TARGET_REVOKE = 20.0
TARGET_REVOKE_SOURCE = "issue 2: 50 ms, over a ~2.5 ms in-process transaction on this machine"
SMOKE = {
    "entries": 5000,
    "good": 300,
    "ocsp_seconds": 1.0,
    "ocsp_workers": "1",
    "ceiling_seconds": 0.5,
}
ENV = "production"
REASON = "keyCompromise"
OCSP_TYPE = "application/ocsp-request"
# RFC 6960 CertIDs hash with SHA-1 in practice (RFC 5019 requires it); clients send it.
CERTID_HASH = hashes.SHA1()  # noqa: S303


# --------------------------------------------------------------------------- set-up


def make_csr(device_id: str) -> bytes:
    """A P-256 CSR whose CN is the device id."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(Encoding.PEM)


def issue_real(ctx: AppContext, principal: Principal, count: int) -> list[x509.Certificate]:
    """Issue ``count`` real device certificates through the service layer."""
    certs = []
    for i in range(count):
        device_id = f"real-{i:03d}"
        with ctx.db.session() as s:
            record = issuance.enroll(
                s, ctx.pki, principal, device_id=device_id, csr=make_csr(device_id), environment=ENV
            )
            certs.append(x509.load_der_x509_certificate(record.der))
    return certs


def issue_real_named(
    ctx: AppContext, principal: Principal, device_id: str
) -> list[x509.Certificate]:
    """Issue one real certificate for ``device_id``."""
    with ctx.db.session() as s:
        record = issuance.enroll(
            s, ctx.pki, principal, device_id=device_id, csr=make_csr(device_id), environment=ENV
        )
    return [x509.load_der_x509_certificate(record.der)]


def random_serials(rng: random.Random, count: int, taken: set[int]) -> list[int]:
    """``count`` distinct positive serials shaped like ``x509.random_serial_number()``."""
    out: list[int] = []
    while len(out) < count:
        serial = rng.getrandbits(159) | (1 << 150)  # ~20 DER bytes, like real serials
        if serial not in taken:
            taken.add(serial)
            out.append(serial)
    return out


@dataclass
class BulkRows:
    """What was inserted directly into ``certificates``."""

    revoked: list[tuple[int, dt.datetime]]
    good: list[int]
    seconds: float = 0.0


def bulk_insert(
    ctx: AppContext,
    principal: Principal,
    *,
    ca_id: int,
    entries: int,
    good: int,
    chunk: int,
    taken: set[int],
) -> BulkRows:
    """Insert ``entries`` revoked and ``good`` good rows with Core ``insert``, chunked."""
    rng = random.Random(20260501)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    revoked_serials = random_serials(rng, entries, taken)
    # Revocation times spread over the last ~year, one second apart per entry.
    revoked = [(s, now - dt.timedelta(seconds=i)) for i, s in enumerate(revoked_serials)]
    good_serials = random_serials(rng, good, taken)
    with ctx.db.session() as s:
        device = service.register_device(s, principal, device_id="bulk-inserted")
        s.flush()
        device_pk = device.id
    not_before, not_after = now - dt.timedelta(days=400), now + dt.timedelta(days=365)

    def row(i: int, serial: int, revoked_at: dt.datetime | None) -> dict[str, Any]:
        return {
            "serial": format(serial, "x"),
            "tenant_id": principal.tenant_id,
            "device_pk": device_pk,
            "ca_id": ca_id,
            "environment": ENV,
            "fingerprint": format(i, "064x"),
            "not_before": not_before,
            "not_after": not_after,
            "status": "revoked" if revoked_at else "good",
            "revoked_at": revoked_at,
            "revocation_reason": REASON if revoked_at else None,
            "der": b"",
        }

    start = time.perf_counter()
    for lo in range(0, entries, chunk):
        rows = [row(lo + j, s, t) for j, (s, t) in enumerate(revoked[lo : lo + chunk])]
        with ctx.db.session() as s:
            s.execute(insert(CertificateRecord), rows)
        if lo and lo % (chunk * 4) == 0:
            log.print(f"  {lo:,} rows inserted")
    with ctx.db.session() as s:
        if good_serials:
            s.execute(
                insert(CertificateRecord),
                [row(entries + j, g, None) for j, g in enumerate(good_serials)],
            )
    return BulkRows(revoked=revoked, good=good_serials, seconds=time.perf_counter() - start)


# --------------------------------------------------------------------------- (a) CRL build


def raw_crl(
    issuer: x509.Certificate, key: Any, entries: list[tuple[int, dt.datetime]]
) -> tuple[float, float, int]:
    """pyca only: (seconds to build the entries, seconds to build+sign the CRL, DER bytes)."""
    reason = x509.CRLReason(x509.ReasonFlags.key_compromise)
    start = time.perf_counter()
    revoked = [
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(when)
        .add_extension(reason, critical=False)
        .build()
        for serial, when in entries
    ]
    built = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    crl = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.subject,
        last_update=now,
        next_update=now + dt.timedelta(days=1),
        extensions=[
            x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(1)),
            x509.Extension(
                x509.AuthorityKeyIdentifier.oid,
                False,
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            ),
        ],
        revoked_certificates=revoked,
    ).sign(key, hashes.SHA256())
    der = crl.public_bytes(Encoding.DER)
    return built - start, time.perf_counter() - start, len(der)


def sql_read_seconds(ctx: AppContext, ca_id: int) -> float:
    """The SELECT that ``publish_crls`` runs for one CA, alone (rows to tuples)."""
    stmt = select(
        CertificateRecord.serial, CertificateRecord.revoked_at, CertificateRecord.revocation_reason
    ).where(CertificateRecord.ca_id == ca_id, CertificateRecord.status == "revoked")
    start = time.perf_counter()
    with ctx.db.session() as s:
        rows = [
            (int(serial, 16), when, reason)
            for serial, when, reason in s.execute(stmt.execution_options(yield_per=20000))
        ]
    assert rows
    return time.perf_counter() - start


# --------------------------------------------------------------------------- OCSP helpers


@dataclass(frozen=True)
class Issuer:
    """The CA an OCSP CertID names."""

    cert: x509.Certificate
    name_hash: bytes
    key_hash: bytes


def issuer_hashes(issuer: x509.Certificate, sample: x509.Certificate) -> Issuer:
    """SHA-1 issuer name/key hashes, read off a request pyca builds the standard way."""
    req = ocsp.OCSPRequestBuilder().add_certificate(sample, issuer, CERTID_HASH).build()
    return Issuer(issuer, req.issuer_name_hash, req.issuer_key_hash)


def ocsp_request_for(issuer: Issuer, serial: int) -> bytes:
    """A DER OCSP request for one serial of ``issuer``."""
    req = (
        ocsp.OCSPRequestBuilder()
        .add_certificate_by_hash(issuer.name_hash, issuer.key_hash, serial, CERTID_HASH)
        .build()
    )
    return req.public_bytes(Encoding.DER)


def ocsp_status(der: bytes) -> str:
    """``good``, ``revoked``, ``unknown``, or the unsuccessful response status."""
    resp = ocsp.load_der_ocsp_response(der)
    if resp.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        return resp.response_status.name.lower()
    return resp.certificate_status.name.lower()


@dataclass
class OcspProbe:
    """OCSP requests every ``period`` seconds from a thread; records latencies."""

    base: str
    request: bytes
    verify: ssl.SSLContext
    period: float = 0.1
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=120, verify=self.verify) as client:
            while not self._stop.wait(self.period):
                t0 = time.perf_counter()
                client.post("/ocsp", content=self.request, headers={"content-type": OCSP_TYPE})
                self.latencies.append(time.perf_counter() - t0)

    def __enter__(self) -> OcspProbe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=130)


# --------------------------------------------------------------------------- (b) revocation


@dataclass
class Revocation:
    """One timed revocation."""

    label: str
    serial: str
    ms: float
    ocsp: str = ""
    ocsp_ms: float = 0.0
    crl_s: float | None = None


def crl_contains(client: httpx.Client, ca_id: int, serial: int) -> bool:
    """Whether the published CRL lists ``serial``."""
    resp = client.get(f"/crl/{ca_id}.crl")
    resp.raise_for_status()
    crl = x509.load_der_x509_crl(resp.content)
    return crl.get_revoked_certificate_by_serial_number(serial) is not None


def wait_for_crl(
    client: httpx.Client, ca_id: int, serial: int, since: float, timeout: float
) -> float | None:
    """Seconds from ``since`` until the CRL lists ``serial`` (``None``: not within timeout)."""
    while time.perf_counter() - since < timeout:
        if crl_contains(client, ca_id, serial):
            return time.perf_counter() - since
        time.sleep(0.25)
    return None


def revoke(client: httpx.Client, serial: int, label: str) -> tuple[Revocation, float]:
    """Revoke over HTTP; returns the timing and the moment the response arrived."""
    hex_serial = format(serial, "x")
    t0 = time.perf_counter()
    resp = client.post(f"/api/v1/certificates/{hex_serial}/revocation", json={"reason": REASON})
    done = time.perf_counter()
    if resp.status_code != 200 or resp.json()["status"] != "revoked":
        raise RuntimeError(f"revocation failed: {resp.status_code} {resp.text[:300]}")
    return Revocation(label, hex_serial, 1000 * (done - t0)), done


def revocation_phase(
    server: Server, token: str, ca_id: int, issuer: Issuer, certs: list[x509.Certificate]
) -> tuple[list[Revocation], list[float]]:
    """(b): revoke three real certificates at chosen moments against the running server."""
    interval = server.crl_interval_used
    timeout = 4 * interval + 120
    headers = {"authorization": f"Bearer {token}"}
    results = []
    # Revocations go to the operator plane; OCSP and CRLs come from the device plane (TLS).
    with (
        httpx.Client(base_url=server.base, headers=headers, timeout=300) as client,
        httpx.Client(base_url=server.device_base, timeout=300, verify=server.tls()) as device,
    ):
        # Warm the connections, the token and the OCSP path before timing anything.
        client.get("/api/v1/cas").raise_for_status()
        probe_req = ocsp_request_for(issuer, certs[-1].serial_number)
        device.post("/ocsp", content=probe_req, headers={"content-type": OCSP_TYPE})
        with OcspProbe(server.device_base, probe_req, server.tls()) as probe:
            first, done = revoke(client, certs[0].serial_number, "1st revocation (headline)")
            req = (
                ocsp.OCSPRequestBuilder()
                .add_certificate(certs[0], issuer.cert, CERTID_HASH)
                .build()
                .public_bytes(Encoding.DER)
            )
            t0 = time.perf_counter()
            resp = device.post("/ocsp", content=req, headers={"content-type": OCSP_TYPE})
            first.ocsp_ms = 1000 * (time.perf_counter() - t0)
            first.ocsp = ocsp_status(resp.content)
            log.print(f"  revoked in {first.ms:.1f} ms; OCSP says {first.ocsp}; polling the CRL")
            first.crl_s = wait_for_crl(device, ca_id, certs[0].serial_number, done, timeout)
            results.append(first)

            second, done2 = revoke(client, certs[1].serial_number, "2nd, right after a publication")
            results.append(second)
            second.crl_s = wait_for_crl(device, ca_id, certs[1].serial_number, done2, timeout)
            # The 3rd lands about a second into the publisher's next rebuild (it
            # polls every second and rebuilds at once), so it waits for that one.
            time.sleep(1.0)
            third, done3 = revoke(
                client, certs[2].serial_number, "3rd, ~1 s after the 2nd was published"
            )
            results.append(third)
            third.crl_s = wait_for_crl(device, ca_id, certs[2].serial_number, done3, timeout)
    return results, probe.latencies


# --------------------------------------------------------------------------- (c) OCSP load


def ocsp_mix(issuer: Issuer, bulk: BulkRows, real_good: list[int], per_kind: int) -> list[bytes]:
    """Requests for good, revoked and unknown serials, interleaved."""
    rng = random.Random(7)
    good = (real_good + bulk.good)[:per_kind]
    revoked = [s for s, _ in rng.sample(bulk.revoked, min(per_kind, len(bulk.revoked)))]
    unknown = random_serials(rng, per_kind, {s for s, _ in bulk.revoked} | set(good))
    kinds = [[ocsp_request_for(issuer, s) for s in group] for group in (good, revoked, unknown)]
    return [r for trio in itertools.zip_longest(*kinds) for r in trio if r is not None]


def python_ocsp_load(
    server: Server, requests: list[bytes], seconds: float, concurrency: int
) -> tuple[LoadResult, float, float]:
    """POST /ocsp with the asyncio client; returns (result, server cores, client cores)."""
    raw = [http_request("POST", "/ocsp", body=r, content_type=OCSP_TYPE) for r in requests]
    cpu, client_cpu = server.cpu_seconds(), time.process_time()
    result = run_load(
        server.device_port,
        itertools.cycle(raw),
        concurrency=concurrency,
        duration=seconds,
        tls=server.tls(),
    )
    return (
        result,
        (server.cpu_seconds() - cpu) / result.elapsed,
        (time.process_time() - client_cpu) / result.elapsed,
    )


@dataclass
class WrkResult:
    """What ``wrk`` reported."""

    per_s: float
    requests: int
    non_2xx: int
    errors: str
    p50_ms: float
    p99_ms: float
    server_cores: float
    client_cores: float


def _ms(text: str) -> float:
    value, unit = float(text[:-2] if text.endswith(("ms", "us")) else text[:-1]), text
    if unit.endswith("us"):
        return value / 1000
    if unit.endswith("ms"):
        return value
    return value * 1000  # seconds


def wrk_ocsp_load(
    server: Server, requests: list[bytes], seconds: float, concurrency: int, tmp: Path
) -> WrkResult:
    """GET /ocsp/<base64url> with wrk (one thread), cycling through ``requests``."""
    paths = ["/ocsp/" + base64.urlsafe_b64encode(r).decode().replace("=", "%3D") for r in requests]
    script = tmp / "ocsp.lua"
    script.write_text(
        "local paths = {"
        + ",".join(f'"{p}"' for p in paths)
        + "}\nlocal i = 0\nrequest = function()\n  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\nend\n'
    )
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{seconds:g}s",
        "--timeout",
        "30s",
        "--latency",
        "-s",
        str(script),
        f"https://{HOST}:{server.device_port}",  # the device plane (wrk does not verify)
    ]
    cpu = server.cpu_seconds()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)

    def grab(pattern: str, default: str = "0") -> str:
        m = re.search(pattern, text)
        return m.group(1) if m else default

    return WrkResult(
        per_s=float(grab(r"Requests/sec:\s+([\d.]+)")),
        requests=int(grab(r"(\d+) requests in")),
        non_2xx=int(grab(r"Non-2xx or 3xx responses:\s+(\d+)")),
        errors=grab(r"Socket errors:\s+(.*)", ""),
        p50_ms=_ms(grab(r"50%\s+([\d.]+\w+)", "0ms")),
        p99_ms=_ms(grab(r"99%\s+([\d.]+\w+)", "0ms")),
        server_cores=(server.cpu_seconds() - cpu) / elapsed,
        client_cores=client_cpu / elapsed,
    )


def check_mix(server: Server, issuer: Issuer, bulk: BulkRows, real_good: int) -> dict[str, str]:
    """One request of each kind, POST and GET, before the load starts: kind -> "post/get"."""
    unknown = random_serials(random.Random(1), 1, {s for s, _ in bulk.revoked})[0]
    want = {"good": real_good, "revoked": bulk.revoked[0][0], "unknown": unknown}
    got = {}
    with httpx.Client(base_url=server.device_base, timeout=60, verify=server.tls()) as client:
        for kind, serial in want.items():
            der = ocsp_request_for(issuer, serial)
            resp = client.post("/ocsp", content=der, headers={"content-type": OCSP_TYPE})
            encoded = base64.urlsafe_b64encode(der).decode().replace("=", "%3D")
            via_get = ocsp_status(client.get(f"/ocsp/{encoded}").content)
            got[kind] = f"{ocsp_status(resp.content)}/{via_get}"
    return got


def ocsp_service_ceiling(ctx: AppContext, requests: list[bytes], seconds: float) -> float:
    """``ocsp_answer`` on a read connection per request (what the route does), one thread."""

    def once(i: int) -> None:
        with ctx.db.read_engine.connect() as conn:
            publication.ocsp_answer(conn, ctx.pki, requests[i % len(requests)])

    return rate(once, seconds=seconds)


def ocsp_raw_ceiling(issuer: Issuer, key: Any, seconds: float) -> float:
    """pyca only: build + sign one OCSP response (the CA is its own responder)."""
    now = dt.datetime.now(dt.UTC)

    def once(i: int) -> None:
        (
            ocsp.OCSPResponseBuilder()
            .add_response_by_hash(
                issuer_name_hash=issuer.name_hash,
                issuer_key_hash=issuer.key_hash,
                serial_number=i + 1,
                algorithm=CERTID_HASH,
                cert_status=ocsp.OCSPCertStatus.GOOD,
                this_update=now,
                next_update=now + dt.timedelta(hours=1),
                revocation_time=None,
                revocation_reason=None,
            )
            .responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
            .sign(key, hashes.SHA256())
            .public_bytes(Encoding.DER)
        )

    return rate(once, seconds=seconds)


# --------------------------------------------------------------------------- main


def in_process_revocations(
    ctx: AppContext, principal: Principal, count: int
) -> tuple[list[float], list[x509.Certificate]]:
    """Seconds of ``count`` in-process ``revoke_certificate`` transactions (the ceiling
    of an HTTP revocation), each of a certificate issued for it; and the certificates."""
    certs = [issue_real_named(ctx, principal, f"inproc-{i:03d}")[0] for i in range(count)]
    seconds = []
    for cert in certs:
        t0 = time.perf_counter()
        with ctx.db.session() as s:
            service.revoke_certificate(
                s, principal, format(cert.serial_number, "x"), reason="keyCompromise"
            )
        seconds.append(time.perf_counter() - t0)
    return seconds, certs


def main(argv: list[str] | None = None) -> int:
    bench = Bench("crl", __doc__ or "")
    p = bench.parser
    p.add_argument("--entries", type=int, default=1_000_000, help="revoked rows")
    p.add_argument("--good", type=int, default=1000, help="good rows for the OCSP mix")
    p.add_argument("--chunk", type=int, default=50_000, help="rows per bulk INSERT")
    p.add_argument(
        "--crl-interval", type=float, default=None, help="publication interval (default: serve's)"
    )
    p.add_argument("--ocsp-seconds", type=float, default=10.0, help="OCSP load per client")
    p.add_argument("--ocsp-concurrency", type=int, default=32, help="OCSP connections")
    p.add_argument("--ocsp-workers", default="1,2", help="server worker counts for the OCSP load")
    p.add_argument(
        "--client",
        choices=("both", "python", "wrk"),
        default="both",
        help="OCSP load client (wrk is skipped when not installed)",
    )
    p.add_argument("--ceiling-seconds", type=float, default=3.0, help="time per ceiling")
    args = bench.parse(argv, smoke=SMOKE)
    return bench.run(lambda: run(bench, args))


def run(bench: Bench, args: Any) -> None:
    n = args.entries
    use_wrk = args.client in ("both", "wrk") and shutil.which("wrk") is not None
    use_python = args.client in ("both", "python") or not use_wrk
    worker_counts = [int(w) for w in args.ocsp_workers.split(",") if w.strip()]
    bench.title = f"CRL / revocation / OCSP at {n:,} revoked entries"

    with tempfile.TemporaryDirectory(prefix="fw-bench-crl-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        log.print(f"initialising a fleetward home in {tmp}")
        ctx, token = new_installation(tmp, port=port)
        with ctx.db.session() as s:
            principal = tenancy.authenticate(s, token)
            ca = s.execute(
                select(CertificateAuthority).where(
                    CertificateAuthority.kind == "issuing",
                    CertificateAuthority.environment == ENV,
                    CertificateAuthority.status == "active",
                )
            ).scalar_one()
            ca_id, issuer_cert = ca.id, ctx.pki.certificate(ca)
            ca_key = ctx.pki.keyring.open(ca.key_uri).builder_key()
        real = issue_real(ctx, principal, 4)  # 3 to revoke, 1 stays good
        issuer = issuer_hashes(issuer_cert, real[0])

        log.print(f"bulk-inserting {n:,} revoked + {args.good:,} good rows (not issued)")
        bulk = bulk_insert(
            ctx,
            principal,
            ca_id=ca_id,
            entries=n,
            good=args.good,
            chunk=args.chunk,
            taken={c.serial_number for c in real},
        )
        log.print(f"  {bulk.seconds:.1f} s")

        log.print("(a) raw pyca CRL build + sign from in-memory tuples")
        raw_build_s, raw_total_s, raw_der = raw_crl(issuer_cert, ca_key, bulk.revoked)
        bench.ceiling(
            "raw_crl", raw_total_s, unit="s", label=f"pyca CRL build + sign, {n:,} entries"
        )
        log.print(f"  {raw_total_s:.2f} s; SQL read alone")
        read_s = sql_read_seconds(ctx, ca_id)
        log.print(f"  {read_s:.2f} s; publish_crls(force=True)")
        start = time.perf_counter()
        rebuilt = publication.publish_crls(ctx.db, ctx.pki, force=True)
        published = {c.ca_id: (c.entries, len(c.der)) for c in rebuilt}
        publish_s = time.perf_counter() - start
        crl_entries, crl_der = published[ca_id]
        bench.check("(a) full CRL build", crl_entries == n, f"{crl_entries:,} entries, not {n:,}")
        log.print(f"  {publish_s:.2f} s, {crl_der / 2**20:.1f} MiB, {crl_entries:,} entries")
        log.print("(a') in-process revocations (ceiling of (b)), then the incremental rebuild")
        revoke_s, extra = in_process_revocations(ctx, principal, 5)
        bench.ceiling(
            "revoke_in_process",
            statistics.median(revoke_s),
            unit="s",
            label="service.revoke_certificate transaction, in process (median of 5)",
        )
        start = time.perf_counter()
        [incremental] = publication.publish_crls(ctx.db, ctx.pki)
        incremental_s = time.perf_counter() - start
        bench.check(
            "(a') incremental CRL build",
            incremental.entries == n + len(extra),
            f"{incremental.entries:,} entries, not {n + len(extra):,}",
        )
        log.print(f"  {incremental_s:.2f} s, {incremental.entries:,} entries")
        ctx.db.dispose()

        server = bench.server(home=tmp / "home", port=port, crl_interval=args.crl_interval)
        interval = server.crl_interval_used
        bench.ceiling("crl_interval", interval, unit="s", label="CRL publication interval")
        log.print(f"(b) revocations against `fleetward serve` (CRL interval {interval:g} s)")
        with server:
            revocations, probe = revocation_phase(server, token, ca_id, issuer, real)
        head = revocations[0]
        bench.check("(b) OCSP right after", head.ocsp == "revoked", f"OCSP said {head.ocsp}")
        for r in revocations:
            bench.check(
                "(b) CRL lists the revocation", r.crl_s is not None, f"{r.label}: never listed"
            )
        # All revocations are in the CRL now; the OCSP load sees no rebuild.

        mix = ocsp_mix(issuer, bulk, [real[3].serial_number], per_kind=min(1000, args.good))
        ocsp_runs: list[dict[str, Any]] = []
        for w in worker_counts:
            server = bench.server(
                home=tmp / "home", port=port, workers=w, crl_interval=args.crl_interval
            )
            with server:
                answers = check_mix(server, issuer, bulk, real[3].serial_number)
                wrong = {k: v for k, v in answers.items() if v != f"{k}/{k}"}
                bench.count(f"(c) OCSP answers, {w} worker(s)", len(wrong), first=str(wrong))
                if use_python:
                    log.print(f"(c) OCSP POST load, python client, {w} worker(s)")
                    res, srv, cli = python_ocsp_load(
                        server, mix, args.ocsp_seconds, args.ocsp_concurrency
                    )
                    ok = res.statuses.get(200, 0)
                    bench.count(
                        f"(c) OCSP POST load, {w} worker(s)", res.sent - ok, first=res.first_error
                    )
                    ocsp_runs.append(
                        {
                            "client": "python-asyncio POST",
                            "workers": w,
                            "per_s": ok / res.elapsed,
                            "errors": res.sent - ok,
                            "p50_ms": res.percentile(50),
                            "p99_ms": res.percentile(99),
                            "server_cores": srv,
                            "client_cores": cli,
                        }
                    )
                if use_wrk:
                    log.print(f"(c) OCSP GET load, wrk, {w} worker(s)")
                    wr = wrk_ocsp_load(server, mix, args.ocsp_seconds, args.ocsp_concurrency, tmp)
                    bench.count(
                        f"(c) OCSP GET load (wrk), {w} worker(s)",
                        wr.non_2xx + (1 if wr.errors else 0),
                        first=f"non-2xx {wr.non_2xx}; socket errors {wr.errors}",
                    )
                    ocsp_runs.append(
                        {
                            "client": "wrk GET",
                            "workers": w,
                            "per_s": wr.per_s,
                            "errors": wr.non_2xx,
                            "p50_ms": wr.p50_ms,
                            "p99_ms": wr.p99_ms,
                            "server_cores": wr.server_cores,
                            "client_cores": wr.client_cores,
                            "socket_errors": wr.errors,
                        }
                    )

        log.print("(c) in-process ceilings: ocsp_answer (service), pyca build + sign (raw)")
        service_ocsp = ocsp_service_ceiling(ctx, mix, args.ceiling_seconds)
        raw_ocsp = ocsp_raw_ceiling(issuer, ca_key, args.ceiling_seconds)
        bench.ceiling(
            "raw_ocsp", raw_ocsp, unit="responses/s", label="pyca OCSP build + sign, one thread"
        )
        ctx.db.dispose()

    # ----------------------------------------------------------------- report
    best = max(ocsp_runs, key=lambda r: r["per_s"])

    def crl_row(i: int, r: Revocation) -> Row:
        return bench.target(
            f"crl_visible_{i + 1}",
            label=f"  CRL lists it after ({r.label})",
            value=r.crl_s if r.crl_s is not None else float("inf"),
            ceiling="crl_interval",
            op="<=",
            goal=TARGET_VISIBLE,
            source=TARGET_VISIBLE_SOURCE,
            shown="not seen" if r.crl_s is None else f"{r.crl_s:.1f} s",
        )

    bench.rows += [
        bench.ceiling_row("raw_crl", f"{raw_total_s:.2f} s"),
        Row("    of which entry objects", f"{raw_build_s:.2f} s"),
        bench.target(
            "crl_publish",
            label="(a) publish_crls(force=True), incl. DB read",
            value=publish_s,
            ceiling="raw_crl",
            op="<=",
            goal=TARGET_CRL,
            source=TARGET_CRL_SOURCE,
            shown=f"{publish_s:.2f} s",
        ),
        Row("(a') rebuild after 5 more revocations (incremental)", f"{incremental_s:.2f} s"),
        Row("    the same SQL read alone", f"{read_s:.2f} s"),
        Row("    CRL DER size", f"{crl_der / 2**20:.1f} MiB"),
        bench.ceiling_row("revoke_in_process", f"{1000 * statistics.median(revoke_s):.1f} ms"),
        bench.target(
            "revoke_http",
            label=f"(b) HTTP revoke: {head.label}",
            value=head.ms / 1000,
            ceiling="revoke_in_process",
            op="<=",
            goal=TARGET_REVOKE,
            source=TARGET_REVOKE_SOURCE,
            shown=f"{head.ms:.1f} ms",
        ),
        *(Row(f"(b) HTTP revoke: {r.label}", f"{r.ms:.1f} ms") for r in revocations[1:]),
        Row("  OCSP right after the 1st revocation", f"{head.ocsp} ({head.ocsp_ms:.0f} ms)"),
        bench.ceiling_row("crl_interval", f"{interval:g} s"),
        *(crl_row(i, r) for i, r in enumerate(revocations)),
    ]
    if probe:
        bench.rows.append(
            Row(
                "  OCSP probe latency during (b), p50 / max",
                f"{1000 * statistics.median(probe):.0f} / {1000 * max(probe):.0f} ms",
            )
        )
    bench.rows += [
        bench.ceiling_row("raw_ocsp", f"{raw_ocsp:,.0f}/s"),
        Row(
            "(c) ocsp_answer in-process, 1 thread",
            f"{service_ocsp:,.0f}/s",
            f"{service_ocsp / raw_ocsp:.3g}",
        ),
        *(
            Row(
                f"(c) OCSP over HTTPS, {r['client']}, {r['workers']} worker(s)",
                f"{r['per_s']:,.0f}/s",
                f"{r['per_s'] / raw_ocsp:.3g}",
            )
            for r in ocsp_runs
        ),
        bench.target(
            "ocsp_http",
            label=f"(c) OCSP over HTTPS, best ({best['client']}, {best['workers']} worker(s))",
            value=best["per_s"],
            ceiling="raw_ocsp",
            op=">=",
            goal=TARGET_OCSP,
            source=TARGET_OCSP_SOURCE,
            shown=f"{best['per_s']:,.0f}/s",
        ),
    ]
    bench.notes += [
        f"The {n:,} revoked rows (+ {args.good:,} good) were BULK-INSERTED into "
        f"`certificates` (SQLAlchemy Core insert, {bulk.seconds:.1f} s), not issued; "
        "real certificates were issued through issuance.enroll for the revocations.",
        "Entries carry 159-bit random serials (as x509.random_serial_number() makes) and "
        f"reason keyCompromise: {crl_der / max(n, 1):.0f} bytes of DER per entry; the raw "
        f"pyca CRL of the same entries is {raw_der / 2**20:.1f} MiB.",
        "Server: `fleetward serve` (uvicorn, 1 worker for (b)) in a subprocess on "
        "127.0.0.1; SQLite WAL.",
        f"(b) timed with httpx (keep-alive, warmed up); an OCSP probe ran every 100 ms "
        f"throughout ({len(probe)} probes).",
        f"(c) {args.ocsp_seconds:g} s per run, {args.ocsp_concurrency} connections, "
        "good/revoked/unknown serials interleaved; ratio = HTTP / raw pyca build + sign.",
        *(
            f"(c) {r['client']}, {r['workers']} worker(s): p50 {r['p50_ms']:.1f} ms, p99 "
            f"{r['p99_ms']:.1f} ms, server {r['server_cores']:.2f} cores, client "
            f"{r['client_cores']:.2f} cores"
            for r in ocsp_runs
        ),
        *(["wrk not installed: only the Python client ran"] if not use_wrk else []),
    ]
    bench.figures = {
        "entries": n,
        "rows_bulk_inserted": True,
        "bulk_insert_s": round(bulk.seconds, 2),
        "crl_publish_s": round(publish_s, 3),
        "crl_incremental_s": round(incremental_s, 3),
        "crl_der_bytes": crl_der,
        "crl_entries": crl_entries,
        "crl_sql_read_s": round(read_s, 3),
        "raw_crl_entries_build_s": round(raw_build_s, 3),
        "raw_crl_der_bytes": raw_der,
        "revoke_in_process_ms": [round(1000 * v, 2) for v in revoke_s],
        "revocations": [
            {
                "label": r.label,
                "ms": round(r.ms, 2),
                "crl_visible_s": None if r.crl_s is None else round(r.crl_s, 2),
            }
            for r in revocations
        ],
        "ocsp_after_revoke": head.ocsp,
        "ocsp_after_revoke_ms": round(head.ocsp_ms, 2),
        "ocsp_probe_max_ms": round(1000 * max(probe), 1) if probe else None,
        "ocsp_runs": [
            {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()}
            for r in ocsp_runs
        ],
        "ocsp_service_per_s": round(service_ocsp, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
