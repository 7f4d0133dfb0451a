"""Revocation-to-disconnect latency at the broker: 1 device, N devices, a cohort.

Set-up: a fresh installation and, in this process, what ``fleetward up``
runs beside the API (``runtime.stack.up_stack``: Mosquitto with the
fleetward plugin, the broker sync worker, the CRL publisher, the campaign
driver, detection, ingest and the compliance tracker), every worker at its
default interval, on 127.0.0.1. Devices are enrolled in the ``test``
environment through ``issuance.enroll_many`` (keys and CSRs are made before
any timing) and connect as real TLS clients with their own certificates.

The devices are asyncio clients in ``--client-procs`` spawned processes (so
the clients never share the GIL with the sync worker they measure). Each
speaks just enough MQTT 5: CONNECT (keepalive 0, so an idle device sends
nothing), one QoS 1 PUBLISH to its own telemetry topic (the PUBACK proves the
plugin lists it), then it reads until the broker's DISCONNECT (0x98,
administrative action) or EOF and reports that moment (``time.monotonic``,
the same clock in every process) to this process. 10,000 paho clients would
need 10,000 threads; these cost a socket and a task each.

Measured (from just before the revoking transaction begins to the moment the
client sees the disconnect):

(a) one device: ``--samples`` times, enroll one device, wait until the
    plugin loaded a table listing it, connect it, pause a random moment
    (so neither the sync worker nor Mosquitto's idle wake-up is in phase
    with the revocation), ``identity.revoke_device`` in one session;
(b) ``--devices`` connected devices: ``--samples`` of them, spread over the
    set, revoked one at a time with random pauses; the others must stay;
(c) a cohort of ``--cohort`` connected devices revoked together
    (``identity.revoke_devices``, the set-based cohort path, in
    ``--cohort-txns`` transactions), timed until the last one is gone.

The ceiling is the floor the design sets: the sync worker's interval plus
the plugin's table stat period (read from ``fw_plugin.c``). Targets (issue
4: p99 <= 1 s for one device, <= 10 s for a 10,000-device cohort, at the
0.1 s + 0.05 s floor): p99 <= 6.6 floors in (a) and (b), the cohort's last
disconnect <= 66 floors. Errors: a revoked device not cut off within 10 s
(30 s for the cohort), a device cut off that was not revoked, a failed
worker round.

    .venv/bin/python benchmarks/revocation.py           # 1 and 1,000 devices, 10,000 cohort
    .venv/bin/python benchmarks/revocation.py --smoke   # CI size
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import queue
import random
import re
import resource
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _harness import (
    HOST,
    Bench,
    Row,
    free_port,
    log,
    new_installation,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import NameOID
from sqlalchemy import func, select

import fleetward.comms
from fleetward.comms.mosquitto_conf import Listeners
from fleetward.identity import issuance
from fleetward.identity import service as identity
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.runtime.stack import up_stack
from fleetward.telemetry.models import Event
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal

# Targets in floors (sync interval + plugin stat period): issue 4's 1 s and
# 10 s over the 0.15 s floor of the default 0.1 s interval and 50 ms period.
TARGET_ONE = 6.6
TARGET_COHORT = 66.0
TARGET_SOURCE = "issue 4: p99 <= 1 s, cohort <= 10 s, at a 0.15 s floor"
MOSQUITTO_IDLE_WAKE_S = 0.1  # Mosquitto 2.0 main loop: epoll timeout when nothing happens
SMOKE = {"devices": 50, "cohort": 200, "samples": 5}
ENV = "test"
TENANT = "default"
REASON = "keyCompromise"
ENROLL_BATCH = issuance.MAX_BATCH
_STAT_EVERY = re.compile(r"#define\s+STAT_EVERY_NS\s+(\d+)L?")
_TABLE_LINE = re.compile(
    r"fleetward: table generation (?P<gen>\d+), (?P<ids>\d+) identities, (?P<kicks>\d+) to cut off"
)


def plugin_stat_seconds() -> float:
    """How often the plugin checks its table file (``STAT_EVERY_NS`` in its source)."""
    source = Path(fleetward.comms.__file__).parent / "native" / "fw_plugin.c"
    m = _STAT_EVERY.search(source.read_text())
    if m is None:
        raise RuntimeError(f"STAT_EVERY_NS not found in {source}")
    return int(m.group(1)) / 1e9


# --------------------------------------------------------------------------- minimal MQTT 5

CONNACK, PUBACK, DISCONNECT = 0x20, 0x40, 0xE0


def _str(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str) -> bytes:
    """MQTT 5 CONNECT: clean start, keepalive 0, no properties, no credentials."""
    variable = _str(b"MQTT") + bytes([5, 0x02]) + struct.pack("!H", 0) + b"\x00"
    return _packet(0x10, variable + _str(client_id.encode()))


def publish_qos1(topic: str, packet_id: int, payload: bytes) -> bytes:
    """MQTT 5 PUBLISH, QoS 1, no properties."""
    return _packet(0x32, _str(topic.encode()) + struct.pack("!H", packet_id) + b"\x00" + payload)


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """(first byte, body) of the next MQTT packet."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, await reader.readexactly(length)


