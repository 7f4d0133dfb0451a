"""The simulator against the live server, Mosquitto with the fleetward plugin,
and telemetry ingest: real agents, real certificates, real revocation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from fleetward.identity.models import Device
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.runtime.workers import IngestWorker
from fleetward.sim import Broker, FleetProcesses, FleetSpec, SimFleet, summary
from fleetward.sim.spec import images, reference_measurements
from fleetward.telemetry.models import Event
from tests.broker import synced, wait_for
from tests.ota.helpers import call, operator, review_passed, upload


def release(live: str, ctx: AppContext, admin_token: str, spec: FleetSpec) -> None:
    """The fleet's initial firmware as a release, so untampered devices attest ``pass``."""
    call(live, admin_token, "POST", f"/api/v1/ota/products/{spec.product}", json={"threshold": 1})
    rm = operator(ctx, "release-manager", "rm")
    resp = upload(
        live, rm, product=spec.product, version=spec.initial_version,
        image=images(spec)["application"], hardware=spec.hardware,
        meas=reference_measurements(spec),
    )  # fmt: skip
    assert resp.status_code == 201, resp.text
    call(live, rm, "POST", f"/api/v1/releases/{resp.json()['id']}/approvals")


def metrics_per_device(ctx: AppContext) -> dict[str, int]:
    with ctx.db.read() as s:
        rows = s.execute(
            select(Device.device_id, func.count(Event.id))
            .join(Event, Event.device_pk == Device.id)
            .where(Event.type == "metric")
            .group_by(Device.device_id)
        ).all()
    return {d: n for d, n in rows}


@pytest.mark.broker
@pytest.mark.slow
def test_small_fleet_lives_attests_and_is_cut_off_by_revocation(
    live: str,
    live_device: str,
    service_ca: Path,
    ctx: AppContext,
    admin_token: str,
    broker: BrokerRuntime,
    tmp_path: Path,
) -> None:
    spec = FleetSpec(
        devices=20, environment="test", batches=2, offline=0.05, tampered=0.1,
        telemetry_interval=0.3, seed=3,
    )  # fmt: skip
    release(live, ctx, admin_token, spec)
    progress: list[tuple[int, int]] = []
    fleet = SimFleet(
        spec, server_url=live, device_url=live_device, server_ca=service_ca,
        directory=tmp_path / "fleet", token=admin_token, backoff_base=0.2, backoff_cap=1.0,
    )  # fmt: skip
    assert len(fleet.prepare(on_progress=lambda done, total: progress.append((done, total)))) == 20
    assert progress[0] == (0, 20) and progress[-1] == (20, 20)
    synced(broker)
    ingest = IngestWorker(ctx.db, ctx.settings.home)
    ingest.start()
    try:
        fleet.start(timeout=30)
        snap = {d["device_id"]: d for d in fleet.snapshot()}
        [offline] = [d for d, s in snap.items() if not s["online"]]
        online = sorted(d for d in snap if d != offline)
        assert all(snap[d]["connected"] for d in online) and not snap[offline]["connected"]
        assert {s["batch"] for s in snap.values()} == {"b0", "b1"}
        assert {s["version"] for s in snap.values()} == {"1.0.0"}

        # Telemetry reaches the server through the broker and the ingest.
        wait_for(
            lambda: set(online) <= set(metrics_per_device(ctx)), timeout=15,
            what="a reading of every online device in the database",
        )  # fmt: skip
        assert offline not in metrics_per_device(ctx)

        # Attestation: the real agent code, over HTTPS on the device plane, as each device.
        verdicts = fleet.attest()
        tampered = sorted(d for d, v in verdicts.items() if v["verdict"] != "pass")
        assert len(tampered) == 2
        assert all(verdicts[d]["failed"] == ["measurements.bootloader"] for d in tampered)
        fleet.tamper([online[0]])
        assert fleet.attest([online[0]])[online[0]]["verdict"] == "fail"

        # Revoking two devices cuts exactly those two off.
        victims = [d for d in online if d not in tampered][-2:]
        before = time.monotonic()
        for d in victims:
            resp = call(
                live, admin_token, "POST", f"/api/v1/devices/{d}/revocation",
                json={"reason": "keyCompromise"},
            )  # fmt: skip
            assert resp.status_code == 200, resp.text
        wait_for(
            lambda: all(s["cut_off"] for s in fleet.snapshot() if s["device_id"] in victims),
            timeout=15, what="the revoked devices to be cut off",
        )  # fmt: skip
        snap = {d["device_id"]: d for d in fleet.snapshot()}
        assert sorted(d for d, s in snap.items() if s["cut_off"]) == sorted(victims)
        for d in victims:
            assert snap[d]["cut_off_at"] is not None and snap[d]["cut_off_at"] >= before
            assert not snap[d]["connected"]
        assert all(snap[d]["connected"] for d in online if d not in victims)

        # The offline device connects once brought online.
        fleet.bring_online([offline])
        fleet.wait_connected([offline], timeout=10)
        fleet.take_offline([online[1]])
        assert not {d["device_id"]: d for d in fleet.snapshot()}[online[1]]["connected"]
        counts = summary(fleet.snapshot())
        assert counts["cut_off"] == 2 and counts["connected"] == 17
    finally:
        fleet.stop()
        ingest.stop()
    # A second start on the same directory enrolls nothing.
    again = SimFleet(
        spec, server_url=live, device_url=live_device, server_ca=service_ca,
        directory=tmp_path / "fleet",
    )  # fmt: skip
    assert again.prepare() == []
    with pytest.raises(Exception, match="holds another fleet"):
        SimFleet(
            FleetSpec(devices=21, environment="test"), server_url=live, device_url=live_device,
            server_ca=service_ca,
            directory=tmp_path / "fleet", token=admin_token,
        ).prepare()  # fmt: skip


