"""The ``broker`` fixture and helpers for broker tests: a real Mosquitto with the fleetward plugin,
devices with real certificates, and MQTT clients (paho and the mosquitto
command-line tools)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives import serialization
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from fleetward.comms.identities import SERVICE_IDENTITIES, ServiceIdentity
from fleetward.comms.mosquitto_conf import Listeners
from fleetward.identity import issuance
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.sim import Broker
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal
from tests.helpers import csr_pem, new_key


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Tests watch what devices send with an identity of their own: it may only
# subscribe (and receive) under fw/, never publish. fleetward itself has no
# such identity (fleetward.comms.identities).
OBSERVER = ServiceIdentity("observer", subscribe=("fw/#",))
TEST_IDENTITIES = {**SERVICE_IDENTITIES, OBSERVER.job: OBSERVER}


def free_listeners() -> Listeners:
    """Every listener on its own free loopback port."""
    ports: set[int] = set()
    while len(ports) < 4:
        ports.add(free_port())
    test, production, drill, service = sorted(ports)
    return Listeners(
        host="127.0.0.1",
        ports={"test": test, "production": production, "drill": drill},
        service_port=service,
    )


@pytest.fixture
def broker(
    ctx: AppContext, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[BrokerRuntime]:
    """Mosquitto + plugin + sync loop on free loopback ports (a device
    listener per environment, the service listener). Beside the API
    fixtures, a trust change wakes their publisher, as in ``fleetward up``.
    ``broker.port`` is the test environment's listener (make_device's)."""
    runtime = BrokerRuntime(
        ctx,
        ctx.settings.home / "broker",
        listeners=free_listeners(),
        interval=0.05,
        identities=TEST_IDENTITIES,
    )
    if "runtime" in request.fixturenames:
        runtime.sync.on_change = request.getfixturevalue("runtime").worker("publisher").wake
    runtime.start()
    yield runtime
    runtime.stop()


@dataclass
class DeviceCreds:
    device_id: str
    tenant: str
    cert: Path
    key: Path
    serial: str


def admin_of(ctx: AppContext, tenant: str = "default") -> Principal:
    with ctx.db.session() as s:
        t = tenancy.get_tenant_by_name(s, tenant)
    return Principal(tenant_id=t.id, tenant_name=t.name, role="admin", actor="test")


def make_device(
    ctx: AppContext,
    tmp_path: Path,
    device_id: str,
    *,
    tenant: str = "default",
    product: str = "thermo",
    labels: dict[str, str] | None = None,
    environment: str = "test",
) -> DeviceCreds:
    """Enroll a device (by default in the test environment) and write its key
    and certificate."""
    key = new_key()
    admin = admin_of(ctx, tenant)
    with ctx.db.session() as s:
        issued = issuance.enroll(
            s,
            ctx.pki,
            admin,
            device_id=device_id,
            csr=csr_pem(key, device_id),
            environment=environment,
            product=product,
            labels=labels,
        )
    suffix = "" if environment == "test" else f"-{environment}"
    folder = tmp_path / f"{tenant}-{device_id}{suffix}"
    folder.mkdir(exist_ok=True)
    key_path = folder / "key.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path = folder / "cert.pem"
    cert_path.write_bytes(issued.certificate.public_bytes(serialization.Encoding.PEM))
    return DeviceCreds(device_id, tenant, cert_path, key_path, issued.serial)


@dataclass
class Client:
    """A paho MQTT v5 client that records what happens to it."""

    client: mqtt.Client
    messages: list[tuple[str, bytes]] = field(default_factory=list)
    suback: list[int] = field(default_factory=list)
    puback: dict[int, int] = field(default_factory=dict)
    connected: threading.Event = field(default_factory=threading.Event)
    disconnected: threading.Event = field(default_factory=threading.Event)
    disconnect_reason: int | None = None

    def subscribe(self, topic: str, qos: int = 1) -> int:
        before = len(self.suback)
        self.client.subscribe(topic, qos=qos)
        wait_for(lambda: len(self.suback) > before, what=f"SUBACK for {topic}")
        return self.suback[-1]

    def publish(self, topic: str, payload: bytes = b"x", qos: int = 1) -> int:
        info = self.client.publish(topic, payload, qos=qos)
        if qos == 0:
            return 0
        wait_for(lambda: info.mid in self.puback, what=f"PUBACK for {topic}")
        rc = self.puback[info.mid]
        return 0 if rc == 0x10 else rc  # 0x10: accepted, nobody subscribed

    def topics(self) -> list[str]:
        return [t for t, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate: Callable[[], bool], *, timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def connect(
    port: int,
    ca: Path,
    cert: Path,
    key: Path,
    *,
    client_id: str = "",
    expect_ok: bool = True,
    password: bytes | None = None,
) -> Client:
    """Connect a paho client over TLS with a client certificate."""
    # No automatic reconnection: a refused client must stay refused, and a
    # retry loop would leave sockets behind when the test ends.
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        reconnect_on_failure=False,
    )
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key), password=password)
    c.tls_set_context(ctx)
    state = Client(c)

    def on_connect(
        client: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if not rc.is_failure:
            state.connected.set()

    def on_disconnect(
        client: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        state.disconnect_reason = rc.value
        state.disconnected.set()

    def on_message(client: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        state.messages.append((msg.topic, bytes(msg.payload)))

    def on_subscribe(
        client: mqtt.Client, _u: object, _mid: int, rcs: list[ReasonCode], _p: Properties | None
    ) -> None:
        state.suback.append(rcs[0].value)

    def on_publish(
        client: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        state.puback[mid] = rc.value

    c.on_connect = on_connect
    c.on_disconnect = on_disconnect
    c.on_message = on_message
    c.on_subscribe = on_subscribe
    c.on_publish = on_publish
    try:
        c.connect("127.0.0.1", port, keepalive=30)
    except (ssl.SSLError, OSError):
        state.disconnected.set()
        if expect_ok:
            raise
        return state
    c.loop_start()
    if expect_ok:
        wait_for(state.connected.is_set, what="CONNACK")
    return state


def synced(broker: BrokerRuntime) -> None:
    """Wait until the broker enforces the newest database state."""
    broker.sync.refresh()
    time.sleep(0.15)  # the plugin stats the table every 50 ms


def service_connect(broker: BrokerRuntime, job: str, **kw: object) -> Client:
    """Connect to the service listener as fleetward's identity ``job``
    (``ingest``, ``commands``, ``ota``, or the tests' ``observer``)."""
    pair = broker.ctx.service_pki.client(job)
    return connect(broker.service_port, broker.files.broker_ca, pair.cert, pair.key, **kw)  # type: ignore[arg-type]


def observe(broker: BrokerRuntime, topic: str = "fw/#") -> Client:
    """A receive-only watcher of what devices send (the tests' ``observer``)."""
    watcher = service_connect(broker, OBSERVER.job)
    watcher.subscribe(topic)
    return watcher


def sim_broker(broker: BrokerRuntime) -> Broker:
    """The simulator's view of the broker: each environment's listener."""
    return Broker(
        host=broker.host,
        port=broker.ports["production"],
        ca=broker.files.broker_ca,
        listeners=broker.ports,
    )
