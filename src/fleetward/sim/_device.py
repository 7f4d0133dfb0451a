"""One simulated device on the fleet's asyncio loop.

The device is a real :class:`fleetward.agent.mqtt.DeviceAgent` (outbox,
subscriptions, commands, OTA dispatch) whose paho client is driven by the
loop through paho's external-loop API instead of a thread: the socket is
registered with ``add_reader``/``add_writer`` and the fleet calls
``loop_misc`` for keepalives. Everything that touches the paho client runs
on the loop thread; OTA jobs and attestation run on the fleet's shared
executor and come back through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleetward.agent import DeviceAgent, backoff

log = logging.getLogger("fleetward.sim")

# Outcomes of one connection attempt that mean "the broker will not have
# this device" (a revoked certificate fails the handshake, a refused CONNECT),
# as opposed to "the broker is not there" (connection refused, timeout).
_UNREACHABLE = (ConnectionRefusedError, TimeoutError, socket.gaierror)
FINAL_STEPS = ("committed", "fell-back", "refused", "error")
SESSION_LASTED = 30.0  # seconds; a session this long resets the backoff (as the agent does)


@dataclass(frozen=True)
class Endpoint:
    """Where the broker listens."""

    host: str
    port: int


class SimDevice:
    """The simulator's state around one agent (touched on the loop thread only)."""

    def __init__(
        self,
        agent: DeviceAgent,
        *,
        online: bool,
        slow: float,
        batch: str,
        version: str,
        rng: random.Random,
    ) -> None:
        self.agent = agent
        self.device_id = agent.device_id
        self.online = online
        self.slow = slow
        self.batch = batch
        self.version = version
        self.rng = rng
        self.client: mqtt.Client | None = None
        self.connected = False
        self.connected_at: float | None = None
        self.disconnected_at: float | None = None
        self.cut_off = False
        self.cut_off_at: float | None = None
        self.updated_at: float | None = None
        self.renewed_at: float | None = None  # the last renewal on command (monotonic)
        self.ota_steps: list[str] = []
        self.ota_step_at: list[float] = []  # when each step was reported (monotonic)
        self.offered_at: list[float] = []  # when each OTA offer arrived (monotonic)
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.session_over = asyncio.Event()
        self.acknowledged = False  # this session got a successful CONNACK

    def snapshot(self) -> dict[str, Any]:
        """Plain values (picklable, JSON-able)."""
        stats = self.agent.stats
        return {
            "device_id": self.device_id,
            "batch": self.batch,
            "online": self.online,
            "connected": self.connected,
            "connected_at": self.connected_at,
            "disconnected_at": self.disconnected_at,
            "cut_off": self.cut_off,
            "cut_off_at": self.cut_off_at,
            "connects": stats.connects,
            "published": stats.published,
            "refused": stats.refused,
            "last_refused_at": stats.last_refused_at,
            "version": self.version,
            "updated_at": self.updated_at,
            "renewals": stats.renewals,
            "renewed_at": self.renewed_at,
            "ota_steps": list(self.ota_steps),
            "ota_step_at": list(self.ota_step_at),
            "offered_at": list(self.offered_at),
        }

    def record_step(self, step: dict[str, Any]) -> None:
        """An OTA step the device reported (on the loop thread)."""
        name = str(step.get("step", ""))
        self.ota_steps.append(name)
        self.ota_step_at.append(time.monotonic())
        if name in FINAL_STEPS and step.get("version"):
            self.version = str(step["version"])
        if name == "committed":
            self.updated_at = time.monotonic()
        self.wake.set()  # flush the report


