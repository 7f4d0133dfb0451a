"""The registry reads other domains use (identity's face), set-based."""

from __future__ import annotations

import datetime as dt

from fleetward import identity, telemetry, tenancy
from fleetward.runtime.context import AppContext
from tests.response.helpers import ADMIN, enroll


def test_lookups_leave_out_what_the_registry_does_not_know(ctx: AppContext) -> None:
    enroll(ctx, ["r1", "r2"], env="test", batch=None)
    with ctx.db.session() as s:
        other = tenancy.create_tenant(s, name="acme", actor="test")
        s.flush()
        other_id = other.id
    with ctx.db.read() as s:
        pks = identity.device_pks(s, tenant_id=1, device_ids=["r1", "r2", "nobody"])
        assert set(pks) == {"r1", "r2"}
        assert identity.device_ids(s, [*pks.values(), 10**9]) == {v: k for k, v in pks.items()}
        # Another tenant's device id names nothing, and neither does an unknown tenant.
        assert identity.device_pks(s, tenant_id=other_id, device_ids=["r1"]) == {}
        assert identity.find_devices(s, {(1, "r1"), (other_id, "r1")}) == {(1, "r1"): pks["r1"]}
        assert identity.resolve_devices(
            s, {("default", "r2"), ("acme", "r2"), ("nosuch", "r1")}
        ) == {("default", "r2"): (1, pks["r2"])}
        assert identity.device_named(s, tenant="default", device_id="r1") is not None
        assert identity.device_named(s, tenant="nosuch", device_id="r1") is None


def test_cohort_reads_follow_the_environment(ctx: AppContext) -> None:
    enroll(ctx, ["c1", "c2"], env="test", product="thermo")
    enroll(ctx, ["c3"], env="production", product="valve")
    with ctx.db.read() as s:
        in_test = identity.select_cohort(s, tenant_id=1, environment="test")
        assert [d for _, d, _, _ in in_test] == ["c1", "c2"]
        assert identity.select_cohort(s, tenant_id=1, environment="test", product="valve") == []
        assert [d for _, d, _, _ in identity.select_cohort(
            s, tenant_id=1, environment="production", device_id="c3"
        )] == ["c3"]  # fmt: skip
        assert identity.population(s, tenant_id=1, environment="test") == 2
        pks = [pk for pk, _, _, _ in in_test]
        assert identity.devices_outside(s, pks, environment="test") == []
        assert sorted(identity.devices_outside(s, pks, environment="production")) == ["c1", "c2"]
        assert len(identity.good_serials(s, pks)) == 2
        assert identity.certificate_environments(s, tenant_id=1, device_ids=["c1", "c3"]) == {
            "c1": {"test"},
            "c3": {"production"},
        }
        ca = identity.active_issuing_ca(s, tenant_id=1, environment="test")
        assert set(identity.held_serials(s, pks, ca_id=ca.id)) == set(pks)
        assert {
            pk for pk, _, _ in identity.active_devices(s, tenant_id=1, product="thermo")
        } == set(pks)


def test_online_devices_are_the_ones_heard_from_within_the_window(ctx: AppContext) -> None:
    enroll(ctx, ["o1", "o2"])
    now = dt.datetime.now(dt.UTC)
    with ctx.db.session() as s:
        pks = identity.device_pks(s, tenant_id=ADMIN.tenant_id, device_ids=["o1", "o2"])
        stored = telemetry.record_events(
            s,
            [
                {"tenant_id": 1, "device_pk": pks["o1"], "type": "metric", "at": now,
                 "count": 1, "fields": "{}"},
                {"tenant_id": 1, "device_pk": pks["o2"], "type": "metric",
                 "at": now - 2 * telemetry.ONLINE_WINDOW, "count": 1, "fields": "{}"},
            ],
        )  # fmt: skip
        assert stored == 2
    with ctx.db.read() as s:
        assert telemetry.online_devices(s, list(pks.values()), now) == {pks["o1"]}
        assert set(telemetry.last_seen(s, tenant_id=1)) == set(pks.values())
