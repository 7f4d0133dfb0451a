"""Factory-line provisioning throughput against its raw ceilings (issue 3).

The real factory line, ``fleetward factory run``, provisions ``--devices``
devices end to end in a subprocess against ``fleetward serve`` (another
subprocess, on 127.0.0.1), twice, each time on a fresh batch:

1. **software keys**: the station generates one P-256 key per device as an
   encrypted PKCS#8 file, makes the CSR and enrolls in chunks of 500 through
   ``POST /api/v1/provisioning/batches/{id}/enroll``. The factory works in
   the ``test`` environment, where software keys are allowed;
2. **PKCS#11 keys**: the same, with every key generated and kept on a
   SoftHSM2 token (``CKA_TOKEN``, sensitive, not extractable) and an
   attestation statement over a server nonce from a simulated secure element
   per device. The factory works in ``production``, with the tenant's
   dangerous option ``allow_unattested_keys_in_production`` switched **off**,
   so every key must be attested; the server records ``hardware-attested``.

The wall clock of each ``factory run`` (process start to exit, so it includes
the station's start-up, making the simulated chips and writing the manifest)
gives devices/s. Afterwards the manifest must list every device with a
certificate and no error (and, for PKCS#11, ``key_origin`` ``hardware-attested``),
and the batch's ``used_count`` must equal the count.

Ceilings measured in the same run, in this process, one core:

* pyca ``CertificateBuilder.sign`` of a prebuilt device certificate, and
  "CSR load + verify + build + sign" (the raw enrollment ceiling), as
  ``benchmarks/enroll.py`` measures them;
* the PKCS#11 ceiling: python-pkcs11 P-256 key-pair generation with
  ``store=True`` on an empty SoftHSM2 token, keys/s (a token key per device
  is the floor of the PKCS#11 line's cost);
* the station's own per-device work: a software key file + CSR, and (after
  the line, on the token then holding every device key) the agent
  keystore's PKCS#11 key + CSR, beside ``generate_pkcs11_signer`` with its
  label checks (two token-wide searches, linear in the token's objects on
  SoftHSM2), which the keystore skips by making each label unique.

The server runs with ``fleetward serve``'s default intervals.

Targets, as ratios to ceilings of the same run (issue 3 set none; these are
regression floors at half of its closing run's ratios): the software line
>= 0.05 of the raw enrollment ceiling (closing run 0.11), the PKCS#11 line
>= 0.43 of the on-token keygen ceiling (closing run 0.86). Errors: a factory
run that fails, or a manifest or batch that does not account for every
device (certificate, no error, key origin, ``used_count``).

    .venv/bin/python benchmarks/provision.py           # 10,000 devices per keystore
    .venv/bin/python benchmarks/provision.py --smoke   # CI size
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    Bench,
    Row,
    Server,
    fleetward_command,
    free_port,
    log,
    new_installation,
    rate,
)
from enroll import ca_material, make_csrs, raw_ceilings
from sqlalchemy import select

from fleetward.agent.keystore import Keystore, make_csr
from fleetward.agent.secure_element import SimulatedVendor
from fleetward.keys import generate_pkcs11_signer
from fleetward.provisioning import service as provisioning
from fleetward.provisioning.models import EnrollmentBatch
from fleetward.store import utcnow
from fleetward.tenancy import service as tenancy

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
FULL_DEVICES = 10_000  # devices per keystore, end to end (issue 3)
TARGET_SOFTWARE = 0.05
TARGET_SOFTWARE_SOURCE = "regression floor: half of issue 3's closing ratio 0.11"
TARGET_PKCS11 = 0.43
TARGET_PKCS11_SOURCE = "regression floor: half of issue 3's closing ratio 0.86"
SMOKE = {"devices": 100, "raw_seconds": 0.5, "keygen_seconds": 1.0, "station_seconds": 0.5}
HARDWARE = "hardware-attested"
CHUNK = 500  # devices per enroll request of the factory line (fleetward.agent.client.CHUNK)


@dataclass(frozen=True)
class SoftHsm:
    """A private SoftHSM2 configuration with two tokens: the line's and the ceiling's."""

    conf: Path
    line_token: str
    ceiling_token: str
    pin: str


def init_softhsm(root: Path) -> SoftHsm:
    """Write a ``softhsm2.conf`` under ``root`` and initialise two tokens in it."""
    tokens = root / "tokens"
    tokens.mkdir(parents=True)
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    hsm = SoftHsm(
        conf=conf,
        line_token=f"fw-bench-line-{secrets.token_hex(3)}",
        ceiling_token=f"fw-bench-ceil-{secrets.token_hex(3)}",
        pin=secrets.token_hex(8),
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    for label in (hsm.line_token, hsm.ceiling_token):
        subprocess.run(
            [
                "softhsm2-util",
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                hsm.pin,
                "--so-pin",
                secrets.token_hex(8),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
    return hsm


def pkcs11_keygen(
    hsm: SoftHsm, *, token_label: str, prefix: str, seconds: float
) -> tuple[float, int, float]:
    """(P-256 key pairs/s stored on a token, keys made, ms per search by label), python-pkcs11.

    The key template is the one fleetward uses for a device key; the search
    is the ``C_FindObjects`` by label that ``generate_pkcs11_signer`` makes
    before and after each key unless told the label is unique (for a label
    that does not exist, so it walks every object).
    """
    import pkcs11
    from pkcs11 import Attribute, KeyType, MechanismFlag
    from pkcs11.util.ec import encode_named_curve_parameters

    lib = pkcs11.lib(SOFTHSM_MODULE)
    token = lib.get_token(token_label=token_label)
    with token.open(user_pin=hsm.pin, rw=True) as session:
        params = session.create_domain_parameters(
            KeyType.EC,
            {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")},
            local=True,
        )
        count = 0

        def generate(i: int) -> None:
            nonlocal count
            params.generate_keypair(
                id=secrets.token_bytes(16),
                label=f"{prefix}-{i}",
                store=True,
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={Attribute.PRIVATE: False},
                private_template={
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.DERIVE: False,
                },
            )
            count += 1

        for i in range(3):  # the token's first objects cost more: not the steady rate
            generate(-1 - i)
        per_s = rate(generate, seconds=seconds, min_calls=20)
        searches = 10
        t0 = time.perf_counter()
        for i in range(searches):
            list(session.get_objects({Attribute.LABEL: f"{prefix}-absent-{i}"}))
        search_ms = 1000 * (time.perf_counter() - t0) / searches
    return per_s, count, search_ms


def station_software_rate(directory: Path, seconds: float) -> float:
    """Software key file (encrypted PKCS#8, fsync) + CSR per second, as the station does."""
    store = Keystore("software", directory=directory)
    return rate(
        lambda i: make_csr(store.generate(f"station-{i}"), f"station-{i}"),
        seconds=seconds,
        min_calls=20,
    )


def station_pkcs11_rates(hsm: SoftHsm, directory: Path, seconds: float) -> tuple[float, float]:
    """Per second on the line token: (agent keystore key + CSR, as the factory line makes
    them; ``generate_pkcs11_signer`` with its label checks + CSR)."""
    store = Keystore(
        "pkcs11",
        directory=directory,
        token_label=hsm.line_token,
        pin=hsm.pin,
        module=SOFTHSM_MODULE,
    )

    def agent(i: int) -> None:
        signer = store.generate(f"after-{i}")
        try:
            make_csr(signer, f"after-{i}")
        finally:
            signer.close()

    def checked(i: int) -> None:
        signer = generate_pkcs11_signer(
            token_label=hsm.line_token,
            key_label=f"checked-{i}",
            pin=hsm.pin,
            module=SOFTHSM_MODULE,
            unique_label=False,
        )
        try:
            make_csr(signer, f"checked-{i}")
        finally:
            signer.close()

    return (
        rate(agent, seconds=seconds, min_calls=5),
        rate(checked, seconds=seconds, min_calls=5),
    )


@dataclass
class LineResult:
    """What one ``fleetward factory run`` did."""

    keystore: str
    environment: str
    devices: int
    wall_s: float = 0.0
    exit_code: int | None = None
    station_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    samples: list[tuple[float, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    key_origins: dict[str, int] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        """Devices provisioned per second of wall clock (only if all were)."""
        return self.devices / self.wall_s if self.wall_s and not self.problems else 0.0

    def halves(self) -> tuple[float, float]:
        """Devices/s in the first and the second half of the devices (from progress samples)."""
        reached = next(((t, n) for t, n in self.samples if n >= self.devices / 2), None)
        if reached is None or not self.wall_s or reached[0] >= self.wall_s:
            return 0.0, 0.0
        t_half, n_half = reached
        return n_half / t_half, (self.devices - n_half) / (self.wall_s - t_half)

    def chunk_seconds(self) -> list[float]:
        """Seconds per chunk of the factory line (the first includes the station's start-up)."""
        marks = [0.0]
        for k in range(CHUNK, self.devices + CHUNK, CHUNK):
            t = next((t for t, n in self.samples if n >= min(k, self.devices)), None)
            if t is None:
                break
            marks.append(t)
        return [round(b - a, 1) for a, b in itertools.pairwise(marks)]

    def summary(self) -> dict[str, Any]:
        """Figures for the JSON line."""
        first, second = self.halves()
        return {
            "keystore": self.keystore,
            "environment": self.environment,
            "devices": self.devices,
            "wall_s": round(self.wall_s, 2),
            "devices_per_s": round(self.per_s, 1),
            "first_half_per_s": round(first, 1),
            "second_half_per_s": round(second, 1),
            "station_cores": round(self.station_cpu_s / self.wall_s, 2) if self.wall_s else 0,
            "server_cores": round(self.server_cpu_s / self.wall_s, 2) if self.wall_s else 0,
            "chunk_seconds": self.chunk_seconds(),
            "exit_code": self.exit_code,
            "key_origins": self.key_origins,
            "verified": not self.problems,
            "problems": self.problems,
        }


def _count_dirs(path: Path) -> int:
    with contextlib.suppress(FileNotFoundError), os.scandir(path) as it:
        return sum(1 for _ in it)
    return 0


def run_line(
    *,
    server: Server,
    ctx_db: Any,
    result: LineResult,
    batch_id: int,
    token: str,
    out: Path,
    extra: list[str],
    env: dict[str, str],
    timeout: float,
) -> None:
    """Run ``fleetward factory run`` to the end (or the timeout), then check what it did."""
    cmd = [
        *fleetward_command(),
        "--home",
        str(out.parent / "station-home"),
        "factory",
        "run",
        "--batch",
        str(batch_id),
        "--count",
        str(result.devices),
        "--server",
        server.base,
        "--token",
        token,
        "--dir",
        str(out),
        "--keystore",
        result.keystore,
        *extra,
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"factory-{result.keystore}.log"
    devices_dir = out / "devices"
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = server.cpu_seconds()
    last_report = 0.0
    with log_path.open("wb") as fh:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            while True:
                try:
                    proc.wait(timeout=0.25)
                    break
                except subprocess.TimeoutExpired:
                    pass
                now = time.perf_counter() - start
                done = _count_dirs(devices_dir)
                result.samples.append((now, done))
                if now - last_report >= 30:
                    last_report = now
                    log.print(f"  {result.keystore}: {done:,}/{result.devices:,} after {now:.0f} s")
                if now > timeout:
                    result.problems.append(f"stopped after the {timeout:.0f} s timeout")
                    break
        finally:
            if proc.poll() is None:
                # The group is the one this script created for the factory line alone.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        result.wall_s = time.perf_counter() - start
    result.samples.append((result.wall_s, _count_dirs(devices_dir)))
    result.server_cpu_s = server.cpu_seconds() - server_before
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result.station_cpu_s = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    result.exit_code = proc.returncode
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        result.problems.append(f"factory run exited {proc.returncode}")
        log.print(f"[red]factory run ({result.keystore}) exited {proc.returncode}:[/red]\n{tail}")
    verify_line(result, out / "manifest.json", ctx_db, batch_id)


def verify_line(result: LineResult, manifest_path: Path, db: Any, batch_id: int) -> None:
    """The manifest lists every device, certified, without error; the batch counted them."""
    if not manifest_path.exists():
        result.problems.append("no manifest.json")
        return
    devices = json.loads(manifest_path.read_text())["devices"]
    errors = [d for d in devices if d["error"] is not None]
    serials = {d["serial"] for d in devices if d["serial"]}
    origins: dict[str, int] = {}
    for d in devices:
        origins[str(d["key_origin"])] = origins.get(str(d["key_origin"]), 0) + 1
    result.key_origins = origins
    if len(devices) != result.devices:
        result.problems.append(f"manifest lists {len(devices)} devices, not {result.devices}")
    if errors:
        result.problems.append(f"{len(errors)} device errors, first: {errors[0]['error']}")
    if len(serials) != len(devices) - len(errors):
        result.problems.append("certificate serials missing or repeated")
    if result.keystore == "pkcs11" and origins.get(HARDWARE, 0) != len(devices):
        result.problems.append(f"key origins {origins}, expected all {HARDWARE}")
    with db.read() as s:
        used = s.execute(
            select(EnrollmentBatch.used_count).where(EnrollmentBatch.id == batch_id)
        ).scalar_one()
    if used != result.devices:
        result.problems.append(f"batch {batch_id} used_count {used}, expected {result.devices}")


def setup_line(
    ctx: Any, admin_token: str, *, name: str, environment: str, prefix: str, devices: int
) -> tuple[int, str]:
    """A factory, its station token and a serial-range batch of ``devices``; (batch id, token)."""
    with ctx.db.session() as s:
        who = tenancy.authenticate(s, admin_token)
        factory = provisioning.create_factory(s, who, name=name, environment=environment)
        _, token = provisioning.create_factory_token(
            s, who, factory_id=factory.id, name=f"{name}-station"
        )
        batch = provisioning.create_batch(
            s,
            who,
            factory_id=factory.id,
            product="bench-sensor",
            expires_at=utcnow() + dt.timedelta(days=1),
            range_prefix=prefix,
            range_start=1,
            range_end=devices,
            range_width=6,
        )
        return batch.id, token


_stopping: dict[str, bool] = {"now": False}


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # Unwind like Ctrl-C, once: the factory line and the server are stopped and
    # the temp directory is removed by the ``finally`` blocks; a signal that
    # arrives while they run must not cut them short.
    if not _stopping["now"]:
        _stopping["now"] = True
        raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    bench = Bench("provision", __doc__ or "")
    p = bench.parser
    p.add_argument("--devices", type=int, default=FULL_DEVICES, help="devices per keystore")
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    p.add_argument("--keystores", default="software,pkcs11", help="lines to run, comma-separated")
    p.add_argument("--raw-seconds", type=float, default=3.0, help="time per raw ceiling")
    p.add_argument(
        "--keygen-seconds", type=float, default=10.0, help="time for the PKCS#11 keygen ceiling"
    )
    p.add_argument(
        "--station-seconds", type=float, default=3.0, help="time per station-side figure"
    )
    p.add_argument(
        "--timeout", type=float, default=7200.0, help="seconds before a factory run is stopped"
    )
    args = bench.parse(argv, smoke=SMOKE)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    keystores = [k.strip() for k in args.keystores.split(",") if k.strip()]
    if not set(keystores) <= {"software", "pkcs11"} or not keystores:
        p.error("--keystores takes software and/or pkcs11")
    if "pkcs11" in keystores and (
        not Path(SOFTHSM_MODULE).exists() or shutil.which("softhsm2-util") is None
    ):
        p.error(f"the pkcs11 line needs SoftHSM2 ({SOFTHSM_MODULE}, softhsm2-util)")
    return bench.run(lambda: run(bench, args, keystores))


def run(bench: Bench, args: Any, keystores: list[str]) -> None:
    n = args.devices
    bench.title = f"Factory-line provisioning, {n:,} devices per keystore"
    lines: dict[str, LineResult] = {}
    tmp = Path(tempfile.mkdtemp(prefix="fw-bench-provision-"))
    try:
        port = free_port()
        log.print(f"initialising a fleetward home in {tmp}")
        ctx, admin_token = new_installation(tmp, port=port)
        # Production must refuse unattested keys for the PKCS#11 line to prove attestation.
        with ctx.db.session() as s:
            tenancy.set_allow_unattested(s, tenancy.authenticate(s, admin_token), allow=False)
        vendor_dir = tmp / "vendor"
        vendor = SimulatedVendor.open(vendor_dir)
        with ctx.db.session() as s:
            provisioning.register_root(
                s,
                tenancy.authenticate(s, admin_token),
                name="simulated secure elements",
                certificate_pem=vendor.root_pem().encode(),
            )
        # The vendor ships chips in advance; the station gets the tray, never the vendor's key.
        tray = tmp / "chips"
        if "pkcs11" in keystores:
            vendor.ship(tray, count=n)
        plan = {
            "software": ("test", "SW", []),
            "pkcs11": ("production", "HW", ["--secure-elements", str(tray)]),
        }
        batches = {
            k: setup_line(
                ctx,
                admin_token,
                name=f"line-{k}",
                environment=plan[k][0],
                prefix=plan[k][1],
                devices=n,
            )
            for k in keystores
        }

        log.print("raw ceilings (pyca, one core)")
        issuer, ca_key = ca_material(ctx, "production")
        raw_sign, raw_enroll = raw_ceilings(issuer, ca_key, make_csrs("raw", 500), args.raw_seconds)
        bench.ceiling(
            "raw_enroll",
            raw_enroll,
            unit="enrollments/s",
            label="CSR load+verify + build + sign, pyca, one core",
        )

        log.print("station: software key file + CSR (one core)")
        station_sw = station_software_rate(tmp / "station-ceiling-keys", args.station_seconds)

        hsm: SoftHsm | None = None
        keygen = 0.0
        p11: dict[str, float] = {}
        if "pkcs11" in keystores:
            hsm = init_softhsm(tmp / "softhsm")
            # SoftHSM2 reads its configuration when the module is first loaded here.
            os.environ["SOFTHSM2_CONF"] = str(hsm.conf)
            log.print(f"PKCS#11 ceiling: on-token P-256 keygen for {args.keygen_seconds:.0f} s")
            keygen, count, search_ms = pkcs11_keygen(
                hsm, token_label=hsm.ceiling_token, prefix="ceiling", seconds=args.keygen_seconds
            )
            p11.update(keygen_keys=count, search_ms_ceiling_token=search_ms)
            bench.ceiling(
                "pkcs11_keygen",
                keygen,
                unit="keys/s",
                label="P-256 keygen store=True on an empty SoftHSM2 token",
            )

        ctx.db.dispose()
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("FLEETWARD_", "SOFTHSM2_CONF"))
        }
        server = bench.server(home=tmp / "home", port=port, workers=args.workers)
        log.print(f"starting the server ({args.workers} worker(s))")
        with server:
            for k in keystores:
                environment, _, extra = plan[k]
                batch_id, token = batches[k]
                line_env = dict(env)
                if k == "pkcs11":
                    assert hsm is not None
                    line_env["SOFTHSM2_CONF"] = str(hsm.conf)
                    extra = [
                        *extra,
                        "--pkcs11-token",
                        hsm.line_token,
                        "--pkcs11-pin",
                        hsm.pin,
                    ]
                lines[k] = LineResult(keystore=k, environment=environment, devices=n)
                log.print(f"factory line, {k} keys, {environment}: {n:,} devices")
                run_line(
                    server=server,
                    ctx_db=ctx.db,
                    result=lines[k],
                    batch_id=batch_id,
                    token=token,
                    out=tmp / f"line-{k}" / "out",
                    extra=extra,
                    env=line_env,
                    timeout=args.timeout,
                )
                log.print(
                    f"  {k}: {lines[k].wall_s:.1f} s, "
                    + ("verified" if not lines[k].problems else "; ".join(lines[k].problems))
                )
                bench.count(
                    f"factory line, {k} keys",
                    len(lines[k].problems),
                    first="; ".join(lines[k].problems),
                )
            server_log_tail = server.log_tail(5)

        if hsm is not None and "pkcs11" in lines:
            log.print(f"PKCS#11 on the line token after {n:,} devices: raw keygen, search")
            keygen_after, _, search_ms = pkcs11_keygen(
                hsm, token_label=hsm.line_token, prefix="after-raw", seconds=args.station_seconds
            )
            p11.update(keygen_after_per_s=keygen_after, search_ms_line_token=search_ms)
            log.print("station: PKCS#11 key + CSR on the line token (agent keystore, checked)")
            p11["station_per_s_after"], p11["checked_label_per_s_after"] = station_pkcs11_rates(
                hsm, tmp / "station-pkcs11", args.station_seconds
            )
        ctx.db.dispose()
    finally:
        _stopping["now"] = True  # SIGTERM from here on is ignored: finish cleaning up
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        Row("raw: CertificateBuilder.sign, prebuilt (P-256)", f"{raw_sign:,.0f}/s"),
        bench.ceiling_row("raw_enroll", f"{raw_enroll:,.0f}/s"),
        Row(
            "station: software key file + CSR, 1 core",
            f"{station_sw:,.0f}/s",
            f"{station_sw / raw_enroll:.2f}",
        ),
    ]
    if hsm is not None:
        rows.append(bench.ceiling_row("pkcs11_keygen", f"{keygen:,.1f}/s"))
    if "station_per_s_after" in p11:
        rows += [
            Row(
                f"PKCS#11: same keygen on the line token after {n:,} devices",
                f"{p11['keygen_after_per_s']:,.1f}/s",
                f"{p11['keygen_after_per_s'] / keygen:.2f}",
            ),
            Row(
                f"PKCS#11: one search by label (C_FindObjects), ceiling token "
                f"({p11['keygen_keys']:,.0f} keys) / line token after the line",
                f"{p11['search_ms_ceiling_token']:.2f} / {p11['search_ms_line_token']:.1f} ms",
            ),
            Row(
                "station: agent keystore PKCS#11 key + CSR, after the line",
                f"{p11['station_per_s_after']:,.1f}/s",
                f"{p11['station_per_s_after'] / keygen:.2f}",
            ),
            Row(
                "  same with label checks (generate_pkcs11_signer, unique_label=False)",
                f"{p11['checked_label_per_s_after']:,.1f}/s",
                f"{p11['checked_label_per_s_after'] / keygen:.2f}",
            ),
        ]
    for k, line in lines.items():
        software = k == "software"
        rows.append(
            bench.target(
                f"{k}_line",
                label=f"factory line, {k} keys ({line.environment}), {args.workers} worker(s)",
                value=line.per_s,
                ceiling="raw_enroll" if software else "pkcs11_keygen",
                op=">=",
                goal=TARGET_SOFTWARE if software else TARGET_PKCS11,
                source=TARGET_SOFTWARE_SOURCE if software else TARGET_PKCS11_SOURCE,
                shown=f"{line.per_s:,.1f}/s",
            )
        )
    bench.rows += rows
    bench.notes += [
        "ratio: software line / raw enrollment ceiling of ONE core; PKCS#11 line / on-token "
        "keygen ceiling (SoftHSM2, one session); the server may use both cores.",
        "devices/s = devices / wall clock of `fleetward factory run` (process start to exit: "
        "start-up, simulated chips, keys, CSRs, statements, HTTP, files, manifest).",
        "software line: factory in `test` (software keys allowed); PKCS#11 line: factory in "
        "`production` with allow_unattested_keys_in_production OFF, attested by simulated "
        "secure elements.",
        f"server: `fleetward serve --workers {args.workers}` on 127.0.0.1, SQLite WAL; station "
        f"and server share the 2 cores. Issue 3's size is {FULL_DEVICES:,} devices per "
        "keystore (the full run).",
    ]
    for k, line in lines.items():
        summ = line.summary()
        bench.notes.append(
            f"{k}: {summ['wall_s']:.1f} s wall; first half {summ['first_half_per_s']:,.1f}/s, "
            f"second half {summ['second_half_per_s']:,.1f}/s; station "
            f"{summ['station_cores']:.2f} cores, server {summ['server_cores']:.2f} cores; key "
            f"origins {summ['key_origins']}; seconds per chunk of {CHUNK}: "
            f"{summ['chunk_seconds']}"
        )
    if any(line.problems for line in lines.values()):
        bench.notes.append(f"server log tail: {server_log_tail!r}")
    bench.figures = {
        "raw_sign_per_s": round(raw_sign, 1),
        "pkcs11": {k: round(v, 2) for k, v in p11.items()},
        "station_software_key_csr_per_s": round(station_sw, 1),
        "lines": {k: line.summary() for k, line in lines.items()},
        "devices": n,
        "server_workers": args.workers,
    }


if __name__ == "__main__":
    sys.exit(main())