@pytest.mark.broker
@pytest.mark.slow
def test_three_hundred_devices_in_two_processes(
    live: str,
    live_device: str,
    service_ca: Path,
    ctx: AppContext,
    admin_token: str,
    broker: BrokerRuntime,
    tmp_path: Path,
) -> None:
    spec = FleetSpec(devices=300, environment="test", batches=3, telemetry_interval=5.0)
    fleet = FleetProcesses(
        spec, server_url=live, device_url=live_device, server_ca=service_ca,
        directory=tmp_path / "fleet", processes=2,
        token=admin_token,
        broker=Broker(host="127.0.0.1", port=broker.port, ca=broker.files.broker_ca),
    )  # fmt: skip
    fleet.prepare()
    synced(broker)
    started = time.monotonic()
    try:
        fleet.start(timeout=120)
        took = time.monotonic() - started
        snap = fleet.snapshot()
        assert len(snap) == 300 and all(d["connected"] for d in snap)
        print(f"300 devices in 2 processes connected in {took:.1f} s")
        one = snap[-1]["device_id"]
        fleet.take_offline([one])
        assert not next(d for d in fleet.snapshot() if d["device_id"] == one)["connected"]
    finally:
        fleet.stop()


@pytest.mark.broker
@pytest.mark.slow
def test_campaign_commits_on_healthy_devices_and_falls_back_on_the_others(
    live: str,
    live_device: str,
    service_ca: Path,
    ctx: AppContext,
    admin_token: str,
    broker: BrokerRuntime,
    tmp_path: Path,
) -> None:
    from fleetward.runtime.workers import CampaignDriver

    spec = FleetSpec(
        devices=6, environment="test", fail_health=0.34, slow_link_ms=50,
        telemetry_interval=1.0, seed=5,
    )  # fmt: skip
    release(live, ctx, admin_token, spec)
    rm = operator(ctx, "release-manager", "rm2")
    fleet = SimFleet(
        spec, server_url=live, device_url=live_device, server_ca=service_ca,
        directory=tmp_path / "fleet", token=admin_token,
    )  # fmt: skip
    fleet.prepare()
    synced(broker)
    driver = CampaignDriver(ctx, interval=0.2)
    driver.start()
    try:
        fleet.start(timeout=30)
        resp = upload(
            live, rm, product=spec.product, version="1.1.0", image=b"sim firmware 1.1.0",
            hardware=spec.hardware,
        )  # fmt: skip
        rid = resp.json()["id"]
        call(live, rm, "POST", f"/api/v1/releases/{rid}/approvals")
        started = time.monotonic()
        resp = call(
            live, rm, "POST", "/api/v1/campaigns",
            json={"release_id": rid, "waves": [50, 100],
                  "gate": {"min_success_ratio": 0.0, "max_failure_ratio": 1.0}},
        )  # fmt: skip
        assert resp.status_code == 201, resp.text
        review_passed(ctx, int(resp.json()["id"]))

        def settled() -> bool:
            return all({"committed", "fell-back"} & set(d["ota_steps"]) for d in fleet.snapshot())

        wait_for(settled, timeout=30, what="every device to finish the update")
        snap = fleet.snapshot()
        updated = sorted(d["device_id"] for d in snap if d["version"] == "1.1.0")
        stayed = sorted(d["device_id"] for d in snap if d["version"] == "1.0.0")
        assert len(updated) == 4 and len(stayed) == 2
        for d in snap:
            if d["version"] == "1.1.0":
                assert d["updated_at"] is not None and d["updated_at"] > started
                assert d["ota_steps"][0] == "received"
                work = [x for x in d["ota_steps"] if x != "received"]
                assert work[:3] == ["downloading", "staged", "boot"]
            else:
                assert d["updated_at"] is None and "fell-back" in d["ota_steps"]
    finally:
        fleet.stop()
        driver.stop()
