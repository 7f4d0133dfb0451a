"""End to end: a vulnerable release reaches real agents over MQTT, KEV lists
its openssl CVE, a CRA case opens, a fixed release is campaigned, and the
finding closes when the last device has updated.

The devices are the real agent (enrolled by a factory line, connected to
Mosquitto with their certificates, updating through TUF into A/B slots and
reporting each step); the versions they report are what exposure counts.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetward.agent import client_context
from fleetward.agent.client import Server, enroll_devices
from fleetward.agent.keystore import Keystore
from fleetward.agent.mqtt import AgentConfig, DeviceAgent
from fleetward.agent.ota import OtaClient
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.runtime.workers import CampaignDriver
from fleetward.vulns import runner
from tests.agent.test_agent import factory_line
from tests.broker import synced, wait_for
from tests.ota.helpers import call, operator, review_passed, upload
from tests.vulns.test_flow import NVD_OPENSSL, OPENSSL_CVE, kev, sbom

pytestmark = [pytest.mark.broker, pytest.mark.slow]
DEVICES = ["vx-1", "vx-2"]


def feed(live: str, token: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(
        f"{live}/api/v1/vulns/imports",
        files={"file": (name, json.dumps(body).encode(), "application/json")},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def test_kev_to_case_to_fix_campaign_to_closed_finding(
    live: str, ctx: AppContext, admin_token: str, broker: BrokerRuntime, tmp_path: Path
) -> None:
    token, batch = factory_line(live, admin_token, "test", DEVICES)
    store = Keystore("software", directory=tmp_path / "keys")
    with Server(live, token=token) as srv:
        enrolled = enroll_devices(
            srv, store, batch_id=batch, device_ids=DEVICES, out_dir=tmp_path / "devices"
        )
    assert [e.error for e in enrolled] == [None, None]
    agents = []
    for device in DEVICES:
        directory = tmp_path / "devices" / device
        ota = OtaClient(
            directory,
            server_url=f"https://127.0.0.1:{ctx.settings.device_port}",
            tls=partial(client_context, directory, store, cafile=ctx.service_pki.ca_cert),
            tenant="default",
            hardware="board-a",
            initial_version="1.0.0",
            health_check=lambda image: True,
        )
        config = AgentConfig(
            directory=directory,
            keystore=store,
            broker_host="127.0.0.1",
            broker_port=broker.port,
            broker_ca=broker.files.broker_ca,
            telemetry_interval=5.0,
        )
        agents.append((DeviceAgent(config, ota=ota), ota))
    rm = operator(ctx, "release-manager", "rm")
    sec = operator(ctx, "security", "sec")
    assert (
        call(live, rm, "POST", "/api/v1/ota/products/p", json={"threshold": 1}).status_code == 201
    )
    synced(broker)
    driver = CampaignDriver(ctx, interval=0.2)
    driver.start()
    stop = threading.Event()
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a, _ in agents]
    for t in threads:
        t.start()

    def campaign(version: str, openssl: str) -> tuple[int, int]:
        body = sbom(openssl, "2.31.0")
        resp = upload(
            live, rm, product="p", version=version, image=f"fw {version}".encode(), sbom=body
        )
        assert resp.status_code == 201, resp.text
        rid = int(resp.json()["id"])
        assert call(live, rm, "POST", f"/api/v1/releases/{rid}/approvals").json()["state"] == (
            "deployable"
        )
        resp = call(
            live, rm, "POST", "/api/v1/campaigns", json={"release_id": rid, "waves": [50, 100]}
        )
        assert resp.status_code == 201, resp.text
        cid = int(resp.json()["id"])
        review_passed(ctx, cid)  # the controls review is tests/trustmap/test_review.py's
        wait_for(
            lambda: (
                call(live, rm, "GET", f"/api/v1/campaigns/{cid}").json()["state"] == "completed"
            ),
            timeout=30,
            what=f"campaign of {version} to complete",
        )
        return rid, cid

    try:
        wait_for(lambda: all(a.stats.connects >= 1 for a, _ in agents), what="agents connected")
        vulnerable, _ = campaign("1.1.0", "3.0.11")
        assert all(o.slots.installed_version == "1.1.0" for _, o in agents)
        assert feed(live, sec, "nvd.json", NVD_OPENSSL)["findings_new"] == 1
        [finding] = call(live, sec, "GET", "/api/v1/vulns/findings").json()["items"]
        assert (finding["advisory"], finding["release_id"], finding["devices"]) == (
            OPENSSL_CVE,
            vulnerable,
            2,
        )
        # KEV lists it: the case opens with its three deadlines, and the early
        # warning is drafted from the live fleet (two devices, test environment).
        aware_floor = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
        feed(live, sec, "known_exploited_vulnerabilities.json", kev(OPENSSL_CVE))
        [case] = call(live, sec, "GET", "/api/v1/vulns/cases").json()["items"]
        aware = dt.datetime.fromisoformat(case["aware_at"])
        assert aware >= aware_floor and case["trigger"] == "kev"
        assert dt.datetime.fromisoformat(case["early_warning_due"]) - aware == dt.timedelta(
            hours=24
        )
        assert dt.datetime.fromisoformat(case["notification_due"]) - aware == dt.timedelta(hours=72)
        assert case["final_due"] is None
        draft = call(live, sec, "GET", f"/api/v1/vulns/cases/{case['id']}/reports/early-warning")
        assert draft.status_code == 200, draft.text
        assert "2" in json.dumps(draft.json()["json"]) and OPENSSL_CVE in draft.json()["markdown"]
        alerts = call(live, sec, "GET", "/api/v1/alerts").json()["items"]
        assert [a["kind"] for a in alerts].count("vulnerability-exploited") == 1
        # The fixed release, campaigned: the finding closes with the last device.
        fixed, cid = campaign("1.2.0", "3.0.13")
        assert all(o.slots.installed_version == "1.2.0" for _, o in agents)
        runner.vuln_round(ctx.db)
        closed = call(live, sec, "GET", f"/api/v1/vulns/findings/{finding['id']}").json()
        assert (closed["state"], closed["close_reason"], closed["devices"]) == (
            "closed",
            "remediated",
            0,
        )
        assert (closed["fix_release_id"], closed["campaign_id"]) == (fixed, cid)
        case = call(live, sec, "GET", f"/api/v1/vulns/cases/{case['id']}").json()
        assert case["final_due"] is not None
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=20)
        driver.stop()
