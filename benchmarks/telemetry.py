"""Telemetry ingest with every detector on, and alert latency.

Measured on a fresh installation (SQLite WAL) with ``--devices`` active
devices (inserted with a Core insert, not timed):

(a) ceilings, one core: JSON parse of a reading; the raw multi-row insert of
    event rows (SQLAlchemy Core, 5,000 per transaction);
(b) sustained ingest: ``telemetry.ingest.Ingestor`` (topic parse, per-device
    token bucket, JSON, batching, one multi-row insert per flush, as the MQTT
    workers run it) fed ``--events`` readings from all devices, while the
    detection loop (``DetectionRunner``, 0.5 s rounds, every event detector)
    runs in a thread of the same process. The token buckets see a clock that
    advances with the synthetic stream (each device sends 10 readings/s of
    stream time), so nothing is rate-limited: this measures capacity;
(c) alert latency: while (b)-style ingest runs at ``--rate`` events/s, an
    ``attestation.verdict`` event with ``fail`` (what the verifier stores) is
    written ``--alerts`` times for distinct devices; latency is the time
    until its alert row exists. The loop polls every 0.5 s, so that is the
    floor.

The MQTT path itself (broker, paho) is measured by ``broker.py``; a single
Python publisher tops out near 20k msg/s on this machine, so it cannot show
the ingest ceiling.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import Row, log, new_installation, print_json, print_table, rate, verdict
from sqlalchemy import func, insert, select

from fleetward.api.context import AppContext
from fleetward.detection.models import Alert
from fleetward.detection.runner import DetectionRunner
from fleetward.identity.models import Device
from fleetward.telemetry.ingest import Ingestor
from fleetward.telemetry.models import Event

TARGET = 20_000.0
FLUSH_EVERY = 5_000  # readings per flush (the MQTT worker flushes every 200 ms)


def add_devices(ctx: AppContext, n: int) -> list[tuple[int, str]]:
    now = dt.datetime.now(dt.UTC)
    with ctx.db.session() as s:
        s.execute(
            insert(Device),
            [
                {
                    "tenant_id": 1,
                    "device_id": f"t{i:06d}",
                    "product": "thermo",
                    "labels": "{}",
                    "state": "active",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(n)
            ],
        )
        rows = s.execute(select(Device.id, Device.device_id).order_by(Device.id)).all()
    return [(int(pk), str(d)) for pk, d in rows]


def ceilings(ctx: AppContext, devices: list[tuple[int, str]]) -> dict[str, float]:
    payload = b'{"temp":21.5,"hum":40,"uptime":12345}'
    parse = rate(lambda i: json.loads(payload), seconds=1.0)
    now = dt.datetime.now(dt.UTC)
    rows = [
        {
            "tenant_id": 1,
            "device_pk": devices[i % len(devices)][0],
            "type": "metric",
            "at": now,
            "count": 1,
            "fields": '{"temp":21.5,"hum":40,"uptime":12345,"topic":""}',
        }
        for i in range(5000)
    ]
    start = time.perf_counter()
    batches = 10
    for _ in range(batches):
        with ctx.db.session() as s:
            s.execute(insert(Event), rows)
    insert_rate = batches * len(rows) / (time.perf_counter() - start)
    with ctx.db.session() as s:
        s.query(Event).delete()
    return {"json_parse_per_s": parse, "raw_insert_per_s": insert_rate}


class StreamClock:
    """Stream time: advances 1/(devices x per_device_rate) s per reading."""

    def __init__(self, step: float) -> None:
        self.t = 0.0
        self.step = step

    def __call__(self) -> float:
        return self.t


def ingest(ctx: AppContext, devices: list[tuple[int, str]], n: int) -> dict[str, Any]:
    clock = StreamClock(1.0 / (len(devices) * 10.0))
    ing = Ingestor(ctx.db, clock=clock)
    payloads = [json.dumps({"temp": 20 + i % 10, "seq": i}).encode() for i in range(256)]
    topics = [f"fw/default/{d}/telemetry/env" for _, d in devices]
    runner = DetectionRunner(ctx, interval=0.5)
    runner.start()
    at = dt.datetime.now(dt.UTC)
    start = time.perf_counter()
    kept = 0
    for i in range(n):
        clock.t += clock.step
        kept += ing.offer(topics[i % len(topics)], payloads[i & 255], at=at)
        if (i + 1) % FLUSH_EVERY == 0:
            ing.flush()
    ing.flush()
    elapsed = time.perf_counter() - start
    runner.stop()
    with ctx.db.read() as s:
        stored = int(s.execute(select(func.count()).select_from(Event)).scalar_one())
    return {
        "events": n,
        "kept": kept,
        "stored": stored,
        "seconds": elapsed,
        "per_s": n / elapsed,
        "detection_rounds": runner.rounds,
    }


def alert_latency(
    ctx: AppContext, devices: list[tuple[int, str]], *, samples: int, rate_per_s: float
) -> dict[str, Any]:
    clock = StreamClock(1.0 / (len(devices) * 10.0))
    ing = Ingestor(ctx.db, clock=clock)
    topics = [f"fw/default/{d}/telemetry/env" for _, d in devices]
    runner = DetectionRunner(ctx, interval=0.5)
    runner.start()
    stop = threading.Event()

    def background() -> None:
        i = 0
        per_tick = max(1, int(rate_per_s / 10))
        while not stop.is_set():
            tick = time.perf_counter()
            at = dt.datetime.now(dt.UTC)
            for _ in range(per_tick):
                clock.t += clock.step
                ing.offer(topics[i % len(topics)], b'{"temp":21}', at=at)
                i += 1
            ing.flush()
            time.sleep(max(0.0, 0.1 - (time.perf_counter() - tick)))

    feeder = threading.Thread(target=background, daemon=True)
    feeder.start()
    latencies = []
    for k in range(samples):
        pk, device_id = devices[(k * 7919) % len(devices)]
        time.sleep(0.1 + (k % 5) * 0.07)  # out of phase with the loop
        started = time.perf_counter()
        with ctx.db.session() as s:
            s.add(
                Event(
                    tenant_id=1,
                    device_pk=pk,
                    type="attestation.verdict",
                    at=dt.datetime.now(dt.UTC),
                    count=1,
                    fields=json.dumps(
                        {
                            "verdict": "fail",
                            "failed": ["measurements.bootloader"],
                            "swversion": "1.0.0",
                        }
                    ),
                )
            )
        key = f"device:{device_id}"
        while True:
            with ctx.db.read() as s:
                found = s.execute(select(Alert.id).where(Alert.key == key)).first()
            if found is not None:
                latencies.append(time.perf_counter() - started)
                break
            if time.perf_counter() - started > 10:
                latencies.append(float("inf"))
                break
            time.sleep(0.01)
    stop.set()
    feeder.join()
    runner.stop()
    ordered = sorted(latencies)
    return {
        "samples": samples,
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
        "background_per_s": rate_per_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--alerts", type=int, default=50)
    parser.add_argument("--rate", type=float, default=5000.0, help="background events/s in (c)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fw-telemetry-") as tmp:
        ctx, _ = new_installation(Path(tmp), port=8400)
        log.print(f"adding {args.devices:,} devices")
        devices = add_devices(ctx, args.devices)
        log.print("(a) ceilings")
        ceil = ceilings(ctx, devices)
        log.print(f"(b) ingesting {args.events:,} readings with detection on")
        sustained = ingest(ctx, devices, args.events)
        log.print(f"(c) alert latency, {args.alerts} samples")
        latency = alert_latency(ctx, devices, samples=args.alerts, rate_per_s=args.rate)
        ctx.db.dispose()
    ok = sustained["per_s"] >= TARGET
    rows = [
        Row("ceiling: json.loads of one reading (one core)", f"{ceil['json_parse_per_s']:,.0f}/s"),
        Row(
            "ceiling: raw Core multi-row insert of event rows",
            f"{ceil['raw_insert_per_s']:,.0f}/s",
            "1.00",
        ),
        Row(
            "sustained ingest with every detector on",
            f"{sustained['per_s']:,.0f} events/s",
            f"{sustained['per_s'] / ceil['raw_insert_per_s']:.2f}",
            f">= {TARGET:,.0f}/s",
            verdict(ok),
        ),
        Row("    readings stored / offered", f"{sustained['stored']:,} / {sustained['events']:,}"),
        Row("    detection rounds during the run", f"{sustained['detection_rounds']}"),
        Row(
            "alert latency p50 / p99 / max (fail verdict -> alert row)",
            f"{latency['p50_ms']:.0f} / {latency['p99_ms']:.0f} / {latency['max_ms']:.0f} ms",
            "",
            "loop 500 ms",
        ),
    ]
    print_table(
        "Telemetry ingest and detection",
        rows,
        notes=[
            f"{args.devices:,} devices; SQLite WAL; ingest and detection share one process "
            "(the GIL), as in `fleetward up`.",
            f"(c) runs with {args.rate:,.0f} background events/s; the detection loop polls "
            "every 0.5 s, so p50 sits near 250 ms plus one round.",
        ],
    )
    print_json(
        {
            "ceilings": ceil,
            "ingest": sustained,
            "alert_latency": latency,
            "target_per_s": TARGET,
            "pass": ok,
        }
    )


if __name__ == "__main__":
    main()
