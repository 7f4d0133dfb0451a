"""Campaigns with simulated devices that run the real device-side update code
(stock TUF client, A/B slots, boot counter) against a live server."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import insert, select

from fleetward.agent.ota import Slots, install
from fleetward.config import Settings
from fleetward.errors import ConflictError, PermissionDeniedError
from fleetward.identity.models import Device
from fleetward.ota import campaigns
from fleetward.ota.models import CampaignDevice, Release
from fleetward.ota.rollout import GatePolicy
from fleetward.runtime.context import AppContext
from fleetward.store.db import utcnow
from fleetward.tenancy.roles import Principal
from tests.ota.helpers import call, operator, review_passed, updater, upload
from tests.ota.test_repository import root_of

N = 60


def add_devices(ctx: AppContext, n: int, *, product: str = "thermo") -> list[str]:
    now = utcnow()
    ids = [f"sim-{i:04d}" for i in range(n)]
    with ctx.db.session() as s:
        s.execute(
            insert(Device),
            [
                {
                    "tenant_id": 1,
                    "device_id": d,
                    "product": product,
                    "labels": json.dumps({"hardware": "board-a"}),
                    "state": "active",
                    "created_at": now,
                    "updated_at": now,
                }
                for d in ids
            ],
        )
    return ids


class Fleet:
    """Simulated devices: each offer is installed with the real agent code."""

    def __init__(self, live: str, ctx: AppContext, tmp: Path, ids: list[str]) -> None:
        self.live, self.ctx, self.tmp = live, ctx, tmp
        self.slots = {d: Slots(tmp / d, initial_version="1.0.0") for d in ids}
        self.root = root_of(ctx)

    def handle(self, offer: campaigns.Offer) -> tuple[str, str]:
        slots = self.slots[offer.device_id]
        tuf = updater(self.ctx, self.tmp / offer.device_id / "tuf", self.root)
        install(tuf, slots, target_path=offer.payload["target"], hardware="board-a")
        while slots.pending is not None:
            slots.boot(lambda image: b"BROKEN" not in image.read_bytes())
        ok = slots.installed_version == offer.payload["version"]
        return ("succeeded" if ok else "failed"), slots.installed_version

    def run(self, offers: list[campaigns.Offer], campaign_id: int) -> None:
        for offer in offers:
            status, version = self.handle(offer)
            with self.ctx.db.session() as s:
                assert campaigns.report(
                    s, tenant_id=1, device_id=offer.device_id, campaign_id=campaign_id,
                    status=status, version=version,
                )  # fmt: skip

    def installed(self, version: str) -> set[str]:
        return {d for d, s in self.slots.items() if s.installed_version == version}

    def ever_staged(self) -> set[str]:
        return {d for d, s in self.slots.items() if s.image("b").exists()}


@pytest.fixture
def ops(live: str, ctx: AppContext, admin_token: str) -> dict[str, str]:
    call(live, admin_token, "POST", "/api/v1/ota/products/thermo", json={"threshold": 1})
    return {"rm": operator(ctx, "release-manager", "rm")}


def deploy(live: str, ops: dict[str, str], version: str, image: bytes) -> int:
    resp = upload(live, ops["rm"], product="thermo", version=version, image=image)
    rid = int(resp.json()["id"])
    assert (
        call(live, ops["rm"], "POST", f"/api/v1/releases/{rid}/approvals").json()["state"]
        == "deployable"
    )
    return rid


def rm(ctx: AppContext) -> Principal:
    """A release manager (computed before any write session: sessions do not nest)."""
    return Principal(1, "default", "release-manager", "rm")


def test_bad_release_halts_in_the_first_wave_and_goes_no_further(
    live: str, ctx: AppContext, ops: dict[str, str], tmp_path: Path
) -> None:
    ids = add_devices(ctx, N)
    fleet = Fleet(live, ctx, tmp_path, ids)
    rid = deploy(live, ops, "1.1.0", b"BROKEN build")
    with ctx.db.session() as s:
        c = campaigns.create_campaign(
            s, rm(ctx), release_id=rid, waves=[10, 50, 100], gate=GatePolicy(min_sample=2)
        )
        cid = c.id
    with ctx.db.session() as s:
        offers = campaigns.step(s, cid)
    assert len(offers) == 6  # 10% of 60
    fleet.run(offers[:3], cid)  # three devices try it, fall back and report
    with ctx.db.session() as s:
        assert campaigns.step(s, cid) == []
        c = campaigns.get_campaign(s, rm(ctx), cid)
        assert c.state == "halted" and "3 of 3 devices failed" in c.reason
    # The gate halted the campaign early; only devices that were offered it
    # ever staged the image, and they all run the old version again.
    tried = {o.device_id for o in offers[:3]}
    assert fleet.ever_staged() == tried
    assert fleet.installed("1.0.0") == set(ids)
    with ctx.db.read() as s:
        later = s.execute(select(CampaignDevice.status).where(CampaignDevice.wave > 0)).scalars()
        assert set(later) == {"planned"}
    # Abort: the release is withdrawn and the devices still in flight (offered,
    # not yet reported) are told to fall back.
    with ctx.db.session() as s:
        fallbacks = campaigns.abort(s, ctx.pki.keyring, rm(ctx), cid)
        assert s.get(Release, rid).state == "withdrawn"  # type: ignore[union-attr]
    assert {f.device_id for f in fallbacks} == {o.device_id for o in offers[3:]}
    assert all(f.topic.endswith("/ota/fallback") for f in fallbacks)
    client = updater(ctx, tmp_path / "late", root_of(ctx))
    client.refresh()
    assert client.get_targetinfo("thermo/1.1.0/fw.bin") is None  # gone from targets


def test_good_release_completes_and_survives_a_restart(
    live: str, ctx: AppContext, ops: dict[str, str], tmp_path: Path
) -> None:
    ids = add_devices(ctx, N)
    fleet = Fleet(live, ctx, tmp_path, ids)
    rid = deploy(live, ops, "1.1.0", b"good build")
    with ctx.db.session() as s:
        cid = campaigns.create_campaign(s, rm(ctx), release_id=rid, waves=[10, 50, 100]).id
        offers = campaigns.step(s, cid)
    review_passed(ctx, cid)
    fleet.run(offers[:3], cid)  # half the first wave reports, then the server restarts
    restarted = AppContext.from_settings(
        Settings(
            home=ctx.settings.home,
            database_url=ctx.settings.database_url,
            public_url=ctx.settings.public_url,
        )
    )
    try:
        with restarted.db.session() as s:
            assert campaigns.step(s, cid) == []  # still waiting for the rest of wave 1
            again = campaigns.pending_offers(s, campaigns.get_campaign(s, rm(ctx), cid))
        assert {o.device_id for o in again} == {o.device_id for o in offers[3:]}
        fleet.run(again, cid)
        for expected in (24, 30):  # waves 2 and 3
            with restarted.db.session() as s:
                offers = campaigns.step(s, cid)
            assert len(offers) == expected
            fleet.run(offers, cid)
        with restarted.db.session() as s:
            assert campaigns.step(s, cid) == []
            assert campaigns.get_campaign(s, rm(ctx), cid).state == "completed"
    finally:
        restarted.db.dispose()
    assert fleet.installed("1.1.0") == set(ids)


def test_halted_campaign_resumes_only_by_an_operator(
    live: str, ctx: AppContext, ops: dict[str, str], tmp_path: Path
) -> None:
    add_devices(ctx, 20)
    rid = deploy(live, ops, "1.1.0", b"good")
    with ctx.db.session() as s:
        cid = campaigns.create_campaign(
            s, rm(ctx), release_id=rid, waves=[50, 100],
            gate=GatePolicy(time_limit_seconds=1),
        ).id  # fmt: skip
        campaigns.step(s, cid)
    review_passed(ctx, cid)
    later = utcnow() + dt.timedelta(seconds=5)
    with ctx.db.session() as s:
        campaigns.step(s, cid, now=later)
        assert campaigns.get_campaign(s, rm(ctx), cid).reason.endswith("within 1 s")
        assert campaigns.resume(s, rm(ctx), cid).state == "running"
        with pytest.raises(ConflictError):
            campaigns.resume(s, rm(ctx), cid)  # only a halted campaign resumes
    with ctx.db.session() as s:
        offers = campaigns.step(s, cid, now=later)
    assert len(offers) == 10  # the second wave started after the operator accepted the first


def test_emergency_campaign_needs_two_security_approvals(
    live: str, ctx: AppContext, ops: dict[str, str]
) -> None:
    add_devices(ctx, 10)
    rid = deploy(live, ops, "1.1.0", b"fix")
    sec1 = Principal(1, "default", "security", "sec1")
    sec2 = Principal(1, "default", "security", "sec2")
    with ctx.db.session() as s:
        c = campaigns.create_campaign(s, rm(ctx), release_id=rid, emergency=True)
        cid = c.id
        assert c.state == "awaiting-approval" and json.loads(c.waves) == [100.0]
        assert campaigns.step(s, cid) == []
    with ctx.db.session() as s, pytest.raises(PermissionDeniedError):
        campaigns.approve(s, rm(ctx), cid)
    with ctx.db.session() as s:
        campaigns.approve(s, sec1, cid)
    with ctx.db.session() as s, pytest.raises(ConflictError):
        campaigns.approve(s, sec1, cid)
    with ctx.db.session() as s:
        assert campaigns.approve(s, sec2, cid).state == "running"
        assert len(campaigns.step(s, cid)) == 10  # one wave: everybody


def test_only_signed_releases_are_deployed(live: str, ctx: AppContext, ops: dict[str, str]) -> None:
    add_devices(ctx, 5)
    resp = upload(live, ops["rm"], product="thermo", version="1.1.0", image=b"x", sbom=None)
    rid = int(resp.json()["id"])
    call(live, ops["rm"], "POST", f"/api/v1/releases/{rid}/approvals")  # gate: no SBOM
    with ctx.db.session() as s, pytest.raises(ConflictError, match="pending"):
        campaigns.create_campaign(s, rm(ctx), release_id=rid)


def test_boot_attestation_is_part_of_the_gate(
    live: str, ctx: AppContext, ops: dict[str, str]
) -> None:
    ids = add_devices(ctx, 10)
    rid = deploy(live, ops, "1.1.0", b"fw")
    with ctx.db.session() as s:
        cid = campaigns.create_campaign(
            s, rm(ctx), release_id=rid, waves=[50, 100],
            gate=GatePolicy(require_attestation=True),
        ).id  # fmt: skip
        offers = campaigns.step(s, cid)
    assert len(offers) == 5
    with ctx.db.session() as s:
        for o in offers:
            campaigns.report(
                s, tenant_id=1, device_id=o.device_id, campaign_id=cid,
                status="succeeded", version="1.1.0",
            )  # fmt: skip
        # Installed, but nobody attested yet: the gate waits.
        assert campaigns.step(s, cid) == []
        counts = campaigns.wave_counts(s, cid, 0)
        assert (counts.succeeded, counts.failed) == (0, 0)
    with ctx.db.read() as s:
        pks = {d: pk for pk, d in s.execute(select(Device.id, Device.device_id))}
    assert set(ids) <= set(pks)
    with ctx.db.session() as s:
        for o in offers[:4]:
            assert campaigns.on_verdict(
                s, device_pk=pks[o.device_id], version="1.1.0", result="pass"
            )
        campaigns.on_verdict(s, device_pk=pks[offers[4].device_id], version="1.1.0", result="fail")
        assert campaigns.step(s, cid) == []
        c = campaigns.get_campaign(s, rm(ctx), cid)
        assert c.state == "halted" and "1 of 5 devices failed" in c.reason


def test_a_campaign_that_reaches_everyone_at_once_must_be_an_emergency(
    live: str, ctx: AppContext, ops: dict[str, str]
) -> None:
    from fleetward.errors import InvalidInputError
    from fleetward.ota.models import Campaign

    add_devices(ctx, 5)
    rid = deploy(live, ops, "1.1.0", b"fw")
    with ctx.db.session() as s, pytest.raises(InvalidInputError, match="emergency"):
        campaigns.create_campaign(s, rm(ctx), release_id=rid, waves=[100])
    resp = call(
        live, ops["rm"], "POST", "/api/v1/campaigns", json={"release_id": rid, "waves": [100]}
    )
    assert resp.status_code == 400 and "two security approvals" in resp.text
    with ctx.db.read() as s:
        assert s.execute(select(Campaign)).first() is None  # nothing was planned


def test_a_completed_campaign_reoffers_to_stragglers_until_the_release_is_withdrawn(
    live: str, ctx: AppContext, ops: dict[str, str], tmp_path: Path
) -> None:
    from fleetward.ota import service as releases

    ids = add_devices(ctx, 40)
    fleet = Fleet(live, ctx, tmp_path, ids)
    rid = deploy(live, ops, "1.1.0", b"good build")
    with ctx.db.session() as s:
        cid = campaigns.create_campaign(
            s, rm(ctx), release_id=rid, waves=[50, 100],
            gate=GatePolicy(min_success_ratio=0.9),
        ).id  # fmt: skip
        first = campaigns.step(s, cid)
    review_passed(ctx, cid)
    fleet.run(first[1:], cid)  # one device of wave 1 is offline
    with ctx.db.session() as s:
        second = campaigns.step(s, cid)
    fleet.run(second[1:], cid)  # and one of wave 2
    with ctx.db.session() as s:
        assert campaigns.step(s, cid) == []
        c = campaigns.get_campaign(s, rm(ctx), cid)
        assert c.state == "completed"
        again = campaigns.pending_offers(s, c)
    assert {o.device_id for o in again} == {first[0].device_id, second[0].device_id}
    with ctx.db.session() as s:
        releases.withdraw_release(s, ctx.pki.keyring, rm(ctx), rid, reason="recalled")
    with ctx.db.read() as s:
        assert campaigns.pending_offers(s, campaigns.get_campaign(s, rm(ctx), cid)) == []


def test_offers_are_repeated_per_device_and_not_to_devices_at_work(
    live: str, ctx: AppContext, ops: dict[str, str]
) -> None:
    ids = add_devices(ctx, 10)
    rid = deploy(live, ops, "1.1.0", b"good build")
    quiet = dt.timedelta(seconds=30)
    t0 = utcnow()
    with ctx.db.session() as s:
        cid = campaigns.create_campaign(s, rm(ctx), release_id=rid, waves=[50, 100]).id
        first = campaigns.step(s, cid, now=t0)
        c = campaigns.get_campaign(s, rm(ctx), cid)
        # Just offered: nobody is offered again yet.
        assert campaigns.pending_offers(s, c, quiet_for=quiet, now=t0) == []
        # One device reports a step (it is downloading): it is left alone.
        busy = s.execute(
            select(Device.id).where(Device.device_id == first[0].device_id)
        ).scalar_one()
        later = t0 + dt.timedelta(seconds=20)
        campaigns.heard_from(s, cid, [busy], now=later)
        again = campaigns.pending_offers(s, c, quiet_for=quiet, now=t0 + dt.timedelta(seconds=31))
        assert {o.device_id for o in again} == {o.device_id for o in first[1:]}
        # Each device at most once per period.
        assert (
            campaigns.pending_offers(s, c, quiet_for=quiet, now=t0 + dt.timedelta(seconds=32)) == []
        )
        assert [o.device_id for o in campaigns.pending_offers(
            s, c, quiet_for=quiet, now=later + dt.timedelta(seconds=31)
        )] == [first[0].device_id]  # fmt: skip
    assert len(ids) == 10


def test_what_counts_is_the_version_a_device_runs(
    live: str, ctx: AppContext, ops: dict[str, str]
) -> None:
    ids = add_devices(ctx, 4)
    rid = deploy(live, ops, "1.1.0", b"good build")
    with ctx.db.session() as s:
        cid = campaigns.create_campaign(s, rm(ctx), release_id=rid, waves=[50, 100]).id
        first = [o.device_id for o in campaigns.step(s, cid)]
        # Its "committed" was lost; a repeated offer is refused as not newer,
        # with the release's version: the device has the release.
        assert campaigns.report(s, tenant_id=1, device_id=first[0], campaign_id=cid,
                                status="failed", version="1.1.0")  # fmt: skip
        assert campaigns.report(s, tenant_id=1, device_id=first[1], campaign_id=cid,
                                status="succeeded", version="1.0.0")  # fmt: skip
        statuses = dict(
            s.execute(
                select(Device.device_id, CampaignDevice.status)
                .join(CampaignDevice, CampaignDevice.device_pk == Device.id)
                .where(CampaignDevice.campaign_id == cid, Device.device_id.in_(first))
            ).all()
        )
    assert statuses == {first[0]: "succeeded", first[1]: "failed"}
    assert len(ids) == 4


def test_the_driver_keeps_room_for_results_under_a_backlog() -> None:
    import paho.mqtt.client as mqtt

    from fleetward.ota.driver import ReportInbox

    inbox = ReportInbox(maxsize=4)

    def message(step: str) -> mqtt.MQTTMessage:
        msg = mqtt.MQTTMessage(topic=b"fw/default/d1/state/ota")
        msg.payload = json.dumps({"campaign": 1, "step": step}).encode()
        return msg

    for step in ("received", "downloading", "staged"):
        inbox.on_message(None, None, message(step))
    assert inbox.queue.qsize() == 2 and inbox.dropped == 1
    inbox.on_message(None, None, message("committed"))
    inbox.on_message(None, None, message("fell-back"))
    assert [b["step"] for _, _, b in inbox.take()][-2:] == ["committed", "fell-back"]
