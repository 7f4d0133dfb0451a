"""What a simulated fleet is: its size, its cohorts and its faults (pure).

:class:`FleetSpec` is an immutable, validated description. Everything that
follows from it is decided here without I/O, from the spec and its seed:
the device ids (:func:`device_ids`), which factory batch each device comes
from and which faults it carries (:func:`plan`), and the boot images every
device starts with (:func:`images`, :func:`reference_measurements`), so a
release with those measurements makes an untampered device attest ``pass``.
The same spec and seed always give the same fleet, in every process.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "MAX_DEVICES",
    "SIM_ENVIRONMENTS",
    "DevicePlan",
    "FleetSpec",
    "device_ids",
    "images",
    "plan",
    "reference_measurements",
    "tampered_bootloader",
]

# Simulated devices get real certificates from the environment's CA, so they
# never enroll in production (its devices are the real fleet).
SIM_ENVIRONMENTS = ("test", "drill")
MAX_DEVICES = 100_000  # a spec larger than this is a typo, not a drill
MAX_BATCHES = 1_000
MAX_SLOW_LINK_MS = 60_000
MIN_TELEMETRY_INTERVAL = 0.05  # seconds; the ingest rate limit is 20 readings/s per device
_ID_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
_LABEL = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class FleetSpec:
    """A simulated fleet.

    Attributes:
        devices: how many devices.
        prefix: device ids are ``<prefix>-00001`` and so on.
        tenant: the tenant the devices belong to.
        environment: ``drill`` (default) or ``test``; never ``production``.
        product: the product the devices are enrolled as.
        hardware: the hardware id OTA releases must name.
        initial_version: the firmware every device starts with.
        batches: spread the devices over this many factory batches (cohorts).
        labels: extra labels recorded for every device (the simulator's own).
        telemetry_interval: seconds between readings of one device.
        offline: fraction of devices that never connect until brought online.
        tampered: fraction whose bootloader is changed (attestation fails).
        slow_link_ms: delay added to each device's handling of messages and
            publishes.
        fail_health: fraction whose health check fails (updates fall back).
        seed: chooses the faulty devices and the telemetry values.
    """

    devices: int
    prefix: str = "sim"
    tenant: str = "default"
    environment: str = "drill"
    product: str = "sim-device"
    hardware: str = "sim-board"
    initial_version: str = "1.0.0"
    batches: int = 1
    labels: Mapping[str, str] = field(default_factory=dict)
    telemetry_interval: float = 10.0
    offline: float = 0.0
    tampered: float = 0.0
    slow_link_ms: int = 0
    fail_health: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("devices", "batches", "slow_link_ms", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int")
        for name in ("prefix", "tenant", "environment", "product", "hardware", "initial_version"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str")
        for name in ("telemetry_interval", "offline", "tampered", "fail_health"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number")
        if not isinstance(self.labels, Mapping):
            raise TypeError("labels must be a mapping")
        if self.environment == "production":
            raise ValueError("simulated devices never enroll in production")
        if self.environment not in SIM_ENVIRONMENTS:
            raise ValueError(
                f"unknown environment {self.environment!r}; one of {', '.join(SIM_ENVIRONMENTS)}"
            )
        if not 1 <= self.devices <= MAX_DEVICES:
            raise ValueError(f"devices must be between 1 and {MAX_DEVICES}")
        if not 1 <= self.batches <= min(MAX_BATCHES, self.devices):
            raise ValueError("batches must be between 1 and the number of devices")
        for name in ("prefix", "product", "hardware"):
            if not _ID_PART.match(getattr(self, name)):
                raise ValueError(f"{name} must be 1-32 letters, digits, '-' or '_'")
        for key, value in self.labels.items():
            if not (isinstance(key, str) and isinstance(value, str)):
                raise TypeError("labels must map str to str")
            if not (_LABEL.match(key) and _LABEL.match(value)):
                raise ValueError(f"label {key!r}={value!r}: use letters, digits, '_', '.', '-'")
        for name in ("offline", "tampered", "fail_health"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a fraction between 0 and 1")
        if not 0 <= self.slow_link_ms <= MAX_SLOW_LINK_MS:
            raise ValueError(f"slow_link_ms must be between 0 and {MAX_SLOW_LINK_MS}")
        if self.telemetry_interval < MIN_TELEMETRY_INTERVAL:
            raise ValueError(f"telemetry_interval must be at least {MIN_TELEMETRY_INTERVAL} s")


@dataclass(frozen=True)
class DevicePlan:
    """One device as the spec decides it."""

    device_id: str
    batch: int  # 0-based index of its factory batch
    offline: bool
    tampered: bool
    fail_health: bool

    def labels(self, spec: FleetSpec) -> dict[str, str]:
        """The device's labels: the spec's, its batch and its faults."""
        out = {**spec.labels, "sim": spec.prefix, "batch": f"b{self.batch}"}
        faults = [n for n in ("offline", "tampered", "fail_health") if getattr(self, n)]
        if faults:
            out["faults"] = ",".join(faults)
        return out


def device_ids(spec: FleetSpec) -> list[str]:
    """The fleet's device ids, in order."""
    width = max(5, len(str(spec.devices)))
    return [f"{spec.prefix}-{n:0{width}d}" for n in range(1, spec.devices + 1)]


def _chosen(rng: random.Random, count: int, fraction: float) -> set[int]:
    return set(rng.sample(range(count), round(count * fraction)))


def plan(spec: FleetSpec) -> list[DevicePlan]:
    """Every device's batch and faults, chosen from the seed.

    Batches are contiguous ranges of ids (a factory makes them in order).
    Each fault picks exactly ``round(devices * fraction)`` devices, drawn
    independently, so a device may carry several faults.
    """
    ids = device_ids(spec)
    rng = random.Random(spec.seed)  # noqa: S311 - reproducible fault choice, not secrets
    offline = _chosen(rng, len(ids), spec.offline)
    tampered = _chosen(rng, len(ids), spec.tampered)
    unhealthy = _chosen(rng, len(ids), spec.fail_health)
    per_batch = -(-len(ids) // spec.batches)
    return [
        DevicePlan(
            device_id=d,
            batch=i // per_batch,
            offline=i in offline,
            tampered=i in tampered,
            fail_health=i in unhealthy,
        )
        for i, d in enumerate(ids)
    ]


def images(spec: FleetSpec) -> dict[str, bytes]:
    """The boot stages every device starts with (bootloader, kernel, application)."""
    return {
        "bootloader": f"fleetward-sim bootloader for {spec.hardware}\n".encode(),
        "kernel": f"fleetward-sim kernel for {spec.hardware}\n".encode(),
        "application": f"fleetward-sim {spec.product} {spec.initial_version}\n".encode(),
    }


def tampered_bootloader(spec: FleetSpec) -> bytes:
    """What a tampered device's bootloader holds instead."""
    return images(spec)["bootloader"] + b"implant\n"


def reference_measurements(spec: FleetSpec) -> dict[str, str]:
    """SHA-256 of each stage of an untampered device: upload a release of
    ``spec.initial_version`` with these and untampered devices attest ``pass``."""
    return {stage: hashlib.sha256(data).hexdigest() for stage, data in images(spec).items()}
