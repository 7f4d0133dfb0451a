"""Publish throughput and broker CPU with fleetward's authorization vs an allow-all Mosquitto.

Set-up: a fresh installation; ``--publishers`` devices enrolled in the
``test`` environment (keys and CSRs made before any timing); a
:class:`BrokerRuntime` (Mosquitto 2.0 with the fleetward plugin and the sync
loop) and, in the same run, an **allow-all** Mosquitto whose config is
``render_config`` of the same files with the ``plugin`` lines removed: the
same two TLS listeners (devices: ``require_certificate``,
``use_subject_as_username``, the device CA bundle and the CRL; service: the
local broker CA), the same limits, no plugin and no ``acl_file``, so every
client may do everything. Both listen on 127.0.0.1.

One run: a subscriber (fleetward's service identity on the service
listener, ``fw/default/+/telemetry/#``, at the run's QoS) and the
publishers (one paho MQTT 5 client per device, each in its own spawned
process; the subscriber is a minimal MQTT 5 reader, see ``_RawSubscriber``)
connect; then each publisher sends ``--messages`` 64-byte payloads
to its own ``fw/default/<id>/telemetry/bench`` as fast as paho goes (QoS 0:
until the last is written; QoS 1: until the last PUBACK, 20 in flight).
Measured per run: publish rate, end-to-end rate at the subscriber (from the
first publish to the last delivery), and Mosquitto's CPU time (utime +
stime from ``/proc/<pid>/stat``) per 100,000 messages. The Python clients
are the bottleneck (a paho publisher uses about one core), so the broker
CPU per message is the fairer comparison. Runs alternate fleetward,
allow-all, fleetward, ... ``--rounds`` times per QoS; the table shows the
median (and the best) of each. The fleetward broker runs its sync worker at
the product's default interval unless ``--sync-interval``.

The allow-all broker is the ceiling. Targets (issue 4), per QoS: fleetward
/ allow-all >= 0.8 for the publish rate and for broker capacity (messages
per CPU-second of Mosquitto). Errors: a publish the broker refused, a QoS 1
message not delivered to the subscriber.

    .venv/bin/python benchmarks/broker.py           # 100,000 messages, 5 rounds per QoS
    .venv/bin/python benchmarks/broker.py --smoke   # CI size
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import re
import socket
import ssl
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from _harness import (
    HOST,
    Bench,
    Row,
    free_port,
    given,
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
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleetward.comms.mosquitto import MosquittoProcess
from fleetward.comms.mosquitto_conf import BrokerFiles, Listeners, render_config
from fleetward.identity import issuance
from fleetward.runtime.broker import BrokerRuntime
from fleetward.tenancy import service as tenancy

TARGET_RATIO = 0.8
TARGET_SOURCE = "issue 4: fleetward / allow-all >= 0.8"
SMOKE = {"messages": 5000, "rounds": 1}
ENV = "test"
TENANT = "default"
PAYLOAD = 64
INFLIGHT = 20  # paho's default max_inflight_messages
_TABLE_LINE = re.compile(r"fleetward: table generation (\d+), (\d+) identities")

# --------------------------------------------------------------------------- client processes


def _tls(ca: str, cert: str, key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.load_cert_chain(cert, key)
    return ctx


def _connected_client(
    client_id: str, port: int, tls: ssl.SSLContext, **callbacks: Callable[..., None]
) -> mqtt.Client:
    """A paho MQTT 5 client, connected; its network loop is run by the caller."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.tls_set_context(tls)
    client.max_inflight_messages_set(INFLIGHT)
    ok: list[bool] = []

    def on_connect(
        _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        ok.append(not rc.is_failure)

    client.on_connect = on_connect
    for name, fn in callbacks.items():
        setattr(client, name, fn)
    client.connect(HOST, port, keepalive=60)
    deadline = time.monotonic() + 30
    while not ok and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    if not ok or not ok[0]:
        raise RuntimeError(f"{client_id} could not connect to port {port}")
    return client


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    deadline = time.monotonic() + 2
    while client.is_connected() and time.monotonic() < deadline:
        client.loop(timeout=0.05)


def publisher_process(
    conn: multiprocessing.connection.Connection,
    port: int,
    ca: str,
    pem: str,
    device_id: str,
    qos: int,
    messages: int,
) -> None:
    """Connect, say ready, wait for ``go``, publish, report, disconnect."""
    refused: list[int] = []

    def on_publish(
        _c: mqtt.Client, _u: object, _mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            refused.append(rc.value)

    client = _connected_client(device_id, port, _tls(ca, pem), on_publish=on_publish)
    topic = f"fw/{TENANT}/{device_id}/telemetry/bench"
    payload = b"t" * PAYLOAD
    conn.send(("ready",))
    conn.recv()  # go
    cpu0 = time.process_time()
    start = time.monotonic()
    info = None
    # No network thread: publish() writes at once (QoS 0) or queues behind the
    # 20 in flight (QoS 1); loop() reads PUBACKs and sends what is queued.
    for i in range(messages):
        info = client.publish(topic, payload, qos=qos)
        if qos and i % 64 == 63:
            client.loop(timeout=0)
    assert info is not None
    while not info.is_published():
        client.loop(timeout=0.01)
    done = time.monotonic()
    conn.send(("done", messages, start, done, time.process_time() - cpu0, len(refused)))
    _close(client)


def _mqtt_str(value: bytes) -> bytes:
    return struct.pack("!H", len(value)) + value


def _mqtt_packet(first: int, body: bytes) -> bytes:
    length, n = bytearray(), len(body)
    while True:
        n, digit = n >> 7, n & 0x7F
        length.append(digit | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(length) + body


class _RawSubscriber:
    """A minimal MQTT 5 subscriber on a blocking TLS socket.

    paho reads one packet per loop iteration, which makes it slower than a
    paho publisher at QoS 1 (and Mosquitto then drops what exceeds
    ``max_queued_messages``); this one parses whole TLS records and answers
    a batch of PUBACKs with one write, so the subscriber is not the limit.
    """

    def __init__(self, port: int, tls: ssl.SSLContext, client_id: str) -> None:
        raw = socket.create_connection((HOST, port), timeout=30)
        self.sock = tls.wrap_socket(raw, server_hostname=HOST)
        self.buf = bytearray()
        variable = _mqtt_str(b"MQTT") + bytes([5, 0x02]) + struct.pack("!H", 60) + b"\x00"
        self.sock.sendall(_mqtt_packet(0x10, variable + _mqtt_str(client_id.encode())))
        first, body = self.next_packet()
        if first != 0x20 or body[1] != 0:
            raise RuntimeError(f"CONNACK {first:#x} {body[:4].hex()}")

    def next_packet(self) -> tuple[int, bytes]:
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the broker closed the connection")
            self.buf += chunk

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buf
        length, shift, i = 0, 0, 1
        while True:
            if i >= len(buf):
                return None
            byte = buf[i]
            length |= (byte & 0x7F) << shift
            shift += 7
            i += 1
            if not byte & 0x80:
                break
        if len(buf) < i + length:
            return None
        first, body = buf[0], bytes(buf[i : i + length])
        del buf[: i + length]
        return first, body

    def subscribe(self, topic: str, qos: int) -> int:
        body = struct.pack("!H", 1) + b"\x00" + _mqtt_str(topic.encode()) + bytes([qos])
        self.sock.sendall(_mqtt_packet(0x82, body))
        first, body = self.next_packet()
        if first != 0x90:
            raise RuntimeError(f"expected SUBACK, got {first:#x}")
        return body[-1]

    def count(self, deadline_check: Callable[[int], bool]) -> tuple[int, float, float]:
        """Count PUBLISHes (acking QoS 1 ones) until ``deadline_check(count)`` says stop."""
        count, first_at, last_at = 0, 0.0, 0.0
        self.sock.settimeout(0.05)
        while not deadline_check(count):
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                break
            self.buf += chunk
            acks, before = bytearray(), count
            while (parsed := self._parse()) is not None:
                first, body = parsed
                if first & 0xF0 != 0x30:
                    continue
                count += 1
                if first & 0x06 == 0x02:  # QoS 1: PUBACK the packet id after the topic
                    at = 2 + struct.unpack_from("!H", body)[0]
                    acks += b"\x40\x02" + body[at : at + 2]
            if acks:
                self.sock.sendall(acks)
            if count > before:
                last_at = time.monotonic()
                first_at = first_at or last_at
        return count, first_at, last_at

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.settimeout(2)
            self.sock.sendall(b"\xe0\x00")
            self.sock.unwrap()
        self.sock.close()


def subscriber_process(
    conn: multiprocessing.connection.Connection,
    port: int,
    ca: str,
    cert: str,
    key: str,
    qos: int,
    expected: int,
    idle: float,
) -> None:
    """Subscribe to every device's telemetry, count deliveries, report."""
    sub = _RawSubscriber(port, _tls(ca, cert, key), f"bench-sub-{os.getpid()}")
    granted = sub.subscribe(f"fw/{TENANT}/+/telemetry/#", qos)
    if granted >= 0x80:
        raise RuntimeError(f"subscription refused: {granted:#x}")
    conn.send(("ready",))
    cpu0 = time.process_time()
    state = {"publishers_done": 0.0, "last_count": 0.0, "last_change": time.monotonic()}

    def stop(count: int) -> bool:
        now = time.monotonic()
        if count != state["last_count"]:
            state["last_count"], state["last_change"] = count, now
        if not state["publishers_done"] and conn.poll():
            conn.recv()
            state["publishers_done"] = now
        quiet = now - max(state["last_change"], state["publishers_done"])
        return count >= expected or bool(state["publishers_done"] and quiet > idle)

    count, first, last = sub.count(stop)
    conn.send(("done", count, first, last, time.process_time() - cpu0))
    sub.close()


# --------------------------------------------------------------------------- brokers


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Broker:
    """One Mosquitto under test."""

    name: str
    port: int
    service_port: int
    pid: int


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


def allow_all_config(files: BrokerFiles, *, listeners: Listeners, server: tuple[Path, Path]) -> str:
    """fleetward's own config for the same files, without the plugin: everything allowed."""
    text = render_config(files, plugin=Path("/nonexistent"), listeners=listeners, server=server)
    kept = [line for line in text.splitlines() if not line.startswith("plugin")]
    return "# allow-all baseline: fleetward's config minus the plugin lines\n" + "\n".join(kept)


def wait_plugin_table(runtime: BrokerRuntime, identities: int, timeout: float = 30) -> None:
    """Wait until the plugin has loaded a table listing ``identities`` devices."""
    runtime.sync.refresh()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(runtime.mosquitto.log_lines):
            if (m := _TABLE_LINE.search(line)) and int(m.group(2)) >= identities:
                return
        time.sleep(0.02)
    raise RuntimeError("the plugin did not load a table listing the publishers")


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    """One measured run."""

    broker: str
    qos: int
    sent: int
    publish_s: float
    delivered: int
    delivered_s: float
    broker_cpu_s: float
    publisher_cpu_s: float
    subscriber_cpu_s: float
    refused: int

    @property
    def publish_rate(self) -> float:
        return self.sent / self.publish_s

    @property
    def delivered_rate(self) -> float:
        return self.delivered / self.delivered_s if self.delivered_s > 0 else 0.0

    @property
    def cpu_per_100k(self) -> float:
        return 100_000 * self.broker_cpu_s / self.sent


def run_once(
    broker: Broker,
    *,
    qos: int,
    publishers: list[tuple[str, Path]],
    messages: int,
    ca: Path,
    service_cert: Path,
    service_key: Path,
    idle: float,
) -> Run:
    """One subscriber, the publishers, ``messages`` each; returns what was measured."""
    mp = multiprocessing.get_context("spawn")
    total = messages * len(publishers)
    sub_conn, sub_child = mp.Pipe()
    sub = mp.Process(
        target=subscriber_process,
        args=(
            sub_child,
            broker.service_port,
            str(ca),
            str(service_cert),
            str(service_key),
            qos,
            total,
            idle,
        ),
        daemon=True,
    )
    sub.start()
    procs, conns = [sub], []
    try:
        if sub_conn.recv()[0] != "ready":
            raise RuntimeError("subscriber failed")
        for device_id, pem in publishers:
            parent, child = mp.Pipe()
            proc = mp.Process(
                target=publisher_process,
                args=(child, broker.port, str(ca), str(pem), device_id, qos, messages),
                daemon=True,
            )
            proc.start()
            procs.append(proc)
            conns.append(parent)
        for c in conns:
            if not c.poll(60) or c.recv()[0] != "ready":
                raise RuntimeError("a publisher did not connect")
        time.sleep(0.3)
        cpu0 = cpu_seconds(broker.pid)
        for c in conns:
            c.send(("go",))
        reports = [c.recv() for c in conns]
        sub_conn.send(("publishers done",))
        _, delivered, _first, last, sub_cpu = sub_conn.recv()
        broker_cpu = cpu_seconds(broker.pid) - cpu0
    finally:
        for proc in procs:
            proc.join(timeout=15)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    start = min(r[2] for r in reports)
    return Run(
        broker=broker.name,
        qos=qos,
        sent=sum(r[1] for r in reports),
        publish_s=max(r[3] for r in reports) - start,
        delivered=delivered,
        delivered_s=(last - start) if delivered else 0.0,
        broker_cpu_s=broker_cpu,
        publisher_cpu_s=sum(r[4] for r in reports),
        subscriber_cpu_s=sub_cpu,
        refused=sum(r[5] for r in reports),
    )


def make_publishers(tmp: Path, ctx: Any, principal: Any, count: int) -> list[tuple[str, Path]]:
    """Enroll ``count`` devices and write one PEM (certificate + key) each."""
    folder = tmp / "devices"
    folder.mkdir()
    material = []
    for i in range(count):
        device_id = f"pub-{i:03d}"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .sign(key, hashes.SHA256())
        )
        material.append((device_id, key, csr.public_bytes(Encoding.PEM)))
    items = [issuance.BatchItem(device_id=d, csr=c) for d, _, c in material]
    results = issuance.enroll_many(ctx.db, ctx.pki, principal, items=items, environment=ENV)
    out = []
    for (device_id, key, _), result in zip(material, results, strict=True):
        if result.issued is None:
            raise RuntimeError(f"enrolling {device_id} failed: {result.error}")
        pem = folder / f"{device_id}.pem"
        pem.write_bytes(
            result.issued.certificate.public_bytes(Encoding.PEM)
            + key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        )
        out.append((device_id, pem))
    return out


# --------------------------------------------------------------------------- main


def summary(runs: list[Run], broker: str, qos: int) -> dict[str, float]:
    """Median and best of one broker's runs at one QoS."""
    mine = [r for r in runs if r.broker == broker and r.qos == qos]
    return {
        "publish_per_s": statistics.median(r.publish_rate for r in mine),
        "publish_per_s_best": max(r.publish_rate for r in mine),
        "delivered_per_s": statistics.median(r.delivered_rate for r in mine),
        "delivered_per_s_best": max(r.delivered_rate for r in mine),
        "cpu_s_per_100k": statistics.median(r.cpu_per_100k for r in mine),
        "cpu_s_per_100k_best": min(r.cpu_per_100k for r in mine),
        "delivered_fraction_min": min(r.delivered / r.sent for r in mine),
        "refused": sum(r.refused for r in mine),
        "publisher_cores": statistics.median(r.publisher_cpu_s / r.publish_s for r in mine),
        "runs": len(mine),
    }


def main(argv: list[str] | None = None) -> int:
    bench = Bench("broker", __doc__ or "")
    p = bench.parser
    p.add_argument("--messages", type=int, default=100_000, help="per publisher and run")
    p.add_argument("--publishers", type=int, default=1, help="paho publishers (processes)")
    p.add_argument("--rounds", type=int, default=5, help="fleetward/allow-all pairs per QoS")
    p.add_argument("--qos", default="0,1", help="QoS levels to measure")
    p.add_argument(
        "--idle", type=float, default=3.0, help="subscriber gives up after this quiet time, s"
    )
    p.add_argument(
        "--sync-interval",
        type=float,
        default=None,
        help="broker sync worker, s (default: the product's)",
    )
    args = bench.parse(argv, smoke=SMOKE)
    return bench.run(lambda: run(bench, args))


def run(bench: Bench, args: Any) -> None:
    qos_levels = [int(q) for q in args.qos.split(",") if q.strip()]
    bench.title = "MQTT publish throughput: fleetward authorization vs allow-all"
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="fw-bench-broker-") as tmp_name:
        tmp = Path(tmp_name)
        log.print(f"initialising a fleetward home in {tmp}")
        ctx, token = new_installation(tmp, port=free_port())
        with ctx.db.session() as s:
            principal = tenancy.authenticate(s, token)
        publishers = make_publishers(tmp, ctx, principal, args.publishers)
        runtime = BrokerRuntime(
            ctx,
            tmp / "fleetward",
            listeners=free_listeners(),
            **given(interval=args.sync_interval),
        )
        flagged = (
            {}
            if args.sync_interval is None
            else {"broker-sync": f"--sync-interval {args.sync_interval:g}"}
        )
        bench.workers(runtime.workers, overridden=flagged)
        log.print("building the plugin, starting the fleetward broker and its sync worker")
        runtime.start()
        allow: MosquittoProcess | None = None
        try:
            wait_plugin_table(runtime, args.publishers)
            files = runtime.files
            ingest = ctx.service_pki.client("ingest")
            allow_files = BrokerFiles(tmp / "allow-all")
            allow_files.root.mkdir()
            allow_listeners = free_listeners()
            # The publishers are enrolled in the test environment: its listener.
            allow_port, allow_service = allow_listeners.ports[ENV], allow_listeners.service_port
            server = ctx.service_pki.server()
            allow_files.config.write_text(
                allow_all_config(files, listeners=allow_listeners, server=(server.cert, server.key))
            )
            allow = MosquittoProcess(allow_files)
            allow.start(port=allow_port)
            if runtime.mosquitto.proc is None or allow.proc is None:
                raise RuntimeError("a Mosquitto did not start")
            brokers = [
                Broker(
                    "fleetward",
                    runtime.ports[ENV],
                    runtime.service_port,
                    runtime.mosquitto.proc.pid,
                ),
                Broker("allow-all", allow_port, allow_service, allow.proc.pid),
            ]
            for b in brokers:
                comm = Path(f"/proc/{b.pid}/comm").read_text().strip()
                if comm != "mosquitto":
                    raise RuntimeError(f"pid {b.pid} is {comm!r}, not mosquitto")
            for qos in qos_levels:
                for rnd in range(args.rounds):
                    for b in brokers:
                        run = run_once(
                            b,
                            qos=qos,
                            publishers=publishers,
                            messages=args.messages,
                            ca=files.broker_ca,
                            # fleetward's ingest identity: telemetry is its job.
                            service_cert=ingest.cert,
                            service_key=ingest.key,
                            idle=args.idle,
                        )
                        runs.append(run)
                        lost = run.sent - run.delivered if qos else 0
                        bench.count(
                            f"QoS {qos} {b.name}",
                            run.refused + lost,
                            first=f"{run.refused} refused, {lost} QoS 1 messages not delivered",
                        )
                        log.print(
                            f"  QoS {qos} round {rnd + 1} {b.name:9}: publish "
                            f"{run.publish_rate:,.0f}/s, delivered {run.delivered:,} at "
                            f"{run.delivered_rate:,.0f}/s, broker {run.cpu_per_100k:.2f} "
                            "CPU-s/100k"
                        )
        finally:
            if allow is not None:
                allow.stop()
            runtime.stop()
            ctx.db.dispose()

    # ----------------------------------------------------------------- report
    figures: dict[str, Any] = {
        "messages_per_run": args.messages * args.publishers,
        "publishers": args.publishers,
        "payload_bytes": PAYLOAD,
        "rounds": args.rounds,
    }
    for qos in qos_levels:
        fw, base = summary(runs, "fleetward", qos), summary(runs, "allow-all", qos)
        e2e_ratio = fw["delivered_per_s"] / base["delivered_per_s"]
        bench.ceiling(
            f"allow_all_publish_qos{qos}",
            base["publish_per_s"],
            unit="msg/s",
            label=f"QoS {qos} publish, allow-all (median)",
        )
        bench.ceiling(
            f"allow_all_capacity_qos{qos}",
            100_000 / base["cpu_s_per_100k"],
            unit="msg per Mosquitto CPU-s",
            label=f"QoS {qos} allow-all Mosquitto: messages per CPU-second (median)",
        )
        bench.rows += [
            bench.ceiling_row(
                f"allow_all_publish_qos{qos}",
                f"{base['publish_per_s']:,.0f} / {base['publish_per_s_best']:,.0f} msg/s",
            ),
            bench.target(
                f"publish_qos{qos}",
                label=f"QoS {qos} publish, fleetward (median / best)",
                value=fw["publish_per_s"],
                ceiling=f"allow_all_publish_qos{qos}",
                op=">=",
                goal=TARGET_RATIO,
                source=TARGET_SOURCE,
                shown=f"{fw['publish_per_s']:,.0f} / {fw['publish_per_s_best']:,.0f} msg/s",
            ),
            Row(
                f"QoS {qos} delivered to the subscriber, allow-all / fleetward",
                f"{base['delivered_per_s']:,.0f} / {fw['delivered_per_s']:,.0f} msg/s",
                f"{e2e_ratio:.2f}",
            ),
            bench.ceiling_row(
                f"allow_all_capacity_qos{qos}",
                f"{base['cpu_s_per_100k']:.2f} CPU-s / 100k msgs",
            ),
            bench.target(
                f"capacity_qos{qos}",
                label=f"QoS {qos} fleetward Mosquitto: CPU per 100k msgs (median)",
                value=100_000 / fw["cpu_s_per_100k"],
                ceiling=f"allow_all_capacity_qos{qos}",
                op=">=",
                goal=TARGET_RATIO,
                source=TARGET_SOURCE,
                shown=f"{fw['cpu_s_per_100k']:.2f} CPU-s / 100k msgs",
            ),
            Row(
                f"QoS {qos} plugin cost per message (fleetward - allow-all, medians)",
                f"{10 * (fw['cpu_s_per_100k'] - base['cpu_s_per_100k']):+.2f} µs",
            ),
        ]
        figures[f"qos{qos}"] = {
            "fleetward": {k: round(v, 3) for k, v in fw.items()},
            "allow_all": {k: round(v, 3) for k, v in base.items()},
            "delivered_ratio": round(e2e_ratio, 3),
            "plugin_us_per_msg": round(10 * (fw["cpu_s_per_100k"] - base["cpu_s_per_100k"]), 3),
        }
    figures["runs"] = [
        {
            "broker": r.broker,
            "qos": r.qos,
            "publish_per_s": round(r.publish_rate, 1),
            "delivered": r.delivered,
            "delivered_per_s": round(r.delivered_rate, 1),
            "broker_cpu_s": round(r.broker_cpu_s, 3),
            "cpu_s_per_100k": round(r.cpu_per_100k, 3),
            "publisher_cpu_s": round(r.publisher_cpu_s, 3),
            "subscriber_cpu_s": round(r.subscriber_cpu_s, 3),
            "refused": r.refused,
        }
        for r in runs
    ]
    undelivered = [
        f"{r.broker} QoS {r.qos}: {r.delivered:,}/{r.sent:,}" for r in runs if r.delivered < r.sent
    ]
    bench.notes += [
        f"{args.publishers} paho MQTT 5 publisher process(es), {args.messages:,} x "
        f"{PAYLOAD}-byte payloads each per run, to the device's own telemetry topic; QoS 1 "
        f"with {INFLIGHT} in flight. One subscriber process (service identity on the service "
        "listener, at the run's QoS): a minimal MQTT 5 reader on a TLS socket that parses "
        "whole records and batches PUBACKs (a paho subscriber reads one packet per loop and "
        "falls behind a paho publisher, so Mosquitto drops QoS 1 messages past "
        "max_queued_messages 1000). TLS 1.2 with client certificates on both brokers.",
        f"{args.rounds} run(s) per broker and QoS, alternating fleetward / allow-all; ratios "
        "compare medians. Broker CPU = Mosquitto utime + stime over the run (/proc).",
        "Capacity ratio = fleetward messages per Mosquitto CPU-second / allow-all's (what the "
        "plugin costs when the broker, not the client, is the limit).",
        "Publisher CPU, median: "
        + ", ".join(
            f"QoS {q} {summary(runs, b, q)['publisher_cores']:.2f} cores ({b})"
            for q in qos_levels
            for b in ("fleetward", "allow-all")
        )
        + ": the Python client is the bottleneck.",
        "Messages not delivered to the subscriber (QoS 0 may drop; QoS 1 must not): "
        + ("; ".join(undelivered) if undelivered else "none"),
    ]
    bench.figures = figures


if __name__ == "__main__":
    sys.exit(main())
