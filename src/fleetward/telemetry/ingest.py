"""Telemetry ingestion: device messages to events, bounded per device.

:class:`Ingestor` turns ``fw/<tenant>/<device>/telemetry[/...]`` messages
into ``metric`` events and writes them in batches (one multi-row insert per
flush). The broker only lets a device publish under its own id, so the topic
names the device. Each device has a token bucket (:data:`RATE` messages/s,
:data:`BURST` burst): a flood is **counted**, as one ``telemetry.dropped``
event per device and flush with the number dropped, never silently lost and
never allowed to crowd out other devices.

Losses are counted durably, as events with no tenant or device, written per
flush (not per message) in the flush's own transaction:

- ``ingest.overflow``: messages the MQTT callback could not queue
  (:data:`MAX_QUEUED` were waiting);
- ``ingest.dropped``: messages whose time fell outside the window around now
  (:data:`MAX_EVENT_AGE`, :data:`MAX_EVENT_LEAD`), and batches whose write
  failed twice (one retry, only when the failure came before the commit, so
  a batch is never stored twice).

Counts not yet written stay in memory and go out with the next flush that
succeeds; only a process that dies first loses them (docs/detection.md).

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
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from fleetward import identity, observe
from fleetward.store import Database
from fleetward.telemetry._events import record_events

__all__ = [
    "BURST",
    "MAX_EVENT_AGE",
    "MAX_EVENT_LEAD",
    "MAX_FIELDS_BYTES",
    "RATE",
    "Ingestor",
    "MqttIngest",
    "TokenBucket",
    "in_window",
]

log = logging.getLogger("fleetward.telemetry")

RATE = 20.0  # sustained messages per second per device
BURST = 100.0
MAX_FIELDS_BYTES = 4096  # one reading; larger payloads are refused and counted
SHARED_TOPIC = "$share/fleetward-ingest/fw/+/+/telemetry/#"
MAX_QUEUED = 200_000  # messages waiting for a round; more are counted in ``overflow``
MAX_PER_ROUND = 50_000  # messages one round parses and writes
# Event times are untrusted (a device or a caller chooses them): accepted
# only this far in the past (a device's buffered backlog after an outage) ...
MAX_EVENT_AGE = dt.timedelta(hours=24)
# ... and this far ahead of the server's clock (clock skew). A time outside
# would never be pruned (9999-12-31) or would rewrite old history.
MAX_EVENT_LEAD = dt.timedelta(minutes=5)


def in_window(at: dt.datetime, *, now: dt.datetime) -> bool:
    """Whether an event time lies within the accepted window around ``now``."""
    return now - MAX_EVENT_AGE <= at <= now + MAX_EVENT_LEAD


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
    wall: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    # Losses not yet written as events (see the module docstring), by type
    # and reason; cleared only by a flush that committed them.
    losses: dict[tuple[str, str], int] = field(default_factory=dict)

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
        if not in_window(at, now=self.wall()):
            self.count_loss("ingest.dropped", "timestamp out of window")
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

    def count_loss(self, type_: str, reason: str, n: int = 1) -> None:
        """Count ``n`` lost messages, to be written as one event per flush."""
        if n > 0:
            self.losses[(type_, reason)] = self.losses.get((type_, reason), 0) + n

    def flush(self) -> int:
        """Write what was taken since the last flush, and the losses counted
        so far; returns events written.

        A write that fails before its commit is retried once (nothing of it
        was stored, so the retry cannot store it twice); a batch that fails
        again, or whose commit failed, is counted as ``ingest.dropped`` and
        written with the next flush.
        """
        if not self.pending and not self.dropped and not self.losses:
            return 0
        batch, self.pending = self.pending, []
        dropped, self.dropped = self.dropped, {}
        for attempt in (1, 2):
            committing = False
            try:
                with self.db.session() as s:
                    written, losses = self._write(s, batch, dropped)
                    committing = True  # leaving the block commits
            except SQLAlchemyError as exc:
                if attempt == 1 and not committing:
                    log.warning("telemetry flush failed (%s): retrying once", exc)
                    continue
                log.exception("telemetry flush failed: %d readings counted as lost", len(batch))
                self.count_loss("ingest.dropped", "write failed", len(batch))
                for n in dropped.values():  # rate-limit counts that were not written
                    self.count_loss("ingest.dropped", "write failed", n)
                return 0
            for key, n in losses.items():  # committed: these are counted now
                left = self.losses.get(key, 0) - n
                if left > 0:
                    self.losses[key] = left
                else:
                    self.losses.pop(key, None)
            return written
        return 0  # pragma: no cover - the loop returns

    def _write(
        self, s: Session, batch: list[dict[str, Any]], dropped: dict[tuple[str, str], int]
    ) -> tuple[int, dict[tuple[str, str], int]]:
        """Insert one flush's rows in ``s``; returns how many, and the losses
        they count (cleared by the caller once committed)."""
        rows = []
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
        losses = dict(self.losses)
        rows.extend(
            {
                "tenant_id": None,
                "device_pk": None,
                "type": type_,
                "at": now,
                "count": n,
                "fields": json.dumps({"reason": reason}),
            }
            for (type_, reason), n in losses.items()
        )
        record_events(s, rows)
        observe.telemetry(ingested=metrics, dropped=sum(dropped.values()), session=s)
        return len(rows), losses


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
        self.overflow = 0  # since start (only the MQTT thread writes it)
        self._overflow_counted = 0  # of which handed to the ingestor's losses
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
        overflow = self.overflow  # read once: the MQTT thread may add more
        self.ingestor.count_loss("ingest.overflow", "queue full", overflow - self._overflow_counted)
        self._overflow_counted = overflow
        return self.ingestor.flush()

    def close(self) -> None:
        """Disconnect, then write what is still queued."""
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
        while not self.queue.empty():
            self.ingest_round()
