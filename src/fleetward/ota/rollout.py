"""Campaign planning and health gates (pure).

**Planning** orders the cohort by a keyed hash of each device id (the key is
the campaign's seed), so waves are a fair, reproducible sample and a device's
wave never depends on the order of the registry. Wave ``i`` holds the devices
whose rank is below ``ceil(n * cumulative_percent[i] / 100)`` and not in an
earlier wave; every non-empty percentage gets at least one device.

**The health gate** of a wave decides ``pass``, ``fail`` or ``wait`` from
the devices' reports: an early ``fail`` once the failure ratio crosses its
limit with a minimum sample (so one bad wave halts the campaign before the
next starts), ``pass`` once the success ratio is reached, ``fail`` past the
time limit.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from fleetward.errors import InvalidInputError

__all__ = ["DEFAULT_WAVES", "GatePolicy", "WaveCounts", "evaluate_wave", "plan_waves", "waves_from"]

DEFAULT_WAVES = (1.0, 10.0, 50.0, 100.0)
MAX_WAVES = 20


def waves_from(
    percentages: Sequence[float] | None = None, *, exponential: int | None = None
) -> tuple[float, ...]:
    """Cumulative wave percentages: explicit, or ``exponential`` waves doubling up to 100.

    Raises:
        InvalidInputError: not strictly increasing, outside (0, 100], or not ending at 100.
    """
    if exponential is not None:
        if not 1 <= exponential <= MAX_WAVES:
            raise InvalidInputError(f"an exponential rollout has 1-{MAX_WAVES} waves")
        waves = tuple(100.0 / 2 ** (exponential - 1 - i) for i in range(exponential))
    else:
        waves = tuple(float(p) for p in (percentages or DEFAULT_WAVES))
    if not waves or len(waves) > MAX_WAVES:
        raise InvalidInputError(f"a campaign has 1-{MAX_WAVES} waves")
    if any(not 0 < p <= 100 for p in waves) or any(b <= a for a, b in itertools.pairwise(waves)):
        raise InvalidInputError("wave percentages must strictly increase within (0, 100]")
    if waves[-1] != 100.0:
        raise InvalidInputError("the last wave must reach 100%")
    return waves


def _rank_key(seed: str, device_id: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{device_id}".encode()).digest()[:12]


def plan_waves(seed: str, device_ids: Sequence[str], waves: Sequence[float]) -> list[int]:
    """The wave index of each device (same order as ``device_ids``)."""
    n = len(device_ids)
    order = sorted(range(n), key=lambda i: _rank_key(seed, device_ids[i]))
    bounds = []
    previous = 0
    for pct in waves:
        bound = max(previous + 1, math.ceil(n * pct / 100)) if n else 0
        bound = min(bound, n)
        bounds.append(bound)
        previous = bound
    result = [0] * n
    wave = 0
    for rank, index in enumerate(order):
        while rank >= bounds[wave]:
            wave += 1
        result[index] = wave
    return result


@dataclass(frozen=True)
class GatePolicy:
    """When a wave may be followed by the next."""

    min_success_ratio: float = 0.95
    max_failure_ratio: float = 0.05
    min_sample: int = 1  # reports needed before the failure ratio can halt
    time_limit_seconds: float = 3600.0
    # A device counts as a success only once its boot attestation passes on
    # the new version (a fail verdict counts as a failure).
    require_attestation: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_success_ratio <= 1 or not 0 <= self.max_failure_ratio <= 1:
            raise InvalidInputError("gate ratios are between 0 and 1")
        if self.min_sample < 1 or self.time_limit_seconds <= 0:
            raise InvalidInputError(
                "the gate needs a minimum sample >= 1 and a positive time limit"
            )


@dataclass(frozen=True)
class WaveCounts:
    """Reports of one wave's devices."""

    size: int
    succeeded: int
    failed: int

    @property
    def reported(self) -> int:
        """Devices that finished either way."""
        return self.succeeded + self.failed


def evaluate_wave(
    counts: WaveCounts, *, elapsed_seconds: float, policy: GatePolicy
) -> tuple[Literal["pass", "fail", "wait"], str]:
    """Decide the wave's gate, with the reason."""
    if counts.size == 0:
        return "pass", "empty wave"
    if (
        counts.reported >= policy.min_sample
        and counts.failed / counts.reported > policy.max_failure_ratio
    ):
        return "fail", (
            f"{counts.failed} of {counts.reported} devices failed "
            f"(limit {policy.max_failure_ratio:.0%})"
        )
    if counts.succeeded / counts.size >= policy.min_success_ratio:
        return "pass", f"{counts.succeeded} of {counts.size} devices succeeded"
    if elapsed_seconds > policy.time_limit_seconds:
        return "fail", (
            f"time limit: {counts.succeeded} of {counts.size} succeeded within "
            f"{policy.time_limit_seconds:.0f} s"
        )
    return "wait", f"{counts.reported} of {counts.size} devices reported"