# --------------------------------------------------------------------------- client processes


class _Devices:
    """The asyncio side of one client process: many device connections."""

    def __init__(self, conn: multiprocessing.connection.Connection, port: int, ca: str) -> None:
        self.conn = conn
        self.port = port
        self.ca = ca
        self.writers: dict[str, asyncio.StreamWriter] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.closing = False
        self.done = asyncio.Event()
        self.jobs: set[asyncio.Task[None]] = set()

    def spawn(self, job: Any) -> None:
        task = asyncio.ensure_future(job)
        self.jobs.add(task)
        task.add_done_callback(self.jobs.discard)

    async def connect_one(self, device_id: str, pem: str, sem: asyncio.Semaphore) -> None:
        async with sem:
            ctx = ssl.create_default_context(cafile=self.ca)
            ctx.load_cert_chain(pem)
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(HOST, self.port, ssl=ctx, server_hostname=HOST), 60
            )
            try:
                writer.write(connect_packet(device_id))
                first, body = await asyncio.wait_for(read_packet(reader), 30)
                if first != CONNACK or len(body) < 2 or body[1] != 0:
                    raise RuntimeError(f"CONNACK {first:#x} {body[:4].hex()}")
                topic = f"fw/{TENANT}/{device_id}/telemetry/probe"
                writer.write(publish_qos1(topic, 1, b"p" * 64))
                first, body = await asyncio.wait_for(read_packet(reader), 30)
                code = body[2] if len(body) > 2 else 0
                # 0x10: accepted, no subscriber. Anything else: the plugin refused it.
                if first & 0xF0 != PUBACK or code not in (0x00, 0x10):
                    raise RuntimeError(f"probe PUBACK {first:#x} reason {code:#x}")
            except BaseException:
                writer.transport.abort()
                raise
        self.writers[device_id] = writer
        self.tasks[device_id] = asyncio.create_task(self.watch(device_id, reader, writer))

    async def watch(
        self, device_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            first, body = await read_packet(reader)
            reason = (
                f"DISCONNECT {body[0]:#04x}"
                if first == DISCONNECT and body
                else f"packet {first:#04x}"
            )
        except (asyncio.IncompleteReadError, OSError) as exc:
            reason = "EOF" if isinstance(exc, asyncio.IncompleteReadError) else type(exc).__name__
        seen = time.monotonic()
        if not self.closing:
            self.conn.send(("gone", device_id, seen, reason))
        self.writers.pop(device_id, None)
        writer.transport.abort()

    async def connect_all(self, devices: list[tuple[str, str]], concurrency: int) -> None:
        start = time.monotonic()
        sem = asyncio.Semaphore(concurrency)
        results = await asyncio.gather(
            *(self.connect_one(d, p, sem) for d, p in devices), return_exceptions=True
        )
        errors = [
            f"{d}: {type(r).__name__}: {r}"
            for (d, _), r in zip(devices, results, strict=True)
            if isinstance(r, BaseException)
        ]
        self.conn.send(("connected", len(devices) - len(errors), errors, time.monotonic() - start))

    async def close_all(self) -> None:
        self.closing = True
        # A clean MQTT DISCONNECT and TLS close_notify: an abrupt close makes
        # Mosquitto log an OpenSSL error per connection.
        for writer in self.writers.values():
            writer.write(b"\xe0\x00")
            writer.close()
        if self.writers:
            await asyncio.sleep(min(5.0, 0.5 + len(self.writers) / 5000))
        for writer in self.writers.values():
            writer.transport.abort()
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        count = len(self.tasks)
        self.writers.clear()
        self.tasks.clear()
        self.closing = False
        self.conn.send(("closed", count))

    def on_command(self) -> None:
        while self.conn.poll():
            cmd, *args = self.conn.recv()
            if cmd == "connect":
                self.spawn(self.connect_all(*args))
            elif cmd == "close":
                self.spawn(self.close_all())
            elif cmd == "exit":
                self.done.set()


def client_process(conn: multiprocessing.connection.Connection, port: int, ca: str) -> None:
    """Entry point of a client process: serve commands until ``exit``."""
    # Many sockets: take the whole open-file allowance.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def main() -> None:
        devices = _Devices(conn, port, ca)
        loop = asyncio.get_running_loop()
        loop.add_reader(conn.fileno(), devices.on_command)
        conn.send(("ready",))
        await devices.done.wait()
        await devices.close_all()

    asyncio.run(main())


@dataclass
class ConnectReport:
    """What the client processes said about one connect command."""

    connected: int
    errors: list[str]
    seconds: float


class ClientPool:
    """``procs`` client processes and the disconnect times they report."""

    def __init__(self, procs: int, port: int, ca: Path) -> None:
        mp = multiprocessing.get_context("spawn")  # this process runs threads: never fork it
        self.gone: dict[str, tuple[float, str]] = {}
        self.cond = threading.Condition()
        self.replies: list[queue.Queue[tuple[Any, ...]]] = []
        self.conns: list[multiprocessing.connection.Connection] = []
        self.procs: list[Any] = []
        self.readers: list[threading.Thread] = []
        for _ in range(procs):
            parent, child = mp.Pipe(duplex=True)
            proc = mp.Process(target=client_process, args=(child, port, str(ca)), daemon=True)
            proc.start()
            child.close()
            replies: queue.Queue[tuple[Any, ...]] = queue.Queue()
            reader = threading.Thread(target=self._read, args=(parent, replies), daemon=True)
            reader.start()
            self.conns.append(parent)
            self.procs.append(proc)
            self.replies.append(replies)
            self.readers.append(reader)
        for replies in self.replies:
            replies.get(timeout=120)  # "ready"

    def _read(
        self, conn: multiprocessing.connection.Connection, replies: queue.Queue[tuple[Any, ...]]
    ) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return
            if msg[0] == "gone":
                with self.cond:
                    self.gone[msg[1]] = (msg[2], msg[3])
                    self.cond.notify_all()
            else:
                replies.put(msg)

    def connect(
        self, devices: Sequence[tuple[str, Path]], *, concurrency: int, timeout: float = 1800
    ) -> ConnectReport:
        """Connect every device (spread over the processes); returns when all tried."""
        start = time.monotonic()
        shares: list[list[tuple[str, str]]] = [[] for _ in self.conns]
        for i, (device_id, pem) in enumerate(devices):
            shares[i % len(shares)].append((device_id, str(pem)))
        for conn, share in zip(self.conns, shares, strict=True):
            conn.send(("connect", share, concurrency))
        connected, errors = 0, []
        for replies in self.replies:
            _, ok, errs, _secs = replies.get(timeout=timeout)
            connected += ok
            errors += errs
        return ConnectReport(connected, errors, time.monotonic() - start)

    def wait_gone(self, ids: Sequence[str], *, until: float) -> dict[str, tuple[float, str]]:
        """Disconnect reports of ``ids`` seen by ``until`` (monotonic)."""
        want = set(ids)
        with self.cond:
            while not want <= self.gone.keys():
                left = until - time.monotonic()
                if left <= 0:
                    break
                self.cond.wait(left)
            return {d: self.gone[d] for d in want if d in self.gone}

    def close_all(self) -> int:
        """Close every connection that is still open; returns how many tasks ended."""
        for conn in self.conns:
            conn.send(("close",))
        return sum(replies.get(timeout=120)[1] for replies in self.replies)

    def stop(self) -> None:
        """Ask every process to exit, then make sure it did."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("exit",))
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
        for conn in self.conns:
            conn.close()


# --------------------------------------------------------------------------- devices


def make_csrs(prefix: str, count: int) -> list[tuple[str, ec.EllipticCurvePrivateKey, bytes]]:
    """``count`` (device id, P-256 key, CSR with CN = device id), made before any timing."""
    out = []
    for i in range(count):
        device_id = f"{prefix}-{i:05d}"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .sign(key, hashes.SHA256())
        )
        out.append((device_id, key, csr.public_bytes(Encoding.PEM)))
    return out


def enroll(
    ctx: AppContext,
    principal: Principal,
    material: list[tuple[str, ec.EllipticCurvePrivateKey, bytes]],
    folder: Path,
) -> list[tuple[str, Path]]:
    """Enroll in batches and write one PEM (certificate + key) per device."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for lo in range(0, len(material), ENROLL_BATCH):
        chunk = material[lo : lo + ENROLL_BATCH]
        items = [issuance.BatchItem(device_id=d, csr=c) for d, _, c in chunk]
        results = issuance.enroll_many(ctx.db, ctx.pki, principal, items=items, environment=ENV)
        for (device_id, key, _), result in zip(chunk, results, strict=True):
            if result.issued is None:
                raise RuntimeError(f"enrolling {device_id} failed: {result.error}")
            pem = folder / f"{device_id}.pem"
            pem.write_bytes(
                result.issued.certificate.public_bytes(Encoding.PEM)
                + key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
            )
            out.append((device_id, pem))
    return out


@dataclass
class TableState:
    """The newest table the plugin reported loading."""

    generation: int
    identities: int
    kicks: int


class TableWatch(list[str]):
    """Mosquitto's kept log lines (``MosquittoProcess.log_lines`` drops old ones
    in bursts) that also remember every table load the plugin logged."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[TableState] = []

    def append(self, line: str, /) -> None:
        if m := _TABLE_LINE.search(line):
            self.tables.append(TableState(int(m["gen"]), int(m["ids"]), int(m["kicks"])))
        super().append(line)


def free_listeners() -> Listeners:
    """A device listener per environment and the service listener, on free ports."""
    ports: set[int] = set()
    while len(ports) < 4:
        ports.add(free_port())
    test, production, drill, service = sorted(ports)
    return Listeners(
        host=HOST,
        ports={"test": test, "production": production, "drill": drill},
        service_port=service,
    )


def plugin_tables(runtime: BrokerRuntime) -> list[TableState]:
    """Every table load the plugin logged so far."""
    lines = runtime.mosquitto.log_lines
    assert isinstance(lines, TableWatch)
    return list(lines.tables)


def wait_table(runtime: BrokerRuntime, *, timeout: float = 60.0) -> TableState:
    """Bring the table up to date and wait until the plugin has loaded it."""
    runtime.sync.refresh()
    generation = runtime.sync.generation
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        loaded = [t for t in plugin_tables(runtime) if t.generation >= generation]
        if loaded:
            return loaded[-1]
        time.sleep(0.01)
    raise RuntimeError(f"the plugin did not load table generation {generation} in {timeout:g} s")


def table_rebuild_s(runtime: BrokerRuntime, repeat: int = 3) -> float:
    """Best of ``repeat`` ``BrokerSync.write_table()`` calls (snapshot + compile + write)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        runtime.sync.write_table()
        best = min(best, time.perf_counter() - start)
    return best


def revoke(ctx: AppContext, principal: Principal, device_ids: Sequence[str]) -> None:
    """``identity.revoke_device`` for each id, in one session (one transaction)."""
    with ctx.db.session() as s:
        for device_id in device_ids:
            identity.revoke_device(s, principal, device_id, reason=REASON)


def revoke_cohort(ctx: AppContext, principal: Principal, device_ids: Sequence[str]) -> None:
    """``identity.revoke_devices``: the set-based cohort revocation, one transaction."""
    with ctx.db.session() as s:
        identity.revoke_devices(s, principal, list(device_ids), reason=REASON)


# --------------------------------------------------------------------------- phases


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 50 samples is the maximum)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class Latencies:
    """One latency case."""

    label: str
    connected: int
    samples: list[float] = field(default_factory=list)  # seconds, revocation -> disconnect
    txn: list[float] = field(default_factory=list)  # seconds of the revoking transaction
    missed: list[str] = field(default_factory=list)  # not disconnected within the timeout
    collateral: int = 0  # devices that were not revoked but were disconnected
    builds: list[float] = field(default_factory=list)  # sync thread's table build, s
    table_identities: int = 0
    rebuild_s: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)

    def ms(self, p: float) -> float:
        return 1000 * percentile(self.samples, p)

    def as_dict(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "samples": len(self.samples),
            "p50_ms": round(self.ms(50), 1),
            "p99_ms": round(self.ms(99), 1),
            "max_ms": round(1000 * max(self.samples), 1) if self.samples else None,
            "min_ms": round(1000 * min(self.samples), 1) if self.samples else None,
            "txn_p50_ms": round(1000 * percentile(self.txn, 50), 2),
            "missed": len(self.missed),
            "collateral_disconnects": self.collateral,
            "table_identities": self.table_identities,
            "table_rebuild_ms": round(1000 * self.rebuild_s, 1),
            "sync_build_p50_ms": round(1000 * percentile(self.builds, 50), 1),
            "disconnect_reasons": self.reasons,
        }


