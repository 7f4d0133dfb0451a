"""From boot evidence to an alert and a quarantine at the broker, with real
agents, the live server, Mosquitto and the detection loop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from fleetward.agent.client import Server, enroll_devices, load_identity
from fleetward.agent.keystore import Keystore
from fleetward.attestation import service as verifier
from fleetward.attestation.evidence import claims, sign_evidence
from fleetward.detection import service as detection
from fleetward.detection.models import Alert
from fleetward.identity.models import Device
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.runtime.workers import DetectionRunner
from fleetward.store.db import utcnow
from tests.agent.test_agent import factory_line
from tests.attestation import test_verifier as tv
from tests.broker import connect, synced, wait_for
from tests.ota.helpers import call

NOT_AUTHORIZED = 0x87
APP, BOOTLOADER, KERNEL, enrolled = tv.APP, tv.BOOTLOADER, tv.KERNEL, tv.enrolled
released = tv.released  # the fixture: product p, release 1.0.0 with reference measurements


@pytest.mark.broker
@pytest.mark.slow
def test_tampered_bootloader_is_quarantined_within_two_seconds(
    live: str,
    ctx: AppContext,
    admin_token: str,
    released: None,
    broker: BrokerRuntime,
    tmp_path: Path,
) -> None:
    store = Keystore("software", directory=tmp_path / "k")
    dev = enrolled(live, admin_token, tmp_path, "victim", store, ctx)
    resp = call(
        live, admin_token, "PUT", "/api/v1/alerts/responses/boot-integrity",
        json={"action": "quarantine-device"},
    )  # fmt: skip
    assert resp.status_code == 200, resp.text
    synced(broker)
    key, passphrase = store.key_file(load_identity(dev.dir)["key_uri"])
    c = connect(broker.port, broker.files.broker_ca, dev.dir / "cert.pem", key, password=passphrase)
    assert c.publish("fw/default/victim/state/x") == 0
    runner = DetectionRunner(ctx, interval=0.2)
    runner.start()
    try:
        assert dev.attest()["verdict"] == "pass"
        (dev.dir / "boot" / "bootloader.bin").write_bytes(BOOTLOADER + b" implant")
        started = time.monotonic()
        assert dev.attest()["failed"] == ["measurements.bootloader"]
        wait_for(
            lambda: c.publish("fw/default/victim/state/x") == NOT_AUTHORIZED,
            timeout=2.0,
            what="the quarantine to reach the broker",
        )
        took = time.monotonic() - started
    finally:
        runner.stop()
    assert took < 2.0
    # Quarantined, not cut off: boot evidence and telemetry still flow.
    assert c.publish("fw/default/victim/boot/evidence") == 0
    alerts = call(live, admin_token, "GET", "/api/v1/alerts").json()["items"]
    assert [(a["kind"], a["key"]) for a in alerts] == [("boot-integrity", "device:victim")]
    assert alerts[0]["response"] == "quarantine-device: 1 device(s) quarantined"
    assert alerts[0]["evidence"]["failed"] == ["measurements.bootloader"]
    c.close()


@pytest.mark.slow
def test_five_percent_of_one_factory_batch_raises_one_cohort_alert(
    live: str,
    ctx: AppContext,
    admin_token: str,
    released: None,
    tmp_path: Path,
) -> None:
    import hashlib

    store = Keystore("software", directory=tmp_path / "k")
    batches: list[list[str]] = []
    for b in range(5):
        ids = [f"f{b}-{i:03d}" for i in range(200)]
        token, batch = factory_line(live, admin_token, "test", ids)
        with Server(live, token=token) as srv:
            results = enroll_devices(
                srv, store, batch_id=batch, device_ids=ids, out_dir=tmp_path / "d"
            )
        assert all(r.error is None for r in results)
        batches.append(ids)
    bad = set(batches[2][::20])  # 10 of 200: 5% of the third batch
    good = {
        "bootloader": hashlib.sha256(BOOTLOADER).hexdigest(),
        "kernel": hashlib.sha256(KERNEL).hexdigest(),
        "application": hashlib.sha256(APP).hexdigest(),
    }
    for ids in batches:
        for device_id in ids:
            with ctx.db.session() as s:
                nonce = verifier.issue_nonce(s, "default", device_id)
            signer = store.open(load_identity(tmp_path / "d" / device_id)["key_uri"])
            meas = dict(good, bootloader="0" * 64) if device_id in bad else good
            token = sign_evidence(
                claims(
                    nonce=nonce, device_id=device_id, version="1.0.0", measurements=meas,
                    secure_boot=True, debug_status=3, boot_count=1, now=utcnow(),
                ),
                signer,
            )  # fmt: skip
            with ctx.db.session() as s:
                verifier.submit(s, "default", device_id, token)
    with ctx.db.session() as s:
        detection.run(s)
    with ctx.db.read() as s:
        alerts = list(s.execute(select(Alert)).scalars())
    assert [a.kind for a in alerts] == ["boot-integrity-cohort"], [a.key for a in alerts]
    [alert] = alerts
    with ctx.db.read() as s:
        batch_id = s.execute(
            select(Device.batch_id).where(Device.device_id == batches[2][0])
        ).scalar_one()
    assert alert.key == f"batch:{batch_id}"
    assert "10 of 200" in alert.summary
