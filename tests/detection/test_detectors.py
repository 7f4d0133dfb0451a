"""Detectors alone (pure)."""

from __future__ import annotations

import random

from fleetward.detection.detectors import (
    DeviceInfo,
    EventView,
    authz_failures,
    boot_integrity,
    cohort_boot_failures,
    firmware_drift,
)


def verdict(i: int, pk: int, result: str, failed: list[str] | None = None) -> EventView:
    return EventView(
        id=i,
        tenant_id=1,
        device_pk=pk,
        type="attestation.verdict",
        count=1,
        fields={"verdict": result, "failed": failed or [], "swversion": "1.0.0"},
    )


def fleet(n: int = 1000) -> dict[int, DeviceInfo]:
    """Five batches of 200 from two factories, two regions."""
    return {
        pk: DeviceInfo(
            pk=pk,
            device_id=f"d{pk:04d}",
            product="thermo",
            factory=1 if pk < 600 else 2,
            batch=pk // 200 + 1,
            labels={"region": "eu" if pk % 2 else "us"},
        )
        for pk in range(n)
    }


def test_five_percent_of_one_batch_is_one_cohort_alert_naming_the_batch() -> None:
    devices = fleet()
    rng = random.Random(4)
    bad = set(rng.sample(range(400, 600), 10))  # 5% of batch 3 (factory 1)
    latest = {
        pk: verdict(pk, pk, "fail" if pk in bad else "pass", ["measurements.bootloader"])
        for pk in devices
    }
    findings = cohort_boot_failures(latest, devices)
    assert len(findings) == 1
    [f] = findings
    assert f.key == "batch:3" and f.kind == "boot-integrity-cohort"
    assert f.evidence["failing"] == sorted(devices[p].device_id for p in bad)
    assert "10 of 200" in f.summary
    # Its devices are not reported one by one as well.
    covered = {pk for pk in f.devices if pk in bad}
    assert boot_integrity(latest.values(), devices, covered=covered) == []


def test_scattered_failures_are_individual_alerts_not_a_pattern() -> None:
    devices = fleet()
    latest = {pk: verdict(pk, pk, "fail" if pk in (5, 505) else "pass") for pk in devices}
    assert cohort_boot_failures(latest, devices) == []
    found = boot_integrity(latest.values(), devices)
    assert sorted(f.key for f in found) == ["device:d0005", "device:d0505"]
    assert all(f.severity == "high" for f in found)


def test_a_failing_fleet_wide_version_is_not_blamed_on_a_batch() -> None:
    devices = fleet()
    bad = set(random.Random(9).sample(range(1000), 100))
    latest = {pk: verdict(pk, pk, "fail" if pk in bad else "pass") for pk in devices}
    # 10% spread evenly: no cohort stands out from the rest.
    assert cohort_boot_failures(latest, devices) == []


def test_firmware_drift_and_authz_failures() -> None:
    devices = fleet(3)
    drift = firmware_drift(
        [
            EventView(
                1,
                1,
                2,
                "attestation.verdict",
                1,
                {"verdict": "unknown-firmware", "swversion": "6.6.6"},
            )
        ],
        devices,
    )
    assert [f.key for f in drift] == ["device:d0002"] and "6.6.6" in drift[0].summary
    window = [EventView(i, 1, 1, "authz.denied", 10, {}) for i in range(3)]
    [f] = authz_failures(window, {1: 1.0}, devices)  # 30 denials > max(20, 5 x 1)
    assert f.key == "device:d0001" and f.evidence["denials"] == 30
    assert authz_failures(window, {1: 10.0}, devices) == []  # its own baseline is noisy


def test_enrollment_silence_and_expiry_sweeps() -> None:
    import datetime as dt

    from fleetward.detection.detectors import (
        enrollment_anomalies,
        expiring_certificates,
        silent_devices,
    )

    rows = [
        {"factory_id": 1, "batch_id": 7, "accepted": 10, "refused": 40, "burst": False,
         "refused_by_category": {"outside-batch": 40}, "last_window": 5, "average_per_window": 5},
        {"factory_id": 1, "batch_id": 8, "accepted": 100, "refused": 2, "burst": True,
         "refused_by_category": {}, "last_window": 90, "average_per_window": 10.0},
        {"factory_id": 2, "batch_id": 9, "accepted": 100, "refused": 3, "burst": False,
         "refused_by_category": {}, "last_window": 1, "average_per_window": 2},
    ]  # fmt: skip
    found = enrollment_anomalies(1, rows)
    assert [f.key for f in found] == ["factory:1:batch:7", "factory:1:batch:8"]
    assert "40 refused" in found[0].summary and "burst" in found[1].summary
    now = dt.datetime(2026, 11, 25, tzinfo=dt.UTC)
    devices = fleet(3)
    silent = silent_devices(
        1,
        {0: now - dt.timedelta(days=2), 1: now},
        devices,
        now=now,
        max_silence=dt.timedelta(days=1),
    )
    assert [f.key for f in silent] == ["device:d0000"]
    expiring = expiring_certificates(
        1, {0: now + dt.timedelta(days=3), 1: now + dt.timedelta(days=80)}, devices,
        now=now, within=dt.timedelta(days=14),
    )  # fmt: skip
    assert [f.key for f in expiring] == ["device:d0000"]


def test_message_floods() -> None:
    from fleetward.detection.detectors import message_floods

    devices = fleet(2)
    events = [
        EventView(1, 1, 0, "telemetry.dropped", 980, {}),
        EventView(2, 1, 1, "telemetry.dropped", 5, {}),
    ]
    [f] = message_floods(events, devices)
    assert f.key == "device:d0000" and f.evidence == {"dropped": 980}
