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
(threads or processes) split the stream; the runtime schedules its rounds.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from sqlalchemy.orm import Session

from fleetward import identity, observe
from fleetward.store import Database
from fleetward.telemetry._events import record_events

__all__ = ["BURST", "MAX_FIELDS_BYTES", "RATE", "Ingestor", "MqttIngest", "TokenBucket"]

log = logging.getLogger("fleetward.telemetry")

RATE = 20.0  # sustained messages per second per device
BURST = 100.0
MAX_FIELDS_BYTES = 4096  # one reading; larger payloads are refused and counted
SHARED_TOPIC = "$share/fleetward-ingest/fw/+/+/telemetry/#"
MAX_QUEUED = 200_000  # messages waiting for a round; more are counted in ``overflow``
MAX_PER_ROUND = 50_000  # messages one round parses and writes


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
        if not missing:
            return
        # One set-based lookup for every device new to this ingestor (the
        # answer, known or not, is kept: the broker lists only known devices).
        found = identity.resolve_devices(session, missing)
        for key in missing:
            self.devices[key] = found.get(key)

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
        metrics = 0
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
            metrics = len(rows)
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
            record_events(s, rows)
            observe.telemetry(ingested=metrics, dropped=sum(dropped.values()), session=s)
        return len(rows)


class ServiceConnect(Protocol):
    """Connects fleetward's service identity to the broker (the comms domain's
    ``service_client`` bound to a home, passed in by the runtime)."""

    def __call__(
        self,
        *,
        client_id: str,
        subscribe: tuple[str, int],
        on_message: Callable[[mqtt.Client, object, mqtt.MQTTMessage], None],
        keepalive: int,
    ) -> mqtt.Client:
        """A connected, looping client; raises ``BrokerUnavailableError``."""
        ...


class MqttIngest:
    """A shared-subscription ingest client on the broker's service listener.

    The MQTT callback only queues (bounded: a flood is counted in
    ``overflow``); :meth:`ingest_round` parses, limits and writes what was
    queued. The runtime calls it every fraction of a second
    (``fleetward.runtime.workers.IngestWorker``).
    """

    def __init__(
        self,
        db: Database,
        connect: ServiceConnect,
        *,
        client_id: str = "fleetward-ingest-1",
        max_queue: int = MAX_QUEUED,
    ) -> None:
        self.ingestor = Ingestor(db)
        self._connect = connect
        self.client_id = client_id
        self.queue: queue.Queue[tuple[str, bytes, dt.datetime]] = queue.Queue(maxsize=max_queue)
        self.overflow = 0
        self._client: mqtt.Client | None = None

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            self.queue.put_nowait((msg.topic, bytes(msg.payload), dt.datetime.now(dt.UTC)))
        except queue.Full:
            self.overflow += 1

    @property
    def connected(self) -> bool:
        """Whether :meth:`connect` has run (paho reconnects by itself after)."""
        return self._client is not None

    def connect(self) -> None:
        """Connect and subscribe (MQTT 5 shared subscription).

        Raises:
            BrokerUnavailableError: no broker here, or it cannot be reached.
        """
        self._client = self._connect(
            client_id=self.client_id,
            subscribe=(SHARED_TOPIC, 0),
            on_message=self._on_message,
            keepalive=30,
        )

    def ingest_round(self, *, limit: int = MAX_PER_ROUND) -> int:
        """Offer up to ``limit`` queued messages to the ingestor and write
        them; returns how many events were written."""
        for _ in range(limit):
            try:
                topic, payload, at = self.queue.get_nowait()
            except queue.Empty:
                break
            self.ingestor.offer(topic, payload, at=at)
        return self.ingestor.flush()

    def close(self) -> None:
        """Disconnect, then write what is still queued."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        while not self.queue.empty():
            self.ingest_round()