def timed_revocation(
    ctx: AppContext,
    principal: Principal,
    runtime: BrokerRuntime,
    pool: ClientPool,
    device_id: str,
    result: Latencies,
    *,
    timeout: float,
) -> None:
    """Revoke one device and record how long until its client saw the disconnect."""
    start = time.monotonic()
    revoke(ctx, principal, [device_id])
    result.txn.append(time.monotonic() - start)
    seen = pool.wait_gone([device_id], until=start + timeout)
    if device_id in seen:
        at, reason = seen[device_id]
        result.samples.append(at - start)
        result.reasons[reason] = result.reasons.get(reason, 0) + 1
    else:
        result.missed.append(device_id)
    result.builds.append(runtime.sync.last_build_seconds)


def one_device_phase(
    ctx: AppContext,
    principal: Principal,
    runtime: BrokerRuntime,
    pool: ClientPool,
    tmp: Path,
    *,
    samples: int,
    jitter: float,
    rng: random.Random,
) -> Latencies:
    """(a): one enrolled and connected device at a time, revoked."""
    result = Latencies("1 connected device", connected=1)
    material = make_csrs("one", samples)
    for i, item in enumerate(material):
        [(device_id, pem)] = enroll(ctx, principal, [item], tmp / "one")
        table = wait_table(runtime)
        result.table_identities = max(result.table_identities, table.identities)
        if i == 0:
            result.rebuild_s = table_rebuild_s(runtime)
            wait_table(runtime)
        report = pool.connect([(device_id, pem)], concurrency=1)
        if report.connected != 1:
            raise RuntimeError(f"{device_id} did not connect: {report.errors}")
        time.sleep(rng.uniform(0.05, 0.05 + jitter))
        timed_revocation(ctx, principal, runtime, pool, device_id, result, timeout=10)
        if (i + 1) % 10 == 0:
            log.print(f"  {i + 1}/{samples}: p50 {result.ms(50):.0f} ms")
        time.sleep(0.2)  # let the sync round finish (CRL publication, SIGHUP)
    return result


