"""``fleetward-agent run``: the device's MQTT life against a real broker and server."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
import time
from pathlib import Path

import pytest

from fleetward.agent._p11tls import release_token_keys
from fleetward.agent.client import Server, enroll_devices, load_identity
from fleetward.agent.keystore import Keystore
from fleetward.agent.mqtt import AgentConfig, DeviceAgent, backoff
from fleetward.identity import service as identity
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from tests.agent.test_agent import factory_line
from tests.broker import admin_of, observe, service_connect, synced, wait_for
from tests.hsm import SoftHsm


def test_backoff_grows_with_full_jitter_and_a_cap() -> None:
    rng = random.Random(7)
    assert backoff(0, rng=rng) == 0.0
    for attempt in range(1, 12):
        window = min(60.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff(attempt, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= window for d in delays)
        assert max(delays) > window * 0.8  # jitter spreads over the whole window
        assert len(set(delays)) > 150  # no lockstep


def enrolled_agent(
    live: str, admin_token: str, tmp_path: Path, device_id: str, broker: BrokerRuntime, **kw: object
) -> tuple[DeviceAgent, Keystore]:
    token, batch = factory_line(live, admin_token, "test", [device_id])
    store = Keystore("software", directory=tmp_path / "keys")
    with Server(live, token=token) as srv:
        [result] = enroll_devices(
            srv, store, batch_id=batch, device_ids=[device_id], out_dir=tmp_path / "devices"
        )
    assert result.error is None
    config = AgentConfig(
        directory=tmp_path / "devices" / device_id,
        keystore=store,
        broker_host="127.0.0.1",
        broker_port=broker.port,
        broker_ca=broker.files.broker_ca,
        telemetry_interval=0.1,
        seed=1,
        **kw,  # type: ignore[arg-type]
    )
    return DeviceAgent(config, reading=lambda: {"temp": 21}), store


@pytest.mark.broker
@pytest.mark.slow
def test_agent_publishes_takes_commands_and_renews_without_losing_data(
    live: str,
    live_device: str,
    service_ca: Path,
    admin_token: str,
    ctx: AppContext,
    broker: BrokerRuntime,
    tmp_path: Path,
) -> None:
    svc = observe(broker, "fw/default/#")
    sender = service_connect(broker, "commands")  # fleetward's command identity
    agent, _ = enrolled_agent(
        live, admin_token, tmp_path, "a1", broker, server_url=live_device, server_ca=service_ca
    )
    synced(broker)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: agent.stats.published >= 5, what="telemetry")
        first_serial = agent.connected_serial
        # An allowed command is delivered and answered; a disallowed one never arrives.
        sender.publish("fw/default/a1/cmd/wipe", b"{}")
        sender.publish("fw/default/a1/cmd/ping", b"{}")
        wait_for(lambda: "fw/default/a1/cmd-result/ping" in svc.topics(), what="pong")
        assert agent.stats.commands == ["ping"]
        # Renewal: the server asks (command "renew" is not in the default
        # policy, so allow it first), the agent renews over HTTPS on the
        # device plane (as itself) and reconnects.
        from fleetward.comms import service as comms
        from fleetward.comms.policy import DEFAULT_POLICY, parse_policy

        doc = DEFAULT_POLICY.document()
        doc["roles"]["device"]["commands"] = ["ping", "renew"]
        admin = admin_of(ctx)
        with ctx.db.session() as s:
            comms.set_policy(s, admin, parse_policy(doc))
        synced(broker)
        sender.publish("fw/default/a1/cmd/renew", b"{}")
        wait_for(lambda: agent.stats.renewals == 1, timeout=10, what="renewal")
        wait_for(
            lambda: (
                agent.connected_serial not in (None, first_serial) and agent.stats.connects >= 2
            ),
            timeout=10,
            what="reconnection with the new certificate",
        )
        # The superseded certificate can be revoked; the agent is on the new one.
        with ctx.db.session() as s:
            identity.revoke_certificate(s, admin, first_serial or "", reason="superseded")
        published = agent.stats.published
        wait_for(lambda: agent.stats.published >= published + 5, timeout=10, what="more telemetry")
    finally:
        stop.set()
        thread.join(timeout=10)

    # Nothing was lost across the reconnection: the telemetry sequence has no gaps.
    def received() -> set[int]:
        return {
            json.loads(p)["seq"]
            for t, p in list(svc.messages)
            if t.startswith(("fw/default/a1/telemetry", "fw/default/a1/cmd-result/"))
        }

    wait_for(lambda: len(received()) >= agent.stats.published, what="in-flight deliveries")
    seqs = sorted(
        {
            json.loads(p)["seq"]
            for t, p in svc.messages
            if t.startswith(("fw/default/a1/telemetry", "fw/default/a1/cmd-result/"))
        }
    )  # QoS 1 is at least once: duplicates are allowed, gaps are not
    assert seqs == list(range(1, len(seqs) + 1)), "gap in what the broker received"
    assert len(seqs) >= agent.stats.published
    assert load_identity(tmp_path / "devices" / "a1")["serial"] == agent.connected_serial
    svc.close()
    sender.close()


@pytest.mark.broker
@pytest.mark.slow
def test_revoked_agent_backs_off_instead_of_spinning(
    live: str, admin_token: str, ctx: AppContext, broker: BrokerRuntime, tmp_path: Path
) -> None:
    agent, _ = enrolled_agent(
        live, admin_token, tmp_path, "a2", broker, backoff_base=0.2, backoff_cap=2.0
    )
    synced(broker)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: agent.stats.connects == 1, what="connect")
        admin = admin_of(ctx)
        with ctx.db.session() as s:
            identity.revoke_device(s, admin, "a2", reason="keyCompromise")
        time.sleep(4)
        # Cut off, refused at every attempt, with growing jittered delays.
        assert agent.stats.connects == 1
        assert agent.stats.connect_failures + agent.stats.disconnects >= 2
        assert agent.stats.connect_failures < 20, "the agent is spinning"
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    _ = dt  # keep the import for readers comparing with test_agent


@pytest.mark.broker
@pytest.mark.hsm
def test_agent_connects_with_a_key_that_stays_on_the_token(
    live: str, admin_token: str, broker: BrokerRuntime, softhsm: SoftHsm, tmp_path: Path
) -> None:
    token, batch = factory_line(live, admin_token, "test", ["tok-1"])
    store = Keystore(
        "pkcs11", directory=tmp_path / "keys", token_label=softhsm.token_label, pin=softhsm.pin
    )
    with Server(live, token=token) as srv:
        [result] = enroll_devices(
            srv, store, batch_id=batch, device_ids=["tok-1"], out_dir=tmp_path / "devices"
        )
    assert result.error is None
    assert load_identity(tmp_path / "devices" / "tok-1")["key_uri"].startswith("pkcs11:")
    synced(broker)
    f = broker.files
    svc = observe(broker, "fw/default/tok-1/#")
    config = AgentConfig(
        directory=tmp_path / "devices" / "tok-1",
        keystore=store,
        broker_host="127.0.0.1",
        broker_port=broker.port,
        broker_ca=f.broker_ca,
        telemetry_interval=0.1,
    )
    agent = DeviceAgent(config)
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: agent.stats.published >= 3, what="telemetry signed on the token")
    finally:
        stop.set()
        thread.join(timeout=10)
        release_token_keys()  # the session-wide test token must end up logged out
    assert agent.stats.connects == 1 and agent.stats.connect_failures == 0
    wait_for(lambda: len(svc.messages) >= 3, what="delivery")
    svc.close()


@pytest.mark.broker
@pytest.mark.slow
def test_agent_run_command(
    live: str,
    live_device: str,
    service_ca: Path,
    admin_token: str,
    broker: BrokerRuntime,
    tmp_path: Path,
) -> None:
    """The real ``fleetward-agent run`` process: finds the broker through the
    server, connects, publishes, and stops cleanly on SIGTERM."""
    import signal
    import subprocess
    import sys

    token, batch = factory_line(live, admin_token, "test", ["cli-1"])
    store = Keystore("software", directory=tmp_path / "agent")
    with Server(live, token=token) as srv:
        [result] = enroll_devices(
            srv, store, batch_id=batch, device_ids=["cli-1"], out_dir=tmp_path / "agent"
        )
    assert result.error is None
    synced(broker)
    svc = observe(broker, "fw/default/cli-1/#")
    agent_bin = Path(sys.executable).with_name("fleetward-agent")
    proc = subprocess.Popen(
        [
            str(agent_bin), "run", "--device-id", "cli-1", "--device-server", live_device,
            "--server-ca", str(service_ca),
            "--dir", str(tmp_path / "agent"), "--interval", "0.2",
            "--hardware", "board-a", "--firmware-version", "1.0.0",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: len(svc.messages) >= 3, timeout=20, what="telemetry from the process")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "messages acknowledged" in out
    assert (tmp_path / "agent" / "cli-1" / "slots" / "state.json").exists()
    svc.close()
