"""``fleetward-agent run`` attests: the real process, against both planes and
Mosquitto, submits boot evidence at start and on the server's ``attest``
command, over HTTPS on the device plane as the device itself."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetward.agent.client import Server, enroll_devices
from fleetward.agent.keystore import Keystore
from fleetward.agent.ota import Slots
from fleetward.comms.policy import DEFAULT_POLICY
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from tests.agent.test_agent import factory_line
from tests.attestation.test_verifier import APP, BOOTLOADER, KERNEL, released
from tests.broker import observe, synced, wait_for

__all__ = ["released"]  # the fixture: product p, release 1.0.0 with these measurements

DEVICE = "run-att-1"


def verdicts(live: str, token: str) -> list[dict[str, Any]]:
    """The device's attestation verdicts, oldest first, read through the API."""
    resp = httpx.get(
        f"{live}/api/v1/telemetry/events",
        params={"device": DEVICE, "type": "attestation.verdict"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return list(reversed(resp.json()["items"]))


@pytest.mark.broker
@pytest.mark.slow
def test_agent_run_attests_at_start_and_on_the_attest_command(
    live: str,
    live_device: str,
    service_ca: Path,
    ctx: AppContext,
    admin_token: str,
    released: None,
    broker: BrokerRuntime,
    tmp_path: Path,
) -> None:
    token, batch = factory_line(live, admin_token, "test", [DEVICE])
    store = Keystore("software", directory=tmp_path / "agent")
    with Server(live, token=token) as srv:
        [result] = enroll_devices(
            srv, store, batch_id=batch, device_ids=[DEVICE], out_dir=tmp_path / "agent"
        )
    assert result.error is None
    device_dir = tmp_path / "agent" / DEVICE
    # What the device boots: the stages the release's reference measurements name.
    (device_dir / "boot").mkdir()
    (device_dir / "boot" / "bootloader.bin").write_bytes(BOOTLOADER)
    (device_dir / "boot" / "kernel.bin").write_bytes(KERNEL)
    Slots(device_dir, initial_version="1.0.0").image("a").write_bytes(APP)
    # The default policy lets a device receive the server's attest command.
    assert "attest" in DEFAULT_POLICY.document()["roles"]["device"]["commands"]
    synced(broker)
    watcher = observe(broker, f"fw/default/{DEVICE}/#")
    agent_bin = Path(sys.executable).with_name("fleetward-agent")
    proc = subprocess.Popen(
        [
            str(agent_bin), "run", "--device-id", DEVICE, "--device-server", live_device,
            "--server-ca", str(service_ca), "--dir", str(tmp_path / "agent"),
            "--interval", "0.5", "--hardware", "board-a", "--firmware-version", "1.0.0",
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        # At start, before it connects to the broker.
        wait_for(lambda: len(verdicts(live, admin_token)) == 1, timeout=20, what="boot evidence")
        [first] = verdicts(live, admin_token)
        assert first["fields"]["verdict"] == "pass", first
        wait_for(
            lambda: f"fw/default/{DEVICE}/telemetry" in {t for t, _ in list(watcher.messages)},
            timeout=20,
            what="telemetry from the agent",
        )
        # A tampered bootloader, then the server's attest command: the agent
        # attests again and the verifier names the stage.
        (device_dir / "boot" / "bootloader.bin").write_bytes(BOOTLOADER + b" implant")
        resp = httpx.post(
            f"{live}/api/v1/devices/{DEVICE}/commands/attest",
            json={},
            headers={"Authorization": f"Bearer {admin_token}"},
            timeout=10,
        )
        assert resp.status_code == 202, resp.text
        wait_for(lambda: len(verdicts(live, admin_token)) == 2, timeout=20, what="re-attestation")
        second = verdicts(live, admin_token)[1]
        assert second["fields"]["verdict"] == "fail", second
        assert second["fields"]["failed"] == ["measurements.bootloader"]
        result_topic = f"fw/default/{DEVICE}/cmd-result/attest"
        wait_for(
            lambda: result_topic in {t for t, _ in list(watcher.messages)},
            timeout=10,
            what="the attest command's result",
        )
        answer = next(json.loads(p) for t, p in list(watcher.messages) if t == result_topic)
        assert answer["ok"] is True and answer["verdict"] == "fail", answer
        # The attest endpoint is the device's own: not on the operator plane.
        assert httpx.post(f"{live}/api/v1/attestation/default/{DEVICE}/nonce").status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        watcher.close()
    assert proc.returncode == 0, out
    assert "boot attestation: pass" in out, out
    assert "2 attestations" in out, out
