"""Drills on a simulated fleet of 1,000 devices: real agents over mTLS to
Mosquitto with the fleetward plugin, the live server, telemetry ingest, the
campaign driver and the detection loop."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from fleetward.errors import NotFoundError, PermissionDeniedError
from fleetward.identity.models import CertificateRecord, Device
from fleetward.response import drills
from fleetward.response import service as response
from fleetward.response.effects import LiveEffects
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.runtime.workers import (
    CampaignDriver,
    ComplianceTracker,
    DetectionRunner,
    IngestWorker,
)
from fleetward.sim import FleetProcesses, FleetSpec, SimFleet
from fleetward.tenancy.roles import ENVIRONMENTS
from tests.broker import sim_broker, synced, wait_for
from tests.ota.helpers import call, operator, upload
from tests.response.helpers import ADMIN, SEC, SEC2, SEC3, enroll
from tests.sim.test_fleet import metrics_per_device, release

# Three hundred devices in the SQLite run (500 took 60 s of CI), 150 in the
# PostgreSQL run: the same paths on a bounded fleet; the drill benchmark,
# benchmarks/drill.py, runs the thousands.
N = 150 if os.environ.get("FLEETWARD_TEST_PG_URL") else 300


@pytest.fixture
def stack(ctx: AppContext, broker: BrokerRuntime) -> Iterator[None]:
    """What ``fleetward up`` runs beside the API."""
    synced(broker)  # the service listener is up
    ingest = IngestWorker(ctx.db, ctx.settings.home)
    driver = CampaignDriver(ctx, interval=0.2, resend=2.0)
    detection = DetectionRunner(ctx, interval=0.3)
    tracker = ComplianceTracker(ctx, interval=0.5, resend=2.0)
    for part in (ingest, driver, detection, tracker):
        part.start()
    yield
    for part in (tracker, detection, driver, ingest):
        part.stop()


def trust_files(broker: BrokerRuntime) -> list[Path]:
    """The broker's per-environment trust anchor files."""
    return [broker.files.devices_ca(env) for env in ENVIRONMENTS]