class Driver:
    """Runs devices on one loop: connect (one at a time), session, reconnect."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        endpoint: Endpoint,
        reading: Callable[[SimDevice], dict[str, Any]],
        interval: float,
        backoff_base: float,
        backoff_cap: float,
        executor: concurrent.futures.Executor | None = None,
    ) -> None:
        self.loop = loop
        self.executor = executor  # blocking work (renewal over HTTP)
        self.endpoint = endpoint
        self.reading = reading
        self.interval = interval
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.stopping = False
        # paho's connect() makes the TLS handshake blocking; one at a time
        # keeps the loop responsive and the broker's accept queue short.
        self.gate = asyncio.Semaphore(1)
        self.devices: list[SimDevice] = []

    # -- paho's external loop -----------------------------------------------

    def _wire(self, dev: SimDevice, client: mqtt.Client) -> None:
        loop = self.loop
        # The agent's own callbacks (its outbox, subscriptions, commands, OTA).
        agent_connect: Any = client.on_connect
        agent_disconnect: Any = client.on_disconnect
        agent_message: Any = client.on_message

        def on_connect(
            c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: Properties | None
        ) -> None:
            if agent_connect is None:
                raise RuntimeError("broken invariant, expected: agent_connect is not None")
            agent_connect(c, u, f, rc, p)
            if rc.is_failure:
                self._refused(dev)
                return
            dev.acknowledged = True
            dev.connected = True
            dev.connected_at = time.monotonic()
            dev.cut_off, dev.cut_off_at = False, None

        def on_disconnect(
            c: mqtt.Client, u: object, f: object, rc: ReasonCode, p: Properties | None
        ) -> None:
            if agent_disconnect is None:
                raise RuntimeError("broken invariant, expected: agent_disconnect is not None")
            agent_disconnect(c, u, f, rc, p)
            if dev.connected:
                dev.disconnected_at = time.monotonic()
            elif not dev.acknowledged and not self.stopping and dev.online:
                self._refused(dev)  # TLS 1.3: a refused certificate shows on the first read
            dev.connected = False
            dev.session_over.set()
            dev.wake.set()

        def handle(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            agent_message(c, u, msg)
            dev.wake.set()  # a command's result waits in the outbox: send it now

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            if msg.topic.endswith("/ota/offer"):
                dev.offered_at.append(time.monotonic())
            if dev.slow:
                loop.call_later(dev.slow, handle, c, u, msg)
            else:
                handle(c, u, msg)

        def readable() -> None:
            client.loop_read()
            sock = client.socket()
            # TLS may hold decrypted records the selector cannot see.
            while isinstance(sock, ssl.SSLSocket) and sock.pending():
                client.loop_read()
                sock = client.socket()

        def on_open(c: mqtt.Client, u: object, sock: Any) -> None:
            loop.add_reader(sock, readable)

        def on_close(c: mqtt.Client, u: object, sock: Any) -> None:
            loop.remove_reader(sock)
            loop.remove_writer(sock)

        def on_write(c: mqtt.Client, u: object, sock: Any) -> None:
            loop.add_writer(sock, client.loop_write)

        def on_unwrite(c: mqtt.Client, u: object, sock: Any) -> None:
            loop.remove_writer(sock)

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_message = on_message
        client.on_socket_open = on_open
        client.on_socket_close = on_close
        client.on_socket_register_write = on_write
        client.on_socket_unregister_write = on_unwrite

    def _refused(self, dev: SimDevice) -> None:
        if not dev.cut_off:
            dev.cut_off = True
            dev.cut_off_at = dev.disconnected_at or time.monotonic()

    async def misc(self) -> None:
        """Keepalives and timeouts of every connection, once a second."""
        while not self.stopping:
            for dev in self.devices:
                if dev.client is not None:
                    dev.client.loop_misc()
            await asyncio.sleep(1.0)

    # -- one device's life ----------------------------------------------------

    async def _pause(self, dev: SimDevice, seconds: float) -> None:
        dev.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(dev.wake.wait(), timeout=seconds)

    async def life(self, dev: SimDevice) -> None:
        """Connect, publish and reconnect while the device is online."""
        attempt = 0
        while dev.online and not self.stopping:
            started = time.monotonic()
            if not await self._connect(dev):
                attempt += 1
            else:
                renewed = await self._session(dev)
                if not dev.online or self.stopping:
                    break
                if renewed:  # reconnect at once, with the new certificate
                    await self._hang_up(dev)
                    attempt = 0
                    continue
                lasted = dev.acknowledged and time.monotonic() - started > SESSION_LASTED
                attempt = 1 if lasted else attempt + 1
            delay = backoff(attempt, base=self.backoff_base, cap=self.backoff_cap, rng=dev.rng)
            dev.agent.stats.last_delays.append(delay)
            del dev.agent.stats.last_delays[:-10]
            await self._pause(dev, delay)
        await self._hang_up(dev)

    async def _connect(self, dev: SimDevice) -> bool:
        async with self.gate:
            if not dev.online or self.stopping:
                return False
            client = dev.agent.client()
            self._wire(dev, client)
            dev.session_over.clear()
            dev.acknowledged = False
            try:
                client.connect(
                    self.endpoint.host,
                    self.endpoint.port,
                    keepalive=30,
                    clean_start=True,
                    properties=dev.agent.connect_properties(),
                )
            except OSError as exc:  # ssl.SSLError is one
                dev.agent.stats.connect_failures += 1
                if isinstance(exc, ssl.SSLError) or not isinstance(exc, _UNREACHABLE):
                    self._refused(dev)
                log.debug("%s: connect failed: %s", dev.device_id, exc)
                return False
            dev.client = client
            await asyncio.sleep(0)  # let the others read between handshakes
            return True

    async def _session(self, dev: SimDevice) -> bool:
        """Publish until the connection ends; whether it ended for a renewal."""
        client = dev.client
        if client is None:
            raise RuntimeError("broken invariant, expected: client is not None")
        next_reading = time.monotonic() + dev.rng.uniform(0, self.interval)
        while not dev.session_over.is_set() and dev.online and not self.stopping:
            now = time.monotonic()
            if now >= next_reading:
                dev.agent.enqueue("telemetry", self.reading(dev))
                next_reading = now + self.interval
            if dev.connected and dev.agent.outbox:
                if dev.slow:
                    await asyncio.sleep(dev.slow)
                if dev.connected:
                    dev.agent.flush(client)
            if dev.agent.renewal_requested and await self._renew(dev):
                return True
            await self._pause(dev, max(0.0, next_reading - time.monotonic()))
        return False

    async def _renew(self, dev: SimDevice) -> bool:
        """The agent's renewal over HTTP, in the shared executor (the ``renew``
        command: same key, a certificate from the CA that issues now)."""
        if self.executor is None or dev.agent.config.server_url is None:
            return False
        try:
            done = await self.loop.run_in_executor(self.executor, dev.agent.renew_now)
        except Exception as exc:  # the device keeps its certificate and carries on
            log.info("%s: renewal failed: %s", dev.device_id, exc)
            return False
        if done:
            dev.renewed_at = time.monotonic()
        return done

    async def _hang_up(self, dev: SimDevice) -> None:
        client, dev.client = dev.client, None
        if client is None:
            return
        if client.socket() is not None:
            client.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dev.session_over.wait(), timeout=2.0)
        sock = client.socket()
        if sock is not None:  # the broker did not answer in time: close it ourselves
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
            sock.close()
        dev.connected = False

    # -- control --------------------------------------------------------------

    def launch(self, dev: SimDevice) -> None:
        """Start the device's life if it is online and not running."""
        if dev.task is None or dev.task.done():
            dev.task = self.loop.create_task(self.life(dev), name=dev.device_id)
