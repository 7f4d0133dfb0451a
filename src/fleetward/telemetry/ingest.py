"""Telemetry ingestion: device messages to events, bounded per device.

:class:`Ingestor` turns ``fw/<tenant>/<device>/telemetry[/...]`` messages
into ``metric`` events and writes them in batches (one multi-row insert per
flush). The broker only lets a device publish under its own id, so the topic
names the device. Each device has a token bucket (:data:`RATE` messages/s,
:data:`BURST` burst): a flood is **counted**, as one ``telemetry.dropped``
event per device and flush with the number dropped, never silently lost and
never allowed to crowd out other devices.

:class:`MqttIngest` subscribes with an MQTT 5 **shared subscription**
(``$share/fleetward-ingest/fw/+/+/telemetry/#``), so several ingest workers
(threads or processes) split the stream.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from fleetward.identity.models import Device
from fleetward.store import Database
from fleetward.telemetry.models import Event
from fleetward.tenancy.models import Tenant

__all__ = ["BURST", "MAX_FIELDS_BYTES", "RATE", "Ingestor", "MqttIngest", "TokenBucket"]

log = logging.getLogger("fleetward.telemetry")

RATE = 20.0  # sustained messages per second per device
BURST = 100.0
MAX_FIELDS_BYTES = 4096  # one reading; larger payloads are refused and counted
SHARED_TOPIC = "$share/fleetward-ingest/fw/+/+/telemetry/#"


@dataclass
class TokenBucket:
    """A per-device rate limit (pure; ``now`` in seconds is passed in)."""

    rate: float = RATE
    burst: float = BURST
    tokens: float = BURST
    last: float = 0.0

    def take(self, now: float) -> bool:
        """Whether one more message may pass at ``now``."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass
class Ingestor:
    """Parses, limits and batches telemetry for one database."""

    db: Database
    rate: float = RATE
    burst: float = BURST
    clock: Callable[[], float] = time.monotonic
    buckets: dict[tuple[str, str], TokenBucket] = field(default_factory=dict)
    devices: dict[tuple[str, str], tuple[int, int] | None] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)
    dropped: dict[tuple[str, str], int] = field(default_factory=dict)
    rejected: int = 0
    accepted: int = 0

    def _resolve(self, session: Session, keys: set[tuple[str, str]]) -> None:
        missing = [k for k in keys if k not in self.devices]
        for tenant, device_id in missing:
            row = session.execute(
                select(Tenant.id, Device.id)
                .join(Device, Device.tenant_id == Tenant.id)
                .where(Tenant.name == tenant, Device.device_id == device_id)
            ).first()
            self.devices[(tenant, device_id)] = (int(row[0]), int(row[1])) if row else None

    def offer(self, topic: str, payload: bytes, *, at: dt.datetime) -> bool:
        """Take one message; returns whether it was kept (rate, size, shape)."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[0] != "fw" or parts[3] != "telemetry":
            self.rejected += 1
            return False
        key = (parts[1], parts[2])
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = TokenBucket(
                self.rate, self.burst, self.burst, self.clock()
            )
        if not bucket.take(self.clock()):
            self.dropped[key] = self.dropped.get(key, 0) + 1
            return False
        if len(payload) > MAX_FIELDS_BYTES:
            self.rejected += 1
            return False
        try:
            fields = json.loads(payload) if payload else {}
        except ValueError:
            fields = {"raw": payload[:256].decode("utf-8", "replace")}
        if not isinstance(fields, dict):
            fields = {"value": fields}
        fields["topic"] = "/".join(parts[4:])
        self.pending.append({"key": key, "at": at, "fields": fields})
        self.accepted += 1
        return True

    def flush(self) -> int:
        """Write what was taken since the last flush; returns events written."""
        if not self.pending and not self.dropped:
            return 0
        batch, self.pending = self.pending, []
        dropped, self.dropped = self.dropped, {}
        rows = []
        with self.db.session() as s:
            self._resolve(s, {b["key"] for b in batch} | set(dropped))
            for b in batch:
                ids = self.devices.get(b["key"])
                if ids is None:
                    continue  # not a device fleetward knows (the broker would not list it)
                rows.append(
                    {
                        "tenant_id": ids[0],
                        "device_pk": ids[1],
                        "type": "metric",
                        "at": b["at"],
                        "count": 1,
                        "fields": json.dumps(b["fields"], separators=(",", ":")),
                    }
                )
            now = dt.datetime.now(dt.UTC)
            for key, n in dropped.items():
                ids = self.devices.get(key)
                if ids is not None:
                    rows.append(
                        {
                            "tenant_id": ids[0],
                            "device_pk": ids[1],
                            "type": "telemetry.dropped",
                            "at": now,
                            "count": n,
                            "fields": json.dumps({"reason": "rate limit", "rate": self.rate}),
                        }
                    )
            if rows:
                s.execute(insert(Event), rows)
        return len(rows)


class MqttIngest:
    """A shared-subscription ingest worker on the broker's service listener."""

    def __init__(self, db: Database, home: Path, *, client_id: str = "fleetward-ingest-1") -> None:
        self.ingestor = Ingestor(db)
        self.home = home
        self.client_id = client_id
        self.queue: queue.Queue[tuple[str, bytes, dt.datetime]] = queue.Queue(maxsize=200_000)
        self.overflow = 0
        self._stop = threading.Event()
        self._client: mqtt.Client | None = None
        self._thread: threading.Thread | None = None

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self.queue.put_nowait((msg.topic, bytes(msg.payload), dt.datetime.now(dt.UTC)))
        except queue.Full:
            self.overflow += 1

    def start(self) -> None:
        """Connect, subscribe, and write batches from a worker thread."""
        from fleetward.comms.commands import service_client

        self._client = service_client(
            self.home,
            client_id=self.client_id,
            subscribe=(SHARED_TOPIC, 0),
            on_message=self._on_message,
            keepalive=30,
        )
        self._thread = threading.Thread(target=self._run, daemon=True, name=self.client_id)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            deadline = time.monotonic() + 0.2
            while time.monotonic() < deadline:
                try:
                    topic, payload, at = self.queue.get(timeout=0.05)
                except queue.Empty:
                    continue
                self.ingestor.offer(topic, payload, at=at)
            try:
                self.ingestor.flush()
            except Exception:  # keep ingesting; the batch is lost, the log says so
                log.exception("telemetry flush failed")

    def stop(self) -> None:
        """Stop, flushing what is queued."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        self.ingestor.flush()
