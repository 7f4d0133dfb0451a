"""Campaign planning and health gates (pure)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetward.errors import InvalidInputError
from fleetward.ota.rollout import GatePolicy, WaveCounts, evaluate_wave, plan_waves, waves_from


def test_plan_follows_the_percentages_and_is_reproducible() -> None:
    ids = [f"dev-{i}" for i in range(10_000)]
    plan = plan_waves("seed", ids, (1, 10, 50, 100))
    counts = Counter(plan)
    assert [counts[w] for w in range(4)] == [100, 900, 4000, 5000]
    assert plan_waves("seed", list(reversed(ids)), (1, 10, 50, 100)) == list(reversed(plan))
    assert plan_waves("other", ids, (1, 10, 50, 100)) != plan


@given(
    n=st.integers(1, 300), waves=st.sampled_from([(1.0, 10.0, 50.0, 100.0), (100.0,), (5.0, 100.0)])
)
def test_every_wave_gets_a_device_while_there_are_devices(n: int, waves: tuple[float, ...]) -> None:
    plan = plan_waves("s", [str(i) for i in range(n)], waves)
    counts = Counter(plan)
    assert sum(counts.values()) == n
    expected_nonempty = min(n, len(waves))
    assert all(counts[w] >= 1 for w in range(expected_nonempty))


def test_waves() -> None:
    assert waves_from(None) == (1.0, 10.0, 50.0, 100.0)
    assert waves_from(exponential=4) == (12.5, 25.0, 50.0, 100.0)
    for bad in ([10, 5, 100], [0, 100], [50], [10, 120]):
        with pytest.raises(InvalidInputError):
            waves_from(bad)


def test_gate() -> None:
    policy = GatePolicy(min_success_ratio=0.9, max_failure_ratio=0.1, min_sample=3)
    assert evaluate_wave(WaveCounts(10, 2, 0), elapsed_seconds=1, policy=policy)[0] == "wait"
    # Two failures out of two reports: below the minimum sample, keep waiting.
    assert evaluate_wave(WaveCounts(10, 0, 2), elapsed_seconds=1, policy=policy)[0] == "wait"
    verdict, why = evaluate_wave(WaveCounts(10, 1, 2), elapsed_seconds=1, policy=policy)
    assert verdict == "fail" and "2 of 3" in why
    assert evaluate_wave(WaveCounts(10, 9, 0), elapsed_seconds=1, policy=policy)[0] == "pass"
    verdict, why = evaluate_wave(WaveCounts(10, 5, 0), elapsed_seconds=7200, policy=policy)
    assert verdict == "fail" and "time limit" in why
    with pytest.raises(InvalidInputError):
        GatePolicy(min_sample=0)
