"""End to end: a campaign driven over MQTT to a real agent that updates
through TUF into its A/B slots and reports each step."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from fleetward.agent import client_context
from fleetward.agent.client import Server, enroll_devices
from fleetward.agent.keystore import Keystore
from fleetward.agent.mqtt import AgentConfig, DeviceAgent
from fleetward.agent.ota import OtaClient
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.runtime.workers import CampaignDriver
from tests.agent.test_agent import factory_line
from tests.broker import observe, synced, wait_for
from tests.ota.helpers import call, operator, review_passed, upload

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_campaign_over_mqtt_commits_a_good_release_and_halts_on_a_bad_one(
    live: str,
    ctx: AppContext,
    admin_token: str,
    broker: BrokerRuntime,
    tmp_path: Path,
) -> None:
    token, batch = factory_line(live, admin_token, "test", ["ota-1"])
    store = Keystore("software", directory=tmp_path / "keys")
    with Server(live, token=token) as srv:
        [enrolled] = enroll_devices(
            srv, store, batch_id=batch, device_ids=["ota-1"], out_dir=tmp_path / "devices"
        )
    assert enrolled.error is None
    directory = tmp_path / "devices" / "ota-1"
    ota = OtaClient(
        directory,
        server_url=f"https://127.0.0.1:{ctx.settings.device_port}",
        tls=lambda: client_context(directory, store, cafile=ctx.service_pki.ca_cert),
        tenant="default",
        hardware="board-a",
        initial_version="1.0.0",
        health_check=lambda image: b"BROKEN" not in image.read_bytes(),
    )
    config = AgentConfig(
        directory=directory,
        keystore=store,
        broker_host="127.0.0.1",
        broker_port=broker.port,
        broker_ca=broker.files.broker_ca,
        telemetry_interval=5.0,
    )
    agent = DeviceAgent(config, ota=ota)
    rm = operator(ctx, "release-manager", "rm")
    assert (
        call(live, rm, "POST", "/api/v1/ota/products/p", json={"threshold": 1}).status_code == 201
    )
    watcher = observe(broker, "fw/default/ota-1/state/ota")
    synced(broker)
    driver = CampaignDriver(ctx, interval=0.2)
    driver.start()
    stop = threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: agent.stats.connects == 1, what="agent connected")

        def campaign(version: str, image: bytes) -> int:
            rid = upload(live, rm, product="p", version=version, image=image).json()["id"]
            call(live, rm, "POST", f"/api/v1/releases/{rid}/approvals")
            resp = call(
                live, rm, "POST", "/api/v1/campaigns", json={"release_id": rid, "waves": [50, 100]}
            )
            assert resp.status_code == 201, resp.text
            review_passed(ctx, int(resp.json()["id"]))
            return int(resp.json()["id"])

        def state(cid: int) -> str:
            return str(call(live, rm, "GET", f"/api/v1/campaigns/{cid}").json()["state"])

        good = campaign("1.1.0", b"good firmware 1.1.0")
        wait_for(lambda: state(good) == "completed", timeout=20, what="good campaign to complete")
        assert ota.slots.installed_version == "1.1.0"
        bad = campaign("1.2.0", b"BROKEN firmware 1.2.0")
        wait_for(lambda: state(bad) == "halted", timeout=20, what="bad campaign to halt")
        assert ota.slots.installed_version == "1.1.0"  # fell back to the good slot
    finally:
        stop.set()
        thread.join(timeout=20)
        driver.stop()
    every = [json.loads(p)["step"] for _, p in watcher.messages]
    assert every[0] == "received"  # the offer is taken before the work starts
    steps = [s for s in every if s != "received"]
    assert steps[:3] == ["downloading", "staged", "boot"]
    assert "committed" in steps and steps[-1] == "fell-back"
    assert steps.count("boot") == 1 + 3  # one healthy boot, then three failed ones
    # Every step is also telemetry, with the version the device runs.
    events = call(live, rm, "GET", "/api/v1/telemetry/events?device=ota-1&type=ota.step&limit=1000")
    recorded = [e["fields"]["step"] for e in reversed(events.json()["items"])]
    assert "committed" in recorded and recorded[-1] == "fell-back"
    assert events.json()["items"][0]["fields"]["version"] == "1.1.0"
    watcher.close()
