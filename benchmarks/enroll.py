"""Enrollment throughput against its raw ceiling (issue 2).

Measured in one run, each figure on its own distinct devices:

1. the raw ceiling, pyca only, one core: ``CertificateBuilder.sign`` of a
   prebuilt device-profile certificate (P-256 issuer, SHA-256), and "CSR
   load + verify + build + sign", which is the most one enrollment can reach
   per core;
2. enrollments/s through the service layer (``issuance.enroll``, one
   transaction per device, in this process, one thread);
3. enrollments/s over HTTP, ``POST /api/v1/devices/{id}/certificates`` with many
   concurrent keep-alive connections, for each server worker count asked;
4. enrollments/s over HTTP through ``POST /api/v1/enrollments``.

Device keys and CSRs (one P-256 key per device, CN = device id) are made
before any timing starts. The server runs in a subprocess on 127.0.0.1 with
``fleetward serve``'s default intervals.

Targets, as ratios to the one-core raw ceiling (2.) of the same run: HTTP
single requests >= 0.09, batch >= 0.36 (issue 2's 500/s and 2,000/s over
the 5,555/s ceiling its closing run measured), at the best worker count.
Errors: any refused enrollment in any pass.

    .venv/bin/python benchmarks/enroll.py           # 20,000 devices per mode, 1 and 2 workers
    .venv/bin/python benchmarks/enroll.py --smoke   # CI size
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (
    Bench,
    LoadResult,
    Row,
    Server,
    free_port,
    json_request,
    log,
    new_installation,
    rate,
    run_load,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
)
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from fleetward.errors import FleetwardError
from fleetward.identity import issuance
from fleetward.identity.models import CertificateAuthority
from fleetward.tenancy import service as tenancy

# Targets: ratios to the one-core raw enrollment ceiling measured in the run.
# Issue 2 asked for 500/s single and 2,000/s batch over HTTP; its closing run
# measured the ceiling at 5,555/s, so 500 / 5,555 and 2,000 / 5,555.
TARGET_SINGLE = 0.09
TARGET_BATCH = 0.36
TARGET_SOURCE = "issue 2: 500/s single, 2,000/s batch at a 5,555/s ceiling"
ENV = "production"
SMOKE = {"devices": 200, "workers": "1", "raw_seconds": 0.5}


def make_csrs(prefix: str, count: int) -> list[tuple[str, bytes]]:
    """``count`` (device id, CSR PEM) pairs, each with its own P-256 key and CN."""
    out = []
    for i in range(count):
        device_id = f"{prefix}-{i:06d}"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .sign(key, hashes.SHA256())
        )
        out.append((device_id, csr.public_bytes(Encoding.PEM)))
    return out


def device_builder(
    public_key: CertificatePublicKeyTypes, device_id: str, issuer: x509.Certificate
) -> x509.CertificateBuilder:
    """A certificate shaped like fleetward's device profile, in plain pyca."""
    now = dt.datetime.now(dt.UTC)
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    uri = f"urn:fleetward:default:device:{device_id}"
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, device_id),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ENV),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "default"),
                ]
            )
        )
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.CertificatePolicies(
                [x509.PolicyInformation(x509.ObjectIdentifier("2.25.1.2"), None)]
            ),
            critical=False,
        )
        .add_extension(
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier("http://127.0.0.1/crl/3.crl")],
                        None,
                        None,
                        None,
                    )
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier("http://127.0.0.1/ocsp"),
                    )
                ]
            ),
            critical=False,
        )
    )


def raw_ceilings(
    issuer: x509.Certificate,
    key: CertificateIssuerPrivateKeyTypes,
    csrs: list[tuple[str, bytes]],
    seconds: float,
) -> tuple[float, float]:
    """(prebuilt builder sign/s, CSR verify + build + sign/s), pyca only, this thread."""
    sample = x509.load_pem_x509_csr(csrs[0][1])
    prebuilt = device_builder(sample.public_key(), csrs[0][0], issuer)
    sign_per_s = rate(lambda _i: prebuilt.sign(key, hashes.SHA256()), seconds=seconds)

    def enroll_once(i: int) -> None:
        device_id, pem = csrs[i % len(csrs)]
        csr = x509.load_pem_x509_csr(pem)
        if not csr.is_signature_valid:
            raise RuntimeError("bad CSR")
        device_builder(csr.public_key(), device_id, issuer).sign(key, hashes.SHA256())

    return sign_per_s, rate(enroll_once, seconds=seconds)


def single_requests(token: str, csrs: list[tuple[str, bytes]]) -> list[bytes]:
    """One pre-encoded enroll request per device."""
    return [
        json_request(
            "POST",
            f"/api/v1/devices/{device_id}/certificates",
            {"csr": pem.decode(), "environment": ENV},
            token=token,
        )
        for device_id, pem in csrs
    ]


