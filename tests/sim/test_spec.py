"""The fleet spec and the decisions made from it (no sockets)."""

from __future__ import annotations

import pytest

from fleetward.sim import FleetSpec, device_ids, plan, reference_measurements


def test_spec_validates() -> None:
    with pytest.raises(ValueError, match="never enroll in production"):
        FleetSpec(devices=3, environment="production")
    with pytest.raises(ValueError, match="unknown environment"):
        FleetSpec(devices=3, environment="staging")
    with pytest.raises(ValueError, match="fraction"):
        FleetSpec(devices=3, offline=1.5)
    with pytest.raises(ValueError, match="devices"):
        FleetSpec(devices=0)
    with pytest.raises(ValueError, match="batches"):
        FleetSpec(devices=3, batches=4)
    with pytest.raises(ValueError, match="prefix"):
        FleetSpec(devices=3, prefix="a/b")
    with pytest.raises(TypeError):
        FleetSpec(devices="3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label"):
        FleetSpec(devices=3, labels={"site": "a b"})
    assert FleetSpec(devices=3).environment == "drill"


def test_plan_is_deterministic_and_exact() -> None:
    spec = FleetSpec(devices=200, batches=4, offline=0.1, tampered=0.05, fail_health=0.2, seed=7)
    first, again = plan(spec), plan(spec)
    assert first == again
    assert [p.device_id for p in first] == device_ids(spec)
    assert device_ids(spec)[:2] == ["sim-00001", "sim-00002"]
    assert sum(p.offline for p in first) == 20
    assert sum(p.tampered for p in first) == 10
    assert sum(p.fail_health for p in first) == 40
    assert [sum(p.batch == b for p in first) for b in range(4)] == [50, 50, 50, 50]
    other = plan(FleetSpec(devices=200, batches=4, offline=0.1, seed=8))
    assert {p.device_id for p in first if p.offline} != {p.device_id for p in other if p.offline}
    labels = next(p for p in first if p.tampered).labels(spec)
    assert "tampered" in labels["faults"] and labels["sim"] == "sim"


def test_reference_measurements_follow_the_spec() -> None:
    a = reference_measurements(FleetSpec(devices=1))
    b = reference_measurements(FleetSpec(devices=1, initial_version="2.0.0"))
    assert a["bootloader"] == b["bootloader"] and a["application"] != b["application"]
