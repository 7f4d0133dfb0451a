"""The agent's connection to the broker: telemetry out, commands in, renewal.

:class:`DeviceAgent` connects over TLS with the device certificate (the key
stays in its keystore), publishes telemetry at QoS 1 from an **outbox** that
only forgets a reading once the broker acknowledged it, subscribes to its own
command and update topics, and reconnects with exponential backoff and full
jitter (:func:`backoff`) so a fleet that lost its broker does not come back
in lockstep. Before the certificate expires it renews over HTTP with a CSR
from the same key, then reconnects with the new certificate; readings taken
meanwhile wait in the outbox, so nothing is dropped.

Topics (see docs/comms.md): ``fw/<tenant>/<device>/telemetry``,
``fw/<tenant>/<device>/cmd/<name>`` (in), ``fw/<tenant>/<device>/cmd-result/<name>``
(out), ``fw/<tenant>/<device>/ota/#`` (in).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleetward.agent._tls import tls_context
from fleetward.agent.client import device_server, load_identity, renew
from fleetward.agent.keystore import Keystore
from fleetward.agent.ota import OtaClient

__all__ = [
    "AgentConfig",
    "DeviceAgent",
    "backoff",
    "broker_listener",
    "environment_of",
    "tenant_of",
]

log = logging.getLogger("fleetward.agent")

# The outbox is bounded: a device offline for days keeps its newest readings.
MAX_OUTBOX = 10_000
# No persistent session: the agent subscribes again on every connect and its
# own outbox keeps unsent readings, while the broker refuses deliveries to a
# session with no connection anyway. A persistent session also lets Mosquitto
# 2.0's reload (SIGHUP) disconnect an offline session twice, which corrupts
# its session-expiry list and crashes it (eclipse-mosquitto #1494, #3418;
# tests/comms/test_plugin_kicks.py).
SESSION_EXPIRY = 0


def backoff(attempt: int, *, base: float = 0.5, cap: float = 60.0, rng: random.Random) -> float:
    """Seconds to wait before reconnection ``attempt`` (1, 2, ...): full jitter
    over an exponentially growing window, so a fleet spreads out."""
    if attempt <= 0:
        return 0.0
    window = min(cap, base * (2 ** (attempt - 1)))
    return rng.uniform(0.0, window)


@dataclass
class AgentConfig:
    """How one device agent runs."""

    directory: Path  # the device's enrolled identity (identity.json, cert.pem, ca.pem)
    keystore: Keystore
    broker_host: str
    broker_port: int
    broker_ca: Path
    server_url: str | None = None  # the device plane (HTTPS): renewal, attestation
    server_ca: Path | None = None  # its CA (the service CA); default: broker_ca
    telemetry_interval: float = 10.0
    renew_within: dt.timedelta = dt.timedelta(days=30)
    min_renew_interval: float = 3600.0  # never renew more often (clock skew, retries)
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    seed: int | None = None


@dataclass
class AgentStats:
    """What happened (for tests, the CLI and the simulator)."""

    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    published: int = 0
    renewals: int = 0
    attestations: int = 0  # evidence submitted (and appraised)
    commands: list[str] = field(default_factory=list)
    updates: list[str] = field(default_factory=list)
    last_delays: list[float] = field(default_factory=list)
    # Publishes the broker acknowledged with a failure reason (>= 0x80, e.g.
    # 0x87 not authorized once the device is quarantined), and when the last
    # one arrived (time.monotonic()): drills watch these to see a response act.
    refused: int = 0
    last_refused_at: float | None = None


class DeviceAgent:
    """One device's MQTT life (run it in a thread: :meth:`run` blocks)."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        reading: Callable[[], dict[str, Any]] | None = None,
        clock: Callable[[], dt.datetime] | None = None,
        ota: OtaClient | None = None,
        attester: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.config = config
        self.attester = attester  # submits boot evidence (the ``attest`` command)
        identity = load_identity(config.directory)
        self.device_id: str = identity["device_id"]
        self.tenant = tenant_of(config.directory / "cert.pem")
        self.prefix = f"fw/{self.tenant}/{self.device_id}"
        self.reading = reading or (lambda: {})
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.stats = AgentStats()
        self.outbox: collections.OrderedDict[int, tuple[str, bytes]] = collections.OrderedDict()
        self._seq = 0
        self._rng = random.Random(config.seed)  # noqa: S311 - jitter, not secrets
        self._lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # paho mid -> outbox seq
        self._connected = threading.Event()
        self._session_over = threading.Event()
        self._renew_requested = threading.Event()
        self._last_renewal = 0.0
        self._next_reading = time.monotonic()
        self.connected_serial: str | None = None
        self.ota = ota

    # -- outbox ---------------------------------------------------------------

    def enqueue(self, topic_suffix: str, payload: dict[str, Any]) -> int:
        """Queue a message for the broker; returns its sequence number."""
        with self._lock:
            self._seq += 1
            body = json.dumps({"seq": self._seq, **payload}, separators=(",", ":")).encode()
            self.outbox[self._seq] = (f"{self.prefix}/{topic_suffix}", body)
            while len(self.outbox) > MAX_OUTBOX:
                self.outbox.popitem(last=False)
            return self._seq

    def flush(self, client: mqtt.Client) -> None:
        """Publish what the outbox holds and is not in flight on ``client``."""
        with self._lock:
            pending = [
                (seq, t, b)
                for seq, (t, b) in self.outbox.items()
                if seq not in self._inflight.values()
            ]
        for seq, topic, body in pending:
            info = client.publish(topic, body, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return  # disconnected; the next session sends it
            with self._lock:
                self._inflight[info.mid] = seq

    # -- one connection -------------------------------------------------------

    def client(self) -> mqtt.Client:
        """A new paho client for one connection, with this agent's TLS identity
        and callbacks (the simulator drives it from its own event loop)."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv5
        )
        client.tls_set_context(tls_context(self.config))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def connect_properties(self) -> Properties:
        """The MQTT 5 CONNECT properties the agent sends (session expiry)."""
        return _connect_properties()

    def _on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            log.warning("%s: broker refused the connection: %s", self.device_id, rc)
            self._session_over.set()
            return
        self.stats.connects += 1
        client.subscribe(f"{self.prefix}/cmd/+", qos=1)
        client.subscribe(f"{self.prefix}/ota/#", qos=1)
        self._connected.set()
        self.flush(client)

    def _on_disconnect(
        self, client: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        self.stats.disconnects += 1
        self._connected.clear()
        with self._lock:
            self._inflight.clear()  # unacknowledged readings stay in the outbox
        self._session_over.set()

    def _on_publish(
        self, client: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is not None and rc.value < 0x80:
                self.outbox.pop(seq, None)
                self.stats.published += 1
            elif seq is not None:
                # Refused by the broker (not authorized, too large): retrying
                # cannot help; drop it and say so.
                log.warning("%s: broker refused message %d: %s", self.device_id, seq, rc)
                self.outbox.pop(seq, None)
                self.stats.refused += 1
                self.stats.last_refused_at = time.monotonic()

    def _on_message(self, client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        suffix = msg.topic[len(self.prefix) + 1 :]
        if suffix.startswith("cmd/"):
            name = suffix[4:]
            self.stats.commands.append(name)
            self._command(name, bytes(msg.payload))
        elif suffix.startswith("ota/"):
            kind = suffix[4:]
            self.stats.updates.append(kind)
            if self.ota is not None and kind in ("offer", "fallback"):
                try:
                    payload = json.loads(msg.payload)
                except ValueError:
                    return
                if isinstance(payload, dict):
                    self.ota.submit(kind, payload)

    def _command(self, name: str, payload: bytes) -> None:
        if name == "ping":
            self.enqueue("cmd-result/ping", {"ok": True})
        elif name == "renew":
            self._renew_requested.set()
            self.enqueue("cmd-result/renew", {"ok": True})
        elif name == "attest" and self.attester is not None:
            # Off the network thread: attesting is two HTTPS round trips.
            threading.Thread(target=self._attest_command, name="attest", daemon=True).start()
        else:
            self.enqueue(f"cmd-result/{name}", {"ok": False, "error": "unknown command"})

    # -- renewal --------------------------------------------------------------

    def _renewal_due(self) -> bool:
        if self.config.server_url is None:
            return False
        if (
            time.monotonic() - self._last_renewal < self.config.min_renew_interval
            and self._last_renewal
        ):
            return False
        if self._renew_requested.is_set():
            return True
        cert = x509.load_pem_x509_certificate((self.config.directory / "cert.pem").read_bytes())
        return cert.not_valid_after_utc - self.clock() <= self.config.renew_within

    def attest_now(self) -> dict[str, Any] | None:
        """Submit boot evidence now (``attester``); the verdict, or ``None``
        when there is no attester or it failed (logged: the device keeps
        working, and the server sees no fresh evidence)."""
        if self.attester is None:
            return None
        try:
            verdict = self.attester()
        except Exception as exc:
            log.warning("%s: attestation failed: %s", self.device_id, exc)
            return None
        self.stats.attestations += 1
        return verdict

    def _ota_step(self, step: dict[str, Any]) -> None:
        self.enqueue("state/ota", step)
        if step.get("step") == "committed" and self.attester is not None:
            # A new image boots: the verifier hears about it at once.
            threading.Thread(target=self.attest_now, name="attest", daemon=True).start()

    def _attest_command(self) -> None:
        verdict = self.attest_now()
        result = {"ok": verdict is not None, "verdict": (verdict or {}).get("verdict")}
        self.enqueue("cmd-result/attest", result)

    def _renew(self) -> bool:
        if self.config.server_url is None:
            raise RuntimeError("broken invariant, expected: self.config.server_url is not None")
        with device_server(
            self.config.server_url,
            directory=self.config.directory,
            keystore=self.config.keystore,
            ca=self.config.server_ca or self.config.broker_ca,
        ) as server:
            done = renew(
                server,
                self.config.keystore,
                self.config.directory,
                within=dt.timedelta(days=365_000),  # we decided already
                now=self.clock(),
            )
        self._renew_requested.clear()
        self._last_renewal = time.monotonic()
        if done:
            self.stats.renewals += 1
        return done

    @property
    def renewal_requested(self) -> bool:
        """The server asked for a renewal (the ``renew`` command)."""
        return self._renew_requested.is_set()

    def renew_now(self) -> bool:
        """Renew over HTTP at once (blocking; for callers that run their own
        loop, like the simulator); whether a new certificate was saved.

        Raises:
            (what :func:`fleetward.agent.client.renew` raises)
        """
        return self._renew()

    # -- the loop -------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Connect, publish, renew and reconnect until ``stop`` is set."""
        if self.ota is not None:
            self.ota.start(self._ota_step)
        try:
            self._run(stop)
        finally:
            if self.ota is not None:
                self.ota.stop()

    def _run(self, stop: threading.Event) -> None:
        attempt = 0
        while not stop.is_set():
            if self._renewal_due():
                try:
                    self._renew()
                except Exception as exc:  # the device keeps working on its current certificate
                    log.warning("%s: renewal failed: %s", self.device_id, exc)
                    self._last_renewal = time.monotonic()
            self._session_over.clear()
            client = self.client()
            try:
                client.connect(
                    self.config.broker_host,
                    self.config.broker_port,
                    keepalive=30,
                    clean_start=True,
                    properties=_connect_properties(),
                )
            except (OSError, ssl.SSLError) as exc:
                self.stats.connect_failures += 1
                attempt += 1
                delay = backoff(
                    attempt,
                    base=self.config.backoff_base,
                    cap=self.config.backoff_cap,
                    rng=self._rng,
                )
                self.stats.last_delays.append(delay)
                log.info("%s: connect failed (%s); retry in %.2f s", self.device_id, exc, delay)
                stop.wait(delay)
                continue
            client.loop_start()
            self.connected_serial = load_identity(self.config.directory).get("serial")
            connects_before, started = self.stats.connects, time.monotonic()
            renewed = self._session(client, stop)
            client.disconnect()
            client.loop_stop()
            self._connected.clear()
            with self._lock:
                self._inflight.clear()
            if stop.is_set() or renewed:
                attempt = 0
                continue
            # A session that lasted resets the backoff; one cut short (refused,
            # kicked at once) keeps growing it, so a cut-off device never spins.
            lasted = self.stats.connects > connects_before and time.monotonic() - started > 30
            attempt = 1 if lasted else attempt + 1
            delay = backoff(
                attempt, base=self.config.backoff_base, cap=self.config.backoff_cap, rng=self._rng
            )
            self.stats.last_delays.append(delay)
            stop.wait(delay)

    def _session(self, client: mqtt.Client, stop: threading.Event) -> bool:
        """Publish readings until the connection ends; whether it ended for a renewal."""
        while not stop.is_set() and not self._session_over.is_set():
            now = time.monotonic()
            if now >= self._next_reading:
                self.enqueue("telemetry", self.reading())
                self._next_reading = now + self.config.telemetry_interval
                if self._connected.is_set():
                    self.flush(client)
            if self._renewal_due():
                try:
                    if self._renew():
                        return True  # reconnect with the new certificate
                except Exception as exc:  # keep working on the current certificate
                    log.warning("%s: renewal failed: %s", self.device_id, exc)
                    self._last_renewal = time.monotonic()
            self._session_over.wait(min(0.1, max(0.0, self._next_reading - time.monotonic())))
        return False


def tenant_of(cert_path: Path) -> str:
    """The tenant a device certificate names (its subject's O)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    [org] = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(org.value)


def environment_of(cert_path: Path) -> str:
    """The environment a device certificate belongs to (its subject's OU)."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    [unit] = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(unit.value)


def broker_listener(announced: Mapping[str, Any], environment: str) -> tuple[str, int]:
    """The listener of ``environment`` in what ``GET /api/v1/comms/broker``
    answered: each environment's listener trusts only its own issuing CAs,
    so a device connects to its own (an older server announces one
    ``host``/``port``).

    Raises:
        ValueError: the answer names no listener for ``environment``.
    """
    listeners = announced.get("listeners")
    try:
        if isinstance(listeners, Mapping):
            mine = listeners[environment]
            return str(mine["host"]), int(mine["port"])
        return str(announced["host"]), int(announced["port"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"the server announces no broker listener for {environment!r}") from exc


def _connect_properties() -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY
    return props
