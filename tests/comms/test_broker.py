"""Least privilege at a real Mosquitto with the fleetward plugin.

Devices hold real certificates from the tenant CA and connect over TLS with
paho (MQTT 5) or the mosquitto command-line clients; fleetward's own service
identities (one per job) connect on the service listener; the tests watch
with a receive-only ``observer`` identity of their own (tests/broker.py).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from fleetward.comms import service as comms
from fleetward.comms.mosquitto_conf import MAX_PAYLOAD
from fleetward.identity import ca_service
from fleetward.identity import service as identity
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.runtime.publisher import Publisher
from fleetward.telemetry.models import Event
from fleetward.tenancy import service as tenancy
from tests.broker import (
    Client,
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

NOT_AUTHORIZED = 0x87
GRANTED_QOS1 = 1


def dev(broker: BrokerRuntime, creds: DeviceCreds, **kw: object) -> Client:
    files = broker.files
    return connect(broker.port, files.broker_ca, creds.cert, creds.key, **kw)  # type: ignore[arg-type]


def service_client(broker: BrokerRuntime, job: str = "commands") -> Client:
    return service_connect(broker, job)


def events(ctx: AppContext, type_: str) -> list[dict[str, object]]:
    with ctx.db.read() as s:
        rows = s.execute(select(Event).where(Event.type == type_)).scalars()
        return [{"count": e.count, "device_pk": e.device_pk, **json.loads(e.fields)} for e in rows]


def test_devices_reach_only_their_own_topics(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    d2 = make_device(ctx, tmp_path, "d2")
    synced(broker)
    svc = observe(broker, "fw/default/#")
    ota = service_client(broker, "ota")
    c1, c2 = dev(broker, d1), dev(broker, d2)
    # Own telemetry: allowed and delivered to fleetward.
    assert c1.publish("fw/default/d1/telemetry/temp", b"21") == 0
    # Another device's topics: refused (PUBACK 0x87) and never delivered.
    assert c2.publish("fw/default/d1/telemetry/temp", b"forged") == NOT_AUTHORIZED
    assert c2.publish("fw/default/d1/ota/x", b"forged") == NOT_AUTHORIZED
    # Reading another device's topics: SUBACK refuses it.
    assert c2.subscribe("fw/default/d1/telemetry/#") == NOT_AUTHORIZED
    assert c2.subscribe("#") == NOT_AUTHORIZED
    assert c2.subscribe("fw/default/+/ota/#") == NOT_AUTHORIZED
    assert c1.subscribe("fw/default/d1/ota/#") == GRANTED_QOS1
    ota.publish("fw/default/d1/ota/offer", b"m1")
    ota.publish("fw/default/d2/ota/offer", b"m2")
    wait_for(lambda: "fw/default/d1/ota/offer" in c1.topics(), what="d1's update")
    wait_for(lambda: ("fw/default/d1/telemetry/temp", b"21") in svc.messages, what="telemetry")
    time.sleep(0.3)
    assert c1.topics() == ["fw/default/d1/ota/offer"]
    assert c2.messages == []
    assert b"forged" not in [p for _, p in svc.messages]
    # The denials are counted per device and land as events.
    wait_for(lambda: len(events(ctx, "authz.denied")) >= 5, timeout=5, what="events")
    admin = admin_of(ctx)
    with ctx.db.read() as s:
        counts = comms.denial_counts(s, admin, "d2")
    assert counts["authz.denied"] >= 5
    for c in (c1, c2, svc, ota):
        c.close()


def test_tenants_cannot_see_each_other(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="globex", actor="test")
        ca_service.create_tenant_pki(s, ctx.pki, tenant=other, actor="test")
    a = make_device(ctx, tmp_path, "dev1")
    b = make_device(ctx, tmp_path, "dev1", tenant="globex")  # the same device id
    synced(broker)
    ca, cb = dev(broker, a), dev(broker, b)
    # Both are connected at once: equal ids in two tenants are two identities.
    time.sleep(0.3)
    assert not ca.disconnected.is_set() and not cb.disconnected.is_set()
    assert cb.subscribe("fw/default/dev1/ota/#") == NOT_AUTHORIZED
    assert cb.publish("fw/default/dev1/telemetry/x", b"cross") == NOT_AUTHORIZED
    assert ca.publish("fw/globex/dev1/telemetry/x", b"cross") == NOT_AUTHORIZED
    assert cb.publish("fw/globex/dev1/telemetry/x", b"own") == 0
    for c in (ca, cb):
        c.close()


def test_only_listed_commands_are_delivered(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    c1 = dev(broker, d1)
    assert c1.subscribe("fw/default/d1/cmd/+") == GRANTED_QOS1
    svc = service_client(broker)
    for name in ("wipe", "ping", "reboot", "ping"):
        svc.publish(f"fw/default/d1/cmd/{name}", name.encode())
    wait_for(lambda: len(c1.messages) >= 2, what="two pings")
    time.sleep(0.3)
    assert c1.topics() == ["fw/default/d1/cmd/ping"] * 2
    # A command subscription by name is refused too.
    assert c1.subscribe("fw/default/d1/cmd/wipe") == NOT_AUTHORIZED
    c1.close()
    svc.close()


def test_revoked_device_is_cut_off_and_cannot_reconnect(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    c1 = dev(broker, d1)
    assert c1.publish("fw/default/d1/telemetry/x") == 0
    started = time.monotonic()
    admin = admin_of(ctx)
    with ctx.db.session() as s:
        identity.revoke_device(s, admin, "d1", reason="keyCompromise")
    wait_for(c1.disconnected.is_set, timeout=2, what="the revoked device to be cut off")
    latency = time.monotonic() - started
    assert latency < 1.0, latency
    c1.client.loop_stop()

    # The publisher (``fleetward up`` runs one) builds the CRL, and the sync
    # worker hands it to Mosquitto: the handshake itself now fails.
    assert Publisher(ctx).run_once()
    synced(broker)

    def refused() -> bool:
        attempt = dev(broker, d1, expect_ok=False)
        ok = not attempt.connected.wait(0.5)
        attempt.close()
        return ok

    wait_for(refused, timeout=5, what="reconnection to be refused")
    again = dev(broker, d1, expect_ok=False)
    assert not again.connected.wait(1.0)
    again.close()
    # openssl as an outside client agrees: certificate revoked.
    proc = subprocess.run(
        [
            "mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port),
            "--cafile", str(broker.files.broker_ca),
            "--cert", str(d1.cert), "--key", str(d1.key),
            "-t", "fw/default/d1/telemetry/x", "-m", "x",
        ],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    wait_for(lambda: events(ctx, "authz.handshake-refused") != [], timeout=5, what="event")


def test_superseded_certificate_is_muted_before_the_crl(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    """The plugin checks the serial on every decision: a certificate that the
    table no longer lists is refused even while the TLS layer accepts it."""
    # No publisher runs beside this broker: the CRL stays stale on purpose.
    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    c1 = dev(broker, d1)
    admin = admin_of(ctx)
    with ctx.db.session() as s:
        identity.revoke_certificate(s, admin, d1.serial, reason="keyCompromise")
    wait_for(c1.disconnected.is_set, timeout=2, what="kick")
    c1.client.loop_stop()
    again = dev(broker, d1)  # TLS still accepts it (stale CRL) ...
    assert again.publish("fw/default/d1/telemetry/x") == NOT_AUTHORIZED  # ... the plugin does not
    wait_for(again.disconnected.is_set, timeout=2, what="kick on use")
    # Its only certificate is revoked, so the table no longer lists the identity.
    wait_for(lambda: events(ctx, "authz.unknown-identity") != [], timeout=5, what="event")


def test_rotated_out_certificate_is_refused_while_the_new_one_works(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    """After a renewal, revoking the old certificate cuts off the connection
    that uses it, and the plugin refuses it on reconnection (serial check)
    even while the CRL the TLS layer holds does not list it yet."""
    from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key

    from fleetward.identity import renewal
    from tests.helpers import csr_pem

    # No publisher runs beside this broker: the TLS layer's CRL stays stale.
    old = make_device(ctx, tmp_path, "d1")
    synced(broker)
    c_old = dev(broker, old)
    key = load_pem_private_key(old.key.read_bytes(), None)
    with ctx.db.session() as s:
        issued = renewal.renew(
            s,
            ctx.pki,
            current=old.cert.read_bytes(),
            csr=csr_pem(key, "d1"),  # type: ignore[arg-type]
        )
    new_cert = tmp_path / "new.pem"
    new_cert.write_bytes(issued.certificate.public_bytes(Encoding.PEM))
    synced(broker)
    assert c_old.publish("fw/default/d1/telemetry/x") == 0  # both certificates are good
    admin = admin_of(ctx)
    with ctx.db.session() as s:
        identity.revoke_certificate(s, admin, old.serial, reason="superseded")
    wait_for(c_old.disconnected.is_set, timeout=2, what="the old certificate's connection to drop")
    c_old.client.loop_stop()
    again = dev(broker, old)  # the stale CRL lets the handshake through ...
    assert again.publish("fw/default/d1/telemetry/x") == NOT_AUTHORIZED  # ... the plugin does not
    wait_for(again.disconnected.is_set, timeout=2, what="kick")
    again.client.loop_stop()
    c_new = connect(broker.port, broker.files.broker_ca, new_cert, old.key)
    assert c_new.publish("fw/default/d1/telemetry/x") == 0
    wait_for(lambda: events(ctx, "authz.stale-certificate") != [], timeout=5, what="event")
    c_new.close()


def test_quarantine_keeps_only_quarantine_topics_live(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    c1 = dev(broker, d1)
    assert c1.subscribe("fw/default/d1/cmd/+") == GRANTED_QOS1
    assert c1.publish("fw/default/d1/state/x") == 0
    admin = admin_of(ctx)
    with ctx.db.session() as s:
        identity.set_device_state(s, admin, "d1", state="quarantined")
    synced(broker)
    # Still connected, but only boot evidence, telemetry and updates remain.
    assert c1.publish("fw/default/d1/state/x") == NOT_AUTHORIZED
    assert c1.publish("fw/default/d1/telemetry/x") == 0
    assert c1.publish("fw/default/d1/boot/evidence") == 0
    svc = service_client(broker)
    ota = service_client(broker, "ota")
    svc.publish("fw/default/d1/cmd/ping", b"p")
    assert c1.subscribe("fw/default/d1/ota/#") == GRANTED_QOS1
    ota.publish("fw/default/d1/ota/offer", b"u")
    wait_for(lambda: "fw/default/d1/ota/offer" in c1.topics(), what="update")
    assert "fw/default/d1/cmd/ping" not in c1.topics()
    assert not c1.disconnected.is_set()
    with ctx.db.session() as s:
        identity.set_device_state(s, admin, "d1", state="active")
    synced(broker)
    assert c1.publish("fw/default/d1/state/x") == 0
    c1.close()
    svc.close()
    ota.close()


def test_client_id_takeover_fails(ctx: AppContext, broker: BrokerRuntime, tmp_path: Path) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    d2 = make_device(ctx, tmp_path, "d2")
    synced(broker)
    c1 = dev(broker, d1, client_id="O=default,OU=test,CN=d1")
    c2 = dev(broker, d2, client_id="O=default,OU=test,CN=d1")  # claims d1's session
    time.sleep(0.5)
    assert not c1.disconnected.is_set(), "d2 kicked d1 off"
    assert c1.publish("fw/default/d1/telemetry/x") == 0
    assert c2.publish("fw/default/d1/telemetry/x") == NOT_AUTHORIZED
    c1.close()
    c2.close()


def test_untrusted_certificates_are_refused_at_the_handshake(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    # fleetward's own service certificates are not device certificates.
    f = broker.files
    pair = ctx.service_pki.client("commands")
    c = connect(broker.port, f.broker_ca, pair.cert, pair.key, expect_ok=False)
    assert not c.connected.wait(1.0)
    c.close()
    # A self-made certificate with a device's name.
    d = tmp_path / "rogue"
    d.mkdir()
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem"),
            "-subj", "/CN=d1/OU=test/O=default", "-days", "1",
        ],
        check=True, capture_output=True,
    )  # fmt: skip
    rogue = connect(broker.port, f.broker_ca, d / "c.pem", d / "k.pem", expect_ok=False)
    assert not rogue.connected.wait(1.0)
    rogue.close()
    wait_for(lambda: len(events(ctx, "authz.handshake-refused")) >= 2, timeout=5, what="events")


def test_oversized_payload_is_denied_and_counted(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    c1 = dev(broker, d1)
    assert c1.publish("fw/default/d1/telemetry/x", b"a" * MAX_PAYLOAD) == 0
    assert c1.publish("fw/default/d1/telemetry/x", b"a" * (MAX_PAYLOAD + 1)) == NOT_AUTHORIZED
    wait_for(lambda: events(ctx, "authz.payload-too-large") != [], timeout=5, what="event")
    c1.close()


def test_mosquitto_command_line_clients(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    d1 = make_device(ctx, tmp_path, "d1")
    d2 = make_device(ctx, tmp_path, "d2")
    synced(broker)
    base = ["-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(broker.files.broker_ca)]
    sub = subprocess.Popen(
        ["mosquitto_sub", *base, "--cert", str(d2.cert), "--key", str(d2.key),
         "-V", "mqttv5", "-t", "fw/default/d1/#", "-t", "fw/default/d2/ota/#", "-v", "-W", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(0.7)
    pub = subprocess.run(
        ["mosquitto_pub", *base, "--cert", str(d1.cert), "--key", str(d1.key),
         "-V", "mqttv5", "-q", "1", "-t", "fw/default/d1/telemetry/t", "-m", "secret"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert pub.returncode == 0, pub.stderr
    forged = subprocess.run(
        ["mosquitto_pub", *base, "--cert", str(d1.cert), "--key", str(d1.key),
         "-V", "mqttv5", "-q", "1", "-t", "fw/default/d2/ota/x", "-m", "forged"],
        capture_output=True, text=True, timeout=10, check=False,
    )  # fmt: skip
    assert "not authorized" in (forged.stderr + forged.stdout).lower()
    out, _ = sub.communicate(timeout=10)
    assert "secret" not in out and "forged" not in out


def test_explain_matches_the_broker(ctx: AppContext, tmp_path: Path) -> None:
    make_device(ctx, tmp_path, "d1")
    with ctx.db.read() as s:
        decision, version, _ = comms.explain(
            s, admin_of(ctx), "d1", action="publish", topic="fw/default/d1/telemetry/x"
        )
    assert decision.allowed and version.version == 0
    assert decision.rule is not None and decision.rule.role == "device"


def _mqtt_string(s: str) -> bytes:
    raw = s.encode()
    return len(raw).to_bytes(2, "big") + raw


def test_wildcards_in_a_publish_topic_are_refused(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    """paho and mosquitto_pub refuse to send such a PUBLISH, so speak MQTT 3.1.1
    by hand: the broker must drop the client and deliver nothing."""
    import socket
    import ssl

    d1 = make_device(ctx, tmp_path, "d1")
    synced(broker)
    svc = observe(broker, "fw/default/#")
    context = ssl.create_default_context(cafile=str(broker.files.broker_ca))
    context.load_cert_chain(str(d1.cert), str(d1.key))
    with (
        socket.create_connection(("127.0.0.1", broker.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        body = _mqtt_string("MQTT") + bytes([4, 0x02, 0, 60]) + _mqtt_string("x")
        sock.sendall(bytes([0x10, len(body)]) + body)
        assert sock.recv(4) == bytes([0x20, 2, 0, 0])  # CONNACK, accepted
        body = _mqtt_string("fw/default/d1/telemetry/+") + b"wild"
        try:
            sock.sendall(bytes([0x30, len(body)]) + body)
            closed = sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            closed = True
        assert closed, "the broker kept a client that published to a wildcard topic"
    time.sleep(0.3)
    assert not any(p == b"wild" for _, p in svc.messages)
    svc.close()


def test_cohort_revocation_cuts_every_live_connection(
    ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    ids = [f"c{i:03d}" for i in range(40)]
    creds = [make_device(ctx, tmp_path, d) for d in ids]
    keep = make_device(ctx, tmp_path, "keeper")
    synced(broker)
    clients = [dev(broker, c) for c in creds]
    kept = dev(broker, keep)
    admin = admin_of(ctx)
    started = time.monotonic()
    with ctx.db.session() as s:
        assert len(identity.revoke_devices(s, admin, ids, reason="keyCompromise")) == len(ids)
    wait_for(lambda: all(c.disconnected.is_set() for c in clients), timeout=3, what="all cut off")
    assert time.monotonic() - started < 2.0
    assert not kept.disconnected.is_set()
    assert kept.publish("fw/default/keeper/telemetry/x") == 0
    for c in clients:
        c.client.loop_stop()
    kept.close()


@pytest.mark.broker
def test_a_mosquitto_that_dies_is_restarted(broker: BrokerRuntime) -> None:
    import socket

    proc = broker.mosquitto.proc
    assert proc is not None
    proc.kill()
    wait_for(
        lambda: (
            broker.restarts == 1
            and broker.mosquitto.proc is not proc
            and broker.mosquitto.proc is not None
            and broker.mosquitto.proc.poll() is None
        ),
        timeout=10,
        what="the supervisor to restart mosquitto",
    )
    wait_for(lambda: _listening(socket, broker.port), timeout=10, what="the device port")
    wait_for(lambda: _listening(socket, broker.service_port), timeout=10, what="the service port")


def _listening(socket: Any, port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True