def batch_requests(token: str, csrs: list[tuple[str, bytes]], batch_size: int) -> list[bytes]:
    """Pre-encoded batch enroll requests of ``batch_size`` devices."""
    return [
        json_request(
            "POST",
            "/api/v1/enrollments",
            {
                "environment": ENV,
                "items": [
                    {"device_id": d, "csr": pem.decode()} for d, pem in csrs[i : i + batch_size]
                ],
            },
            token=token,
        )
        for i in range(0, len(csrs), batch_size)
    ]


def measured_load(
    server: Server, requests: list[bytes], concurrency: int, on_body: Any = None
) -> tuple[LoadResult, float, float]:
    """Run a load; returns (result, server cores used, client cores used)."""
    server_cpu, client_cpu = server.cpu_seconds(), time.process_time()
    result = run_load(server.port, requests, concurrency=concurrency, on_body=on_body)
    return (
        result,
        (server.cpu_seconds() - server_cpu) / result.elapsed,
        (time.process_time() - client_cpu) / result.elapsed,
    )


def ca_material(ctx: Any, env: str) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    """The active issuing CA of ``env`` (certificate, file-backed private key)."""
    with ctx.db.read() as s:
        ca = s.execute(
            select(CertificateAuthority).where(
                CertificateAuthority.kind == "issuing",
                CertificateAuthority.environment == env,
                CertificateAuthority.status == "active",
            )
        ).scalar_one()
        issuer = ctx.pki.certificate(ca)
        key = ctx.pki.keyring.open(ca.key_uri).builder_key()
    if key is None:
        raise RuntimeError("the benchmark needs a file-backed CA key")
    return issuer, key


def main(argv: list[str] | None = None) -> int:
    bench = Bench("enroll", __doc__ or "")
    p = bench.parser
    p.add_argument("--devices", type=int, default=20000, help="devices per mode")
    p.add_argument("--workers", default="1,2", help="server worker counts to run, comma-separated")
    p.add_argument("--concurrency", type=int, default=16, help="connections, single mode")
    p.add_argument("--batch-size", type=int, default=1000, help="items per batch (<= 1000)")
    p.add_argument("--batch-concurrency", type=int, default=2, help="batches in flight")
    p.add_argument("--raw-seconds", type=float, default=3.0, help="time per raw ceiling")
    args = bench.parse(argv, smoke=SMOKE)
    return bench.run(lambda: run(bench, args))