def fleet_phase(
    ctx: AppContext,
    principal: Principal,
    runtime: BrokerRuntime,
    pool: ClientPool,
    tmp: Path,
    *,
    devices: int,
    samples: int,
    jitter: float,
    concurrency: int,
    rng: random.Random,
) -> tuple[Latencies, ConnectReport]:
    """(b): ``devices`` connected; ``samples`` of them revoked one at a time."""
    log.print(f"(b) enrolling {devices:,} devices")
    fleet = enroll(ctx, principal, make_csrs("fleet", devices), tmp / "fleet")
    table = wait_table(runtime)
    rebuild = table_rebuild_s(runtime)
    table = wait_table(runtime)
    log.print(f"  table lists {table.identities:,}; connecting {devices:,} clients")
    report = pool.connect(fleet, concurrency=concurrency)
    log.print(f"  {report.connected:,} connected in {report.seconds:.1f} s")
    if report.connected != devices:
        raise RuntimeError(f"{devices - report.connected} devices did not connect: {report.errors}")
    result = Latencies(f"{devices:,} connected devices", connected=report.connected)
    result.table_identities, result.rebuild_s = table.identities, rebuild
    time.sleep(1.0)
    targets = [fleet[i * devices // samples][0] for i in range(min(samples, devices))]
    for i, device_id in enumerate(targets):
        time.sleep(rng.uniform(0.1, 0.1 + jitter))
        timed_revocation(ctx, principal, runtime, pool, device_id, result, timeout=10)
        if (i + 1) % 10 == 0:
            log.print(f"  {i + 1}/{len(targets)}: p50 {result.ms(50):.0f} ms")
    time.sleep(0.5)
    with pool.cond:
        result.collateral = len(pool.gone.keys() & {d for d, _ in fleet} - set(targets))
    pool.close_all()
    return result, report


@dataclass
class Cohort:
    """(c): the cohort revocation."""

    size: int
    connected: int
    connect_s: float
    table_identities: int
    rebuild_s: float
    txns: int
    txn_s: float = 0.0
    gone: list[float] = field(default_factory=list)  # seconds from the start, sorted
    timeout_s: float = 0.0
    kicks_logged: list[int] = field(default_factory=list)
    after_tables: list[TableState] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def all_gone(self) -> bool:
        return len(self.gone) == self.size

    def at(self, fraction: float) -> float | None:
        """Seconds until ``fraction`` of the cohort was disconnected (None: never)."""
        need = max(1, round(fraction * self.size))
        return self.gone[need - 1] if len(self.gone) >= need else None


def cohort_phase(
    ctx: AppContext,
    principal: Principal,
    runtime: BrokerRuntime,
    pool: ClientPool,
    tmp: Path,
    *,
    size: int,
    txns: int,
    timeout: float,
    concurrency: int,
) -> Cohort:
    """(c): ``size`` devices connected, then all revoked; time until the last is cut off."""
    log.print(f"(c) enrolling {size:,} devices")
    cohort = enroll(ctx, principal, make_csrs("cohort", size), tmp / "cohort")
    wait_table(runtime)
    rebuild = table_rebuild_s(runtime)
    table = wait_table(runtime)
    log.print(f"  table lists {table.identities:,}; connecting {size:,} clients")
    report = pool.connect(cohort, concurrency=concurrency)
    log.print(f"  {report.connected:,} connected in {report.seconds:.1f} s")
    if report.connected != size:
        raise RuntimeError(
            f"{size - report.connected} devices did not connect: {report.errors[:5]}"
        )
    result = Cohort(
        size=size,
        connected=report.connected,
        connect_s=report.seconds,
        table_identities=table.identities,
        rebuild_s=rebuild,
        txns=txns,
        timeout_s=timeout,
    )
    time.sleep(2.0)
    ids = [d for d, _ in cohort]
    known = {t.generation for t in plugin_tables(runtime)}
    log.print(f"  revoking all {size:,} in {txns} transaction(s)")
    start = time.monotonic()
    per = -(-size // txns)
    for lo in range(0, size, per):
        revoke_cohort(ctx, principal, ids[lo : lo + per])
    result.txn_s = time.monotonic() - start
    log.print(f"  committed in {result.txn_s:.1f} s; waiting for the disconnects")
    seen = pool.wait_gone(ids, until=start + result.txn_s + timeout)
    result.gone = sorted(at - start for at, _ in seen.values())
    for _, reason in seen.values():
        result.reasons[reason] = result.reasons.get(reason, 0) + 1
    result.after_tables = [t for t in plugin_tables(runtime) if t.generation not in known]
    result.kicks_logged = [t.kicks for t in result.after_tables]
    log.print(f"  {len(result.gone):,}/{size:,} disconnected")
    pool.close_all()
    return result


# --------------------------------------------------------------------------- main


def raise_nofile(need: int) -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one (Mosquitto and clients inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < need:
        log.print(f"[yellow]open-file limit {target} < {need}: the cohort may not connect[/yellow]")
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def latency_rows(bench: Bench, key: str, r: Latencies) -> list[Row]:
    bench.count(
        f"{r.label}: revoked, not cut off in 10 s",
        len(r.missed),
        first=", ".join(r.missed[:5]),
    )
    bench.count(f"{r.label}: cut off, not revoked", r.collateral)
    p99 = percentile(r.samples, 99) if r.samples else float("inf")
    return [
        bench.target(
            key,
            label=f"{r.label}: revoke -> disconnect p99",
            value=p99,
            ceiling="floor",
            op="<=",
            goal=TARGET_ONE,
            source=TARGET_SOURCE,
            shown=f"{1000 * p99:.0f} ms",
        ),
        Row(
            "    p50 / max",
            f"{r.ms(50):.0f} / {1000 * max(r.samples, default=0):.0f} ms",
        ),
        Row(
            "    revoking transaction p50 (revoke_device, commit)",
            f"{1000 * percentile(r.txn, 50):.1f} ms",
        ),
        Row(
            f"    table rebuild at {r.table_identities:,} identities (write_table, best of 3)",
            f"{1000 * r.rebuild_s:.1f} ms",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    bench = Bench("revocation", __doc__ or "")
    p = bench.parser
    p.add_argument("--devices", type=int, default=1000, help="connected devices in (b)")
    p.add_argument(
        "--cohort", type=int, default=10_000, help="devices revoked at once in (c) (0: skip)"
    )
    p.add_argument("--samples", type=int, default=50, help="timed revocations in (a), (b)")
    p.add_argument(
        "--cohort-txns", type=int, default=1, help="transactions the cohort is revoked in"
    )
    p.add_argument("--cohort-timeout", type=float, default=30.0, help="wait after the commit, s")
    p.add_argument(
        "--jitter", type=float, default=0.5, help="random pause before each revocation, up to s"
    )
    p.add_argument("--client-procs", type=int, default=2, help="client processes")
    p.add_argument(
        "--connect-concurrency", type=int, default=32, help="handshakes in flight per process"
    )
    p.add_argument(
        "--skip",
        default="",
        help="phases to skip, comma-separated: one,fleet",
    )
    p.add_argument("--seed", type=int, default=20260501)
    args = bench.parse(argv, smoke=SMOKE)
    return bench.run(lambda: run(bench, args))


def run(bench: Bench, args: Any) -> None:
    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    rng = random.Random(args.seed)
    nofile = raise_nofile(max(args.devices, args.cohort) + 1000)
    bench.title = "Revocation -> disconnect at the broker"
    one = fleet = cohort = None
    fleet_connect: ConnectReport | None = None

    with tempfile.TemporaryDirectory(prefix="fw-bench-revocation-") as tmp_name:
        tmp = Path(tmp_name)
        log.print(f"initialising a fleetward home in {tmp}")
        port = free_port()
        ctx, token = new_installation(tmp, port=port)
        with ctx.db.session() as s:
            principal = tenancy.authenticate(s, token)
        stack = up_stack(ctx, api_url=f"http://{HOST}:{port}", listeners=free_listeners())
        runtime = stack.broker
        if runtime is None:
            raise RuntimeError("up_stack has no broker")
        runtime.mosquitto.log_lines = TableWatch()
        bench.workers(stack.workers)
        stat_s = plugin_stat_seconds()
        bench.intervals["plugin table stat (fw_plugin.c)"] = {
            "seconds": stat_s,
            "source": "product default",
        }
        floor = bench.ceiling(
            "floor",
            runtime.sync_worker.interval + stat_s,
            unit="s",
            label="sync interval + plugin table stat period",
        )
        log.print("building the plugin, starting Mosquitto and the workers of `fleetward up`")
        stack.start()
        pool: ClientPool | None = None
        try:
            # The devices are enrolled in the test environment: its listener.
            pool = ClientPool(args.client_procs, runtime.ports[ENV], runtime.files.broker_ca)
            if "one" not in skip:
                log.print(f"(a) one device at a time, {args.samples} samples")
                one = one_device_phase(
                    ctx,
                    principal,
                    runtime,
                    pool,
                    tmp,
                    samples=args.samples,
                    jitter=args.jitter,
                    rng=rng,
                )
            if "fleet" not in skip:
                fleet, fleet_connect = fleet_phase(
                    ctx,
                    principal,
                    runtime,
                    pool,
                    tmp,
                    devices=args.devices,
                    samples=args.samples,
                    jitter=args.jitter,
                    concurrency=args.connect_concurrency,
                    rng=rng,
                )
            if args.cohort:
                cohort = cohort_phase(
                    ctx,
                    principal,
                    runtime,
                    pool,
                    tmp,
                    size=args.cohort,
                    txns=args.cohort_txns,
                    timeout=args.cohort_timeout,
                    concurrency=args.connect_concurrency,
                )
            mosquitto_log = list(runtime.mosquitto.log_lines)
            time.sleep(2.5)  # two event-ingest rounds of the sync worker
            with ctx.db.read() as s:
                refused_events = s.execute(
                    select(func.count(Event.id)).where(Event.type == "authz.handshake-refused")
                ).scalar_one()
            bench.count_worker_errors("worker rounds", stack.workers)
        finally:
            if pool is not None:
                pool.stop()
            stack.stop()
            ctx.db.dispose()

    # ----------------------------------------------------------------- report
    bench.rows.append(bench.ceiling_row("floor", f"{1000 * floor:.0f} ms"))
    figures: dict[str, Any] = {
        "client_procs": args.client_procs,
        "nofile_limit": nofile[0],
    }
    if one is not None:
        bench.rows += latency_rows(bench, "one_device_p99", one)
        figures["one_device"] = one.as_dict()
    if fleet is not None and fleet_connect is not None:
        bench.rows += latency_rows(bench, "fleet_p99", fleet)
        figures["fleet"] = fleet.as_dict()
        figures["fleet_connect_s"] = round(fleet_connect.seconds, 2)
    bench.notes += [
        "Clients: spawned processes of asyncio TLS 1.2 clients speaking minimal MQTT 5 "
        "(keepalive 0, one QoS 1 probe PUBLISH, then read until DISCONNECT/EOF); "
        "time.monotonic in the client process.",
        f"Latency = from just before the revoking transaction begins to the client seeing the "
        f"disconnect. Random pause of up to {args.jitter:g} s before each revocation. "
        f"Expected: from the table rebuild up to sync interval + rebuild + "
        f"{1000 * MOSQUITTO_IDLE_WAKE_S:.0f} ms (the plugin stats the table on Mosquitto's "
        f"tick, and an idle Mosquitto ticks every {1000 * MOSQUITTO_IDLE_WAKE_S:.0f} ms).",
        f"p99 of {args.samples} samples is the nearest-rank p99 (with 50 samples: the maximum).",
        f"Open-file limit raised to {nofile[0]} (soft) in this process; Mosquitto and the "
        "client processes inherit it.",
    ]
    if one is not None and fleet is not None:
        bench.notes.append(f"Disconnect reasons (a), (b): {one.reasons | fleet.reasons}.")
    if cohort is not None:
        last = cohort.gone[-1] if cohort.all_gone else None
        t50, t99 = cohort.at(0.5), cohort.at(0.99)
        bench.count(
            "cohort: revoked, not cut off",
            cohort.size - len(cohort.gone),
            first=f"{cohort.size - len(cohort.gone)} still connected {cohort.timeout_s:g} s "
            "after the commit",
        )

        def secs(v: float | None) -> str:
            return "never" if v is None else f"{v:.2f} s"

        bench.rows += [
            bench.target(
                "cohort_last",
                label=f"cohort of {cohort.size:,}: revoke -> last disconnect",
                value=last if last is not None else float("inf"),
                ceiling="floor",
                op="<=",
                goal=TARGET_COHORT,
                source=TARGET_SOURCE,
                shown=secs(last),
            ),
            Row(
                f"    disconnected within {cohort.timeout_s:g} s after the commit",
                f"{len(cohort.gone):,} / {cohort.size:,}",
            ),
            Row(
                f"    revoking transaction(s): {cohort.txns} x revoke_devices",
                f"{cohort.txn_s:.2f} s",
            ),
            Row(
                "    first / 50% / 99% / last seen disconnected",
                f"{secs(cohort.at(0))} / {secs(t50)} / {secs(t99)} / "
                f"{secs(cohort.gone[-1] if cohort.gone else None)}",
            ),
            Row(
                f"    table rebuild at {cohort.table_identities:,} identities",
                f"{1000 * cohort.rebuild_s:.0f} ms",
            ),
            Row(
                "    plugin 'to cut off' per table load after the revocation",
                ", ".join(str(k) for k in cohort.kicks_logged) or "none logged",
            ),
        ]
        bench.notes.append(
            f"(c): {cohort.connected:,} devices connected in {cohort.connect_s:.1f} s "
            f"({cohort.connected / cohort.connect_s:,.0f}/s); revoked with "
            f"identity.revoke_devices in {cohort.txns} transaction(s); "
            f"disconnect reasons {cohort.reasons}."
        )
        figures["cohort"] = {
            "size": cohort.size,
            "connected": cohort.connected,
            "connect_s": round(cohort.connect_s, 2),
            "txns": cohort.txns,
            "txn_s": round(cohort.txn_s, 3),
            "disconnected": len(cohort.gone),
            "first_s": None if not cohort.gone else round(cohort.gone[0], 3),
            "p50_s": None if t50 is None else round(t50, 3),
            "p99_s": None if t99 is None else round(t99, 3),
            "last_s": None if last is None else round(last, 3),
            "devices_per_s": None if last is None else round(cohort.size / last, 1),
            "timeout_s": cohort.timeout_s,
            "table_identities": cohort.table_identities,
            "table_rebuild_ms": round(1000 * cohort.rebuild_s, 1),
            "plugin_kicks_logged": cohort.kicks_logged,
            "disconnect_reasons": cohort.reasons,
        }
    bench.rows.append(
        Row(
            "authz.handshake-refused events recorded (no handshake was refused)",
            f"{refused_events:,}",
        )
    )
    figures["handshake_refused_events"] = refused_events
    errors = [line for line in mosquitto_log if "rejected" in line or "Error" in line]
    if errors:
        bench.notes.append(
            f"Mosquitto log (last lines kept): {len(errors)} errors, e.g. {errors[-1]}"
        )
    bench.figures = figures


if __name__ == "__main__":
    sys.exit(main())
