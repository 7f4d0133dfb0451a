"""Environments separated at the broker, and fleetward's least-privilege identities.

A real Mosquitto with the fleetward plugin: one device listener per
environment, each trusting only that environment's issuing CAs, and a
service listener trusting only fleetward's service CA. Certificates of each
environment are tried against each listener with ``mosquitto_pub`` and
``openssl s_client``; each service identity tries topics outside its job.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from fleetward.comms import CommandSender
from fleetward.errors import BrokerUnavailableError
from fleetward.identity import ca_service
from fleetward.ota.driver import ReportInbox
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.runtime.workers import IngestWorker
from fleetward.telemetry.models import Event
from fleetward.tenancy import service as tenancy
from tests.broker import (
    DeviceCreds,
    admin_of,
    connect,
    make_device,
    observe,
    service_connect,
    synced,
    wait_for,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ENVS = ("test", "production", "drill")
NOT_AUTHORIZED = 0x87


def mosquitto_pub(port: int, ca: Path, cert: Path, key: Path, topic: str) -> int:
    proc = subprocess.run(
        [
            "mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5", "-q", "1",
            "--cafile", str(ca), "--cert", str(cert), "--key", str(key),
            "-t", topic, "-m", "x",
        ],
        capture_output=True, text=True, timeout=15, check=False,
    )  # fmt: skip
    return proc.returncode


def s_client(port: int, ca: Path, cert: Path, key: Path) -> subprocess.CompletedProcess[str]:
    """One TLS 1.2 handshake (a refused client certificate fails it at once)."""
    return subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-tls1_2",
            "-CAfile", str(ca), "-cert", str(cert), "-key", str(key),
            "-verify_return_error", "-brief",
        ],
        input="", capture_output=True, text=True, timeout=15, check=False,
    )  # fmt: skip


def events(ctx: AppContext, type_: str) -> list[dict[str, object]]:
    with ctx.db.read() as s:
        rows = s.execute(select(Event).where(Event.type == type_)).scalars()
        return [{"count": e.count, **json.loads(e.fields)} for e in rows]


def each_env(ctx: AppContext, tmp_path: Path, prefix: str = "e") -> dict[str, DeviceCreds]:
    return {env: make_device(ctx, tmp_path, f"{prefix}-{env}", environment=env) for env in ENVS}


def test_each_listener_accepts_only_its_own_environment(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    devices = each_env(ctx, tmp_path)
    synced(broker)
    ca = broker.files.broker_ca
    for listener, port in broker.ports.items():
        for env, d in devices.items():
            rc = mosquitto_pub(port, ca, d.cert, d.key, f"fw/default/{d.device_id}/telemetry/t")
            if env == listener:
                assert rc == 0, f"a {env} device was refused at its own listener"
            else:
                assert rc != 0, f"a {env} device was let in at the {listener} listener"
    # openssl agrees: the handshake itself fails (no anchor for the chain).
    for listener, port in broker.ports.items():
        for env, d in devices.items():
            proc = s_client(port, ca, d.cert, d.key)
            if env == listener:
                assert proc.returncode == 0, proc.stderr
            else:
                assert proc.returncode != 0, (listener, env, proc.stderr)
    # Counted, with the peer and the reason.
    wait_for(
        lambda: len(events(ctx, "authz.handshake-refused")) >= 12,
        timeout=5,
        what="refused handshakes",
    )


def test_a_device_certificate_is_refused_at_the_service_listener_and_back(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    devices = each_env(ctx, tmp_path)
    synced(broker)
    ca = broker.files.broker_ca
    for d in devices.values():
        c = connect(broker.service_port, ca, d.cert, d.key, expect_ok=False)
        assert not c.connected.wait(1.0), "a device reached the service listener"
        c.close()
        assert s_client(broker.service_port, ca, d.cert, d.key).returncode != 0
    for job in ("ingest", "commands", "ota"):
        pair = ctx.service_pki.client(job)
        for env, port in broker.ports.items():
            assert mosquitto_pub(port, ca, pair.cert, pair.key, "fw/default/x/cmd/ping") != 0, (
                f"fleetward-{job} reached the {env} device listener"
            )
    # The broker's own server certificate is no client certificate anywhere.
    server = ctx.service_pki.server()
    for port in (*broker.ports.values(), broker.service_port):
        assert s_client(port, ca, server.cert, server.key).returncode != 0


@pytest.mark.parametrize(
    ("job", "action", "topic"),
    [
        ("commands", "publish", "fw/default/d1/telemetry/forged"),
        ("commands", "publish", "fw/default/d1/ota/offer"),
        ("commands", "subscribe", "fw/default/#"),
        ("ingest", "publish", "fw/default/d1/cmd/wipe"),
        ("ingest", "publish", "fw/default/d1/telemetry/forged"),
        ("ingest", "subscribe", "fw/+/+/cmd-result/+"),
        ("ota", "publish", "fw/default/d1/cmd/wipe"),
        ("ota", "subscribe", "fw/+/+/telemetry/#"),
        ("ota", "subscribe", "#"),
    ],
)
def test_a_service_identity_outside_its_job_is_denied_and_counted(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path, job: str, action: str, topic: str
) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    device = connect(broker.port, broker.files.broker_ca, d1.cert, d1.key)
    assert device.subscribe("fw/default/d1/#") in (0, 1, NOT_AUTHORIZED)
    assert device.subscribe("fw/default/d1/cmd/+") == 1
    assert device.subscribe("fw/default/d1/ota/#") == 1
    watcher = observe(broker)
    svc = service_connect(broker, job)
    if action == "publish":
        assert svc.publish(topic, b"not my job") == NOT_AUTHORIZED
    else:
        assert svc.subscribe(topic) == NOT_AUTHORIZED
        assert device.publish("fw/default/d1/telemetry/t", b"reading") == 0
        assert device.publish("fw/default/d1/cmd-result/ping", b"pong") == 0
    time.sleep(0.3)
    assert not any(p == b"not my job" for _, p in device.messages + watcher.messages)
    if action == "subscribe":
        assert svc.messages == []
    username = f"CN=fleetward-{job}"
    wait_for(
        lambda: any(
            e["identity"] == username and e["topic"] == topic and e["action"] == action
            for e in events(ctx, "authz.denied")
        ),
        timeout=5,
        what="the denial in the plugin's events",
    )
    for c in (device, watcher, svc):
        c.close()


def test_another_certificate_of_a_service_identity_is_refused(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    """Only the certificate the table lists is ``fleetward-commands``: one
    minted with the same subject by the same CA (a leaked CA key, an old
    certificate) is muted."""
    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    ca_dir = ctx.service_pki.root
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetward-commands")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "twin.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "twin.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    device = connect(broker.port, broker.files.broker_ca, d1.cert, d1.key)
    assert device.subscribe("fw/default/d1/cmd/+") == 1
    twin = connect(
        broker.service_port, broker.files.broker_ca, tmp_path / "twin.pem", tmp_path / "twin.key"
    )
    assert twin.publish("fw/default/d1/cmd/ping", b"twin") == NOT_AUTHORIZED
    real = service_connect(broker, "commands")
    assert real.publish("fw/default/d1/cmd/ping", b"real") == 0
    wait_for(lambda: device.messages != [], what="the real command")
    time.sleep(0.2)
    assert device.messages == [("fw/default/d1/cmd/ping", b"real")]
    wait_for(
        lambda: any(
            e["identity"] == "CN=fleetward-commands" for e in events(ctx, "authz.stale-certificate")
        ),
        timeout=5,
        what="the stale-certificate event",
    )
    for c in (device, twin, real):
        c.close()


def test_each_identity_does_its_job_end_to_end(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    home = ctx.settings.home
    device = connect(broker.port, broker.files.broker_ca, d1.cert, d1.key)
    assert device.subscribe("fw/default/d1/cmd/+") == 1
    assert device.subscribe("fw/default/d1/ota/#") == 1
    # commands: a command reaches the device.
    commands = CommandSender(home)
    commands.send("fw/default/d1/cmd/ping", b"{}")
    wait_for(lambda: ("fw/default/d1/cmd/ping", b"{}") in device.messages, what="the command")
    # ... and nothing else: the broker's refusal reaches the sender.
    with pytest.raises(BrokerUnavailableError, match="refused"):
        commands.send("fw/default/d1/ota/offer", b"{}")
    # ota: an offer reaches the device, the device's report reaches the driver.
    offers = CommandSender(home, identity="ota")
    offers.send("fw/default/d1/ota/offer", b'{"release": 1}')
    wait_for(
        lambda: ("fw/default/d1/ota/offer", b'{"release": 1}') in device.messages, what="offer"
    )
    with pytest.raises(BrokerUnavailableError, match="refused"):
        offers.send("fw/default/d1/cmd/wipe", b"{}")
    inbox = ReportInbox()
    reports = inbox.subscribe(home)
    time.sleep(0.3)  # the subscription is made on connect
    assert (
        device.publish("fw/default/d1/state/ota", json.dumps({"step": "downloading"}).encode()) == 0
    )
    wait_for(lambda: inbox.queue.qsize() == 1, what="the OTA report")
    assert inbox.take() == [("default", "d1", {"step": "downloading"})]
    # ingest: telemetry is stored.
    ingest = IngestWorker(ctx.db, home)
    try:
        ingest.run_once()  # connects and subscribes
        time.sleep(0.3)
        assert device.publish("fw/default/d1/telemetry/temp", b'{"temp": 21.5}') == 0

        def stored() -> bool:
            ingest.run_once()
            return bool(events(ctx, "metric"))

        wait_for(stored, timeout=5, what="the reading to be ingested")
    finally:
        ingest.close()
    for closing in (commands, offers):
        closing.close()
    reports.disconnect()
    reports.loop_stop()
    device.close()


def test_a_new_issuing_ca_is_trusted_at_its_listener_after_the_reload(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    """Mosquitto 2.0.11 re-reads each device listener's cafile on SIGHUP
    (a fresh TLS context for every listener with a crlfile): a tenant
    created while the broker runs is trusted in each environment at that
    environment's listener only."""
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="initech", actor="test")
        ca_service.create_tenant_pki(s, ctx.pki, tenant=other, actor="test")
    from fleetward.runtime.publisher import Publisher

    admin = admin_of(ctx, "initech")
    with ctx.db.session() as s:  # as the default tenant of the fixtures: software keys
        tenancy.set_allow_unattested(s, admin, allow=True)
    assert Publisher(ctx).run_once()  # the new CAs' first CRLs
    prod = make_device(ctx, tmp_path, "n1", tenant="initech", environment="production")
    drill = make_device(ctx, tmp_path, "n2", tenant="initech", environment="drill")
    synced(broker)
    ca = broker.files.broker_ca

    def accepted(port: int, d: DeviceCreds) -> bool:
        return mosquitto_pub(port, ca, d.cert, d.key, f"fw/initech/{d.device_id}/telemetry/t") == 0

    wait_for(lambda: accepted(broker.ports["production"], prod), timeout=10, what="the reload")
    assert accepted(broker.ports["drill"], drill)
    assert not accepted(broker.ports["production"], drill)
    assert not accepted(broker.ports["test"], prod)
    assert not accepted(broker.ports["drill"], prod)
    assert broker.mosquitto.proc is not None and broker.mosquitto.proc.poll() is None