def run(bench: Bench, args: Any) -> None:
    worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    n = args.devices
    bench.title = f"Enrollment, {n:,} devices per mode (P-256, SHA-256)"

    with tempfile.TemporaryDirectory(prefix="fw-bench-enroll-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        log.print(f"initialising a fleetward home in {tmp}")
        ctx, token = new_installation(tmp, port=port)

        modes = ["svc"] + [f"h{w}{m}" for w in worker_counts for m in ("s", "b")]
        t0 = time.perf_counter()
        csrs = {mode: make_csrs(mode, n) for mode in modes}
        raw_pool = make_csrs("raw", min(2000, n))
        keygen_s = time.perf_counter() - t0
        log.print(
            f"pre-generated {n * len(modes) + len(raw_pool)} P-256 keys + CSRs in {keygen_s:.1f} s"
        )
        with ctx.db.read() as s:
            principal = tenancy.authenticate(s, token)
        issuer, ca_key = ca_material(ctx, ENV)

        log.print("raw ceilings (pyca, one core)")
        raw_sign, raw_enroll = raw_ceilings(issuer, ca_key, raw_pool, args.raw_seconds)
        bench.ceiling(
            "raw_enroll",
            raw_enroll,
            unit="enrollments/s",
            label="CSR load+verify + build + sign, pyca, one core",
        )

        log.print(f"service layer: {n} enrollments, one transaction each")
        refused, first = 0, ""
        start = time.perf_counter()
        for device_id, pem in csrs["svc"]:
            try:
                with ctx.db.session() as s:
                    issuance.enroll(
                        s, ctx.pki, principal, device_id=device_id, csr=pem, environment=ENV
                    )
            except FleetwardError as exc:
                refused += 1
                first = first or f"{device_id}: {exc}"
        service_per_s = (n - refused) / (time.perf_counter() - start)
        bench.count("service enroll", refused, first=first)
        ctx.db.dispose()

        http: dict[str, dict[str, Any]] = {}
        for w in worker_counts:
            server = bench.server(home=tmp / "home", port=port, workers=w)
            log.print(f"HTTP, {w} worker(s): starting the server")
            single_reqs = single_requests(token, csrs[f"h{w}s"])
            batch_reqs = batch_requests(token, csrs[f"h{w}b"], args.batch_size)
            issued = 0

            def count(status: int, body: bytes) -> None:
                nonlocal issued
                if status == 200:
                    issued += int(json.loads(body)["issued"])

            with server:
                log.print(f"HTTP single, {w} worker(s): {n} requests, {args.concurrency} conns")
                single, s_srv, s_cli = measured_load(server, single_reqs, args.concurrency)
                log.print(f"HTTP batch, {w} worker(s): batches of {args.batch_size}")
                batch, b_srv, b_cli = measured_load(
                    server, batch_reqs, args.batch_concurrency, count
                )
            ok_single = single.statuses.get(201, 0)
            bench.count(f"HTTP single, {w} worker(s)", n - ok_single, first=single.first_error)
            bench.count(
                f"HTTP batch, {w} worker(s)",
                n - issued,
                first=batch.first_error or f"{n - issued} items not issued",
            )
            http[str(w)] = {
                "single_per_s": ok_single / single.elapsed,
                "single_ok": ok_single,
                "single_p50_ms": single.percentile(50),
                "single_p99_ms": single.percentile(99),
                "single_server_cores": s_srv,
                "single_client_cores": s_cli,
                "batch_per_s": issued / batch.elapsed,
                "batch_issued": issued,
                "batch_requests": batch.sent,
                "batch_p50_ms": batch.percentile(50),
                "batch_server_cores": b_srv,
                "batch_client_cores": b_cli,
            }

    best_single_w = max(http, key=lambda w: http[w]["single_per_s"])
    best_batch_w = max(http, key=lambda w: http[w]["batch_per_s"])
    single_per_s = http[best_single_w]["single_per_s"]
    batch_per_s = http[best_batch_w]["batch_per_s"]

    def ratio(v: float) -> str:
        return f"{v / raw_enroll:.3g}"

    bench.rows += [
        Row("raw: CertificateBuilder.sign, prebuilt (P-256)", f"{raw_sign:,.0f}/s"),
        bench.ceiling_row("raw_enroll", f"{raw_enroll:,.0f}/s"),
        Row(
            "issuance.enroll, 1 txn per device, 1 thread",
            f"{service_per_s:,.0f}/s",
            ratio(service_per_s),
        ),
    ]
    for workers, fig in http.items():
        bench.rows.append(
            Row(
                f"HTTP single, {workers} worker(s), {args.concurrency} conns",
                f"{fig['single_per_s']:,.0f}/s",
                ratio(fig["single_per_s"]),
            )
        )
        bench.rows.append(
            Row(
                f"HTTP batch of {args.batch_size}, {workers} worker(s), "
                f"{args.batch_concurrency} in flight",
                f"{fig['batch_per_s']:,.0f}/s",
                ratio(fig["batch_per_s"]),
            )
        )
    bench.rows += [
        bench.target(
            "http_single",
            label=f"HTTP single, best ({best_single_w} worker(s))",
            value=single_per_s,
            ceiling="raw_enroll",
            op=">=",
            goal=TARGET_SINGLE,
            source=TARGET_SOURCE,
            shown=f"{single_per_s:,.0f}/s",
        ),
        bench.target(
            "http_batch",
            label=f"HTTP batch, best ({best_batch_w} worker(s))",
            value=batch_per_s,
            ceiling="raw_enroll",
            op=">=",
            goal=TARGET_BATCH,
            source=TARGET_SOURCE,
            shown=f"{batch_per_s:,.0f}/s",
        ),
    ]
    bench.notes += [
        "ratio = figure / raw per-enrollment ceiling of ONE core (with 2 workers the server "
        "may use both cores).",
        f"Device keys and CSRs pre-generated (one P-256 key per device) in {keygen_s:.1f} s, "
        "before timing.",
        "Client: asyncio raw HTTP/1.1 keep-alive, in the benchmark process; server: "
        "`fleetward serve` (uvicorn) in a subprocess on 127.0.0.1; SQLite WAL.",
        *(
            f"{w} worker(s): single p50 {f['single_p50_ms']:.0f} ms, p99 "
            f"{f['single_p99_ms']:.0f} ms, server {f['single_server_cores']:.2f} cores, "
            f"client {f['single_client_cores']:.2f}; batch p50 {f['batch_p50_ms']:.0f} ms, "
            f"server {f['batch_server_cores']:.2f} cores, client {f['batch_client_cores']:.2f}"
            for w, f in http.items()
        ),
    ]
    bench.figures = {
        "raw_sign_per_s": round(raw_sign, 1),
        "service_per_s": round(service_per_s, 1),
        "http_single_per_s": round(single_per_s, 1),
        "http_single_workers": int(best_single_w),
        "http_batch_per_s": round(batch_per_s, 1),
        "http_batch_workers": int(best_batch_w),
        "http_by_workers": {
            w: {k: (round(v, 2) if isinstance(v, float) else v) for k, v in f.items()}
            for w, f in http.items()
        },
        "devices": n,
        "client": "asyncio-raw-http1.1",
    }


if __name__ == "__main__":
    sys.exit(main())