@pytest.mark.broker
@pytest.mark.slow
def test_drills_on_hundreds_of_devices(
    live: str,
    ctx: AppContext,
    admin_token: str,
    broker: BrokerRuntime,
    stack: None,
    tmp_path: Path,
) -> None:
    spec = FleetSpec(
        devices=N, prefix="drill", environment="drill", batches=4, offline=0.03,
        telemetry_interval=3.0, seed=11,
    )  # fmt: skip
    release(live, ctx, admin_token, spec)
    fleet = FleetProcesses(
        spec, server_url=live, directory=tmp_path / "fleet", processes=2, token=admin_token,
        broker=sim_broker(broker),
        device_url=f"https://127.0.0.1:{ctx.settings.device_port}",
        server_ca=ctx.service_pki.ca_cert,
        backoff_base=0.2, backoff_cap=1.0,
    )  # fmt: skip
    fleet.prepare()
    synced(broker)
    effects = LiveEffects(ctx.settings.home)
    with ctx.db.session() as s:
        response.install_standard(s, SEC)
    try:
        fleet.start(timeout=240)
        snap = fleet.snapshot()
        offline = {d["device_id"] for d in snap if not d["online"]}
        assert len(snap) == N and 0 < len(offline) < N // 10
        # Every online device is seen by the server (so runs know who is online).
        wait_for(
            lambda: len(metrics_per_device(ctx)) >= N - len(offline), timeout=60,
            what="a reading from every online device",
        )  # fmt: skip

        # ---- drill 1: a compromised factory batch, detected by attestation ----
        batch_of = {d["device_id"]: d["batch"] for d in snap}
        b1 = sorted(d for d, b in batch_of.items() if b == "b1")
        with ctx.db.read() as s:
            batch_id = s.execute(
                select(Device.batch_id).where(Device.device_id == b1[0])
            ).scalar_one()
        inject = [d for d in b1 if d not in offline][:3]
        progress: list[str] = []
        report1 = drills.run_drill(
            ctx, fleet, starter=SEC, approvers=[SEC2], playbook="compromised-factory",
            params={"batch": batch_id}, scenario="compromised-batch", inject=inject,
            effects=effects, timeout=120, progress=progress.append,
        )  # fmt: skip
        r1 = json.loads(report1.report)
        assert report1.state == "passed", r1
        assert report1.affected == len(b1) and r1["goal"] == "cut-off"
        assert report1.detect_s is not None and report1.detect_s < 5
        assert report1.contain_s is not None and report1.contain_s < 10
        b1_offline = sorted(set(b1) & offline)
        assert report1.stragglers == len(b1_offline) and r1["stragglers"] == b1_offline
        assert r1["bystanders_touched"] == []
        after = {d["device_id"]: d for d in fleet.snapshot()}
        # Mass revocation cut every affected device off, stragglers included.
        assert all(after[d]["cut_off"] and not after[d]["connected"] for d in b1)
        assert all(after[d]["connected"] for d in after if d not in b1 and d not in offline)
        assert r1["server_incident_state"] == "contained"

        # ---- drill 2: emergency OTA of every remaining drill device ----
        rm = operator(ctx, "release-manager", "rm-drill")
        resp = upload(
            live, rm, product=spec.product, version="1.0.1", image=b"fixed firmware 1.0.1",
            hardware=spec.hardware,
        )  # fmt: skip
        assert resp.status_code == 201, resp.text
        rid = resp.json()["id"]
        assert call(live, rm, "POST", f"/api/v1/releases/{rid}/approvals").status_code == 200
        remaining = sorted(d for d in batch_of if d not in b1)
        report2 = drills.run_drill(
            # Creating the campaign is a release manager's right: the incident
            # commander is an admin here; two security operators approve.
            ctx, fleet, starter=ADMIN, approvers=[SEC2, SEC3], playbook="emergency-ota",
            params={"product": spec.product, "release": rid}, scenario="vulnerable-firmware",
            confirm=len(remaining), effects=effects, timeout=180,
        )  # fmt: skip
        r2 = json.loads(report2.report)
        assert report2.state == "passed", r2
        assert report2.affected == len(remaining) and r2["goal"] == "updated"
        left_offline = sorted(set(remaining) & offline)
        # Offline devices were listed, then updated when they came back.
        assert r2["stragglers"] == left_offline and report2.stragglers == len(left_offline)
        assert r2["stragglers_s"] is not None
        final = {d["device_id"]: d for d in fleet.snapshot()}
        assert all(final[d]["version"] == "1.0.1" for d in remaining)
        assert all(final[d]["version"] == "1.0.0" for d in b1)  # cut off: never offered
        assert r2["server_incident_state"] == "contained" and r2["server_stragglers"] == 0

        # ---- drill 3: the drill issuing CA is compromised ----
        report3 = drills.run_drill(
            ctx, fleet, starter=ADMIN, approvers=[SEC2], playbook="compromised-issuing-ca",
            scenario="ca-compromise", confirm=len(remaining), effects=effects, timeout=180,
            trust_files=lambda: trust_files(broker),
        )  # fmt: skip
        r3 = json.loads(report3.report)
        assert report3.state == "passed", r3
        assert report3.affected == len(remaining) and r3["goal"] == "renewed"
        assert r3["ca_dependents_left"] == 0
        assert 0 < r3["ca_migrated_s"] <= r3["ca_untrusted_s"], r3
        with ctx.db.read() as s:
            trend = drills.list_drills(s, SEC)
        assert [d.playbook for d in trend] == [
            "compromised-issuing-ca", "emergency-ota", "compromised-factory",
        ]  # fmt: skip
        print(
            f"drill 1: detect {report1.detect_s} s, contain {report1.contain_s} s; "
            f"drill 2: contain {report2.contain_s} s, stragglers {r2['stragglers_s']} s; "
            f"drill 3: renewed {report3.contain_s} s, no device on the old CA "
            f"{r3['ca_migrated_s']} s, old CA trusted nowhere {r3['ca_untrusted_s']} s"
        )
    finally:
        effects.close()
        fleet.stop()


@pytest.mark.broker
@pytest.mark.slow
def test_a_compromised_issuing_ca_drill_rotates_and_every_device_renews(
    live: str,
    ctx: AppContext,
    admin_token: str,
    broker: BrokerRuntime,
    stack: None,
    tmp_path: Path,
) -> None:
    """Rotate the drill CA, the devices renew on command under the new one
    (same keys) and reconnect; offline ones renew when they come back."""
    from fleetward.identity import ca_service

    spec = FleetSpec(devices=30, prefix="ca", environment="drill", offline=0.1,
                     telemetry_interval=1.0, seed=5)  # fmt: skip
    fleet = SimFleet(
        spec, server_url=live, directory=tmp_path / "fleet", token=admin_token,
        broker=sim_broker(broker),
        device_url=f"https://127.0.0.1:{ctx.settings.device_port}",
        server_ca=ctx.service_pki.ca_cert,
        backoff_base=0.2, backoff_cap=1.0,
    )  # fmt: skip
    fleet.prepare()
    synced(broker)
    with ctx.db.session() as s:
        response.install_standard(s, SEC)
        old = ca_service.active_issuing_ca(s, tenant_id=1, environment="drill").id
    effects = LiveEffects(ctx.settings.home)
    try:
        fleet.start(timeout=60)
        offline = {d["device_id"] for d in fleet.snapshot() if not d["online"]}
        wait_for(
            lambda: len(metrics_per_device(ctx)) >= spec.devices - len(offline), timeout=30,
            what="a reading from every online device",
        )  # fmt: skip
        report = drills.run_drill(
            ctx, fleet, starter=ADMIN, approvers=[SEC2], playbook="compromised-issuing-ca",
            scenario="ca-compromise", confirm=spec.devices, effects=effects, timeout=60,
            trust_files=lambda: trust_files(broker),
        )  # fmt: skip
        r = json.loads(report.report)
        assert report.state == "passed", (r, broker.restarts, broker.mosquitto.log_lines[-5:])
        assert r["goal"] == "renewed" and report.affected == spec.devices
        # The old CA's end, timed: nobody depends on it, then it is in no trust file.
        assert r["old_ca"] == old and r["ca_dependents_left"] == 0
        assert 0 < r["ca_migrated_s"] <= r["ca_untrusted_s"], r
        for path in trust_files(broker):
            assert old_ca_pem_der(ctx, old) not in path.read_bytes()
        assert r["stragglers"] == sorted(offline) and r["server_incident_state"] == "contained"
        with ctx.db.read() as s:
            new = ca_service.active_issuing_ca(s, tenant_id=1, environment="drill").id
            holders = set(
                s.execute(
                    select(Device.device_id)
                    .join(CertificateRecord, CertificateRecord.device_pk == Device.id)
                    .where(CertificateRecord.ca_id == new, CertificateRecord.status == "good")
                ).scalars()
            )
        assert new != old and holders == {d["device_id"] for d in fleet.snapshot()}
        # Every device renewed (a re-sent command may make it twice) under the
        # new CA, and is connected with that certificate.
        wait_for(
            lambda: all(d["renewals"] >= 1 and d["connected"] for d in fleet.snapshot()),
            timeout=10, what="every device connected with its new certificate",
        )  # fmt: skip
        with ctx.db.read() as s:
            assert ca_service.get_ca(s, tenant_id=1, ca_id=old).status == "distrusted"
            left = s.execute(
                select(CertificateRecord.serial).where(
                    CertificateRecord.ca_id == old, CertificateRecord.status == "good"
                )
            ).all()
        assert left == []  # every old certificate revoked (cACompromise)
    finally:
        effects.close()
        fleet.stop()


def old_ca_pem_der(ctx: AppContext, ca_id: int) -> bytes:
    """The base64 body's first line of a CA as it would appear in a PEM file."""
    from fleetward.identity import ca_service

    with ctx.db.read() as s:
        pem = ca_service.get_ca(s, tenant_id=1, ca_id=ca_id).certificate_pem or ""
    return pem.splitlines()[1].encode()


def test_a_drill_pointed_at_production_devices_is_refused(ctx: AppContext) -> None:
    """The fleet a drill runs on must be simulated devices in the drill environment."""

    class Fake:
        def __init__(self, ids: list[str]) -> None:
            self.ids = ids

        def snapshot(self) -> list[dict[str, object]]:
            return [{"device_id": d, "connected": True} for d in self.ids]

        def tamper(self, ids: object) -> None:
            raise AssertionError("nothing may happen")

        attest = bring_online = tamper

    enroll(ctx, ["prod-1"], env="production")
    enroll(ctx, ["drill-1"], env="drill")
    with ctx.db.session() as s:
        response.install_standard(s, SEC)
    effects = LiveEffects(ctx.settings.home)
    with pytest.raises(PermissionDeniedError, match="drill environment only"):
        drills.run_drill(
            ctx, Fake(["drill-1", "prod-1"]), starter=SEC, approvers=[SEC2],  # type: ignore[arg-type]
            playbook="mass-credential-revocation", params={"devices": ["prod-1"]}, effects=effects,
        )  # fmt: skip
    with pytest.raises(NotFoundError, match="not devices of tenant"):
        drills.run_drill(
            ctx, Fake(["nobody"]), starter=SEC, approvers=[SEC2],  # type: ignore[arg-type]
            playbook="mass-credential-revocation", params={"devices": ["nobody"]}, effects=effects,
        )  # fmt: skip
    with ctx.db.read() as s:
        assert (
            s.execute(select(Device.state).where(Device.device_id == "prod-1")).scalar() == "active"
        )
        assert drills.list_drills(s, SEC) == []


@pytest.mark.broker
@pytest.mark.slow
def test_fleetward_drill_run_from_the_cli(
    live: str,
    ctx: AppContext,
    admin_token: str,
    broker: BrokerRuntime,
    stack: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``fleetward drill run`` against a running fleetward, then ``drill list``."""
    from typer.testing import CliRunner

    from fleetward.cli.main import app

    monkeypatch.setenv("FLEETWARD_DATABASE_URL", ctx.settings.database_url)
    sec2 = operator(ctx, "security", "drill-approver")
    with ctx.db.session() as s:
        response.install_standard(s, SEC)
    home = ["--home", str(ctx.settings.home)]
    out = CliRunner().invoke(
        app,
        [*home, "drill", "run", "compromised-factory", "--server", live, "--token", admin_token,
         "--device-server", f"https://127.0.0.1:{ctx.settings.device_port}",
         "--approver", sec2, "--devices", "24", "--batches", "2", "--offline", "0.1",
         "--inject", "1", "--param", "batch=@b1", "--dir", str(tmp_path / "fleet")],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "passed" in out.output, out.output
    shown = CliRunner().invoke(app, [*home, "drill", "show", "1"])
    report = json.loads(shown.output)
    assert report["state"] == "passed" and report["goal"] == "cut-off"
    assert report["detect_s"] is not None and report["affected"] == 12
