"""Prioritisation of findings: the numbered rules, due dates, reasons and order."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetward.errors import InvalidInputError
from fleetward.vulns.priority import (
    Priority,
    PriorityPolicy,
    Signals,
    order,
    overdue,
    prioritise,
)
from fleetward.vulns.records import SEVERITIES

SEEN = dt.datetime(2026, 12, 7, 9, 30, tzinfo=dt.UTC)
POLICY = PriorityPolicy()


def _p(signals: Signals, policy: PriorityPolicy = POLICY) -> Priority:
    return prioritise(signals, policy=policy, first_seen=SEEN)


def test_kev_on_deployed_devices_is_p1_due_at_the_cisa_date() -> None:
    p = _p(
        Signals(
            severity="medium",
            cvss_score=6.5,
            kev_added=dt.date(2026, 12, 1),
            kev_due=dt.date(2026, 12, 15),
            epss=0.97,
            percentile=0.995,
            devices=212,
            production_devices=200,
        )
    )
    assert p.level == "P1"
    # CISA's date (end of the day, UTC) is earlier than 15 days after first seen.
    assert p.due == dt.datetime(2026, 12, 15, 23, 59, 59, tzinfo=dt.UTC)
    assert p.reasons == (
        "KEV listed since 2026-12-01, CISA due 2026-12-15",
        "EPSS 0.97 (99th percentile) (likely exploitation)",
        "CVSS 6.5 medium",
        "212 devices run it, 200 in production",
        "rule 1: known exploitation on deployed devices: P1",
        "due 2026-12-15: the CISA KEV due date",
    )


def test_a_later_kev_due_date_does_not_extend_the_policy_due() -> None:
    p = _p(
        Signals(
            severity="high",
            kev_added=dt.date(2026, 12, 1),
            kev_due=dt.date(2027, 3, 1),
            devices=1,
            production_devices=1,
        )
    )
    assert p.level == "P1"
    assert p.due == SEEN + dt.timedelta(days=15)
    assert p.reasons[-1] == "due 2026-12-22: 15 days for P1"


def test_a_kev_due_date_already_past_at_first_sight_is_not_used() -> None:
    p = _p(
        Signals(
            severity="critical",
            cvss_score=9.8,
            kev_added=dt.date(2022, 1, 10),
            kev_due=dt.date(2022, 1, 24),
            devices=3,
        )
    )
    assert p.level == "P1"
    assert p.due == SEEN + dt.timedelta(days=15)
    assert p.reasons[-1] == (
        "due 2026-12-22: 15 days for P1 (the CISA due date 2022-01-24 passed before the finding"
        " was seen)"
    )
    assert "3 devices run it, none in production" in p.reasons


def test_operator_marked_exploited_is_p1_with_critical_days() -> None:
    p = _p(Signals(severity="low", exploited_by_operator=True, devices=1, production_devices=0))
    assert p.level == "P1"
    assert p.due == SEEN + dt.timedelta(days=15)
    assert "an operator marked it exploited" in p.reasons
    assert "1 device runs it, none in production" in p.reasons


def test_critical_in_production_is_p1_elsewhere_p2() -> None:
    prod = _p(Signals(severity="critical", cvss_score=9.8, devices=5, production_devices=2))
    test_only = _p(Signals(severity="critical", cvss_score=9.8, devices=5, production_devices=0))
    assert (prod.level, test_only.level) == ("P1", "P2")
    assert test_only.due == SEEN + dt.timedelta(days=30)
    assert test_only.reasons[-2] == "rule 4: no production device runs it: P2"


def test_high_with_likely_exploitation_in_production_is_p1() -> None:
    p = _p(Signals(severity="high", cvss_score=8.1, epss=0.2, devices=9, production_devices=9))
    assert p.level == "P1"
    assert p.reasons[-3:-1] == (
        "rule 2: high severity: P2",
        "rule 3: likely exploitation raises it to P1",
    )
    # The percentile alone also counts as likely exploitation.
    q = _p(Signals(severity="high", percentile=0.96, devices=9, production_devices=9))
    assert q.level == "P1"
    assert "EPSS 96th percentile (likely exploitation)" in q.reasons


def test_not_deployed_is_at_most_p3_and_exploited_stays_visible() -> None:
    crit = _p(Signals(severity="critical", cvss_score=10.0, epss=0.9))
    assert crit.level == "P3"
    assert "no device runs it" in crit.reasons
    assert crit.reasons[-2] == "rule 5: not deployed: at most P3"
    kev = _p(Signals(severity="low", kev_added=dt.date(2026, 1, 1), kev_due=dt.date(2026, 12, 9)))
    assert kev.level == "P3"
    # Not deployed: CISA's date does not apply, the P3 days do.
    assert kev.due == SEEN + dt.timedelta(days=90)
    low = _p(Signals(severity="low"))
    assert low.level == "P4"


def test_unknown_severity_uses_the_cvss_band_or_counts_as_medium() -> None:
    assert (
        _p(Signals(severity="unknown", cvss_score=9.1, devices=1, production_devices=1)).level
        == "P1"
    )
    p = _p(Signals(severity="unknown", devices=1, production_devices=1))
    assert p.level == "P3"
    assert "severity unknown, no CVSS score" in p.reasons


def test_policy_days_are_configurable() -> None:
    policy = PriorityPolicy.from_mapping({"critical_days": 7, "medium_days": 60})
    p = prioritise(
        Signals(severity="critical", devices=1, production_devices=1),
        policy=policy,
        first_seen=SEEN,
    )
    assert p.due == SEEN + dt.timedelta(days=7)
    assert policy.days("P3") == 60
    assert policy.days("P4") == 180


@pytest.mark.parametrize(
    "data",
    [
        {"critical_days": 0},
        {"low_days": 3651},
        {"high_days": "30"},
        {"high_days": True},
        {"critical_days": 40},  # more than high: days must grow with the level
        {"epss_high": 1.5},
        {"epss_percentile_high": -0.1},
        {"critical": 15},  # unknown key
    ],
)
def test_bad_policies_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(InvalidInputError):
        PriorityPolicy.from_mapping(data)


def test_from_mapping_refuses_a_non_mapping() -> None:
    with pytest.raises(InvalidInputError):
        PriorityPolicy.from_mapping([("critical_days", 3)])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"severity": "severe"}, ValueError),
        ({"severity": "high", "cvss_score": 10.5}, ValueError),
        ({"severity": "high", "epss": 1.2}, ValueError),
        ({"severity": "high", "devices": 1, "production_devices": 2}, ValueError),
        ({"severity": "high", "devices": -1}, ValueError),
        ({"severity": "high", "devices": 1.5}, TypeError),
        ({"severity": "high", "kev_due": dt.date(2026, 1, 1)}, ValueError),
    ],
)
def test_bad_signals_are_refused(kwargs: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        Signals(**kwargs)  # type: ignore[arg-type]


def test_first_seen_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        prioritise(Signals(severity="low"), policy=POLICY, first_seen=dt.datetime(2026, 1, 1))


def test_first_seen_in_another_zone_gives_a_utc_due() -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    p = prioritise(
        Signals(severity="critical", devices=1, production_devices=1),
        policy=POLICY,
        first_seen=dt.datetime(2026, 12, 7, 10, 30, tzinfo=cet),
    )
    assert p.due == SEEN + dt.timedelta(days=15)
    assert p.due.utcoffset() == dt.timedelta(0)


def test_overdue_is_strictly_after_the_due_instant() -> None:
    due = dt.datetime(2026, 12, 22, 23, 59, 59, tzinfo=dt.UTC)
    assert not overdue(due, due)
    assert overdue(due, due + dt.timedelta(seconds=1))
    assert not overdue(due, due - dt.timedelta(days=1))
    with pytest.raises(ValueError):
        overdue(due, dt.datetime(2026, 12, 23))


def test_order_of_eight_findings() -> None:
    findings = {
        "f-kev-prod": Signals(
            severity="high",
            cvss_score=7.5,
            kev_added=dt.date(2026, 11, 1),
            kev_due=dt.date(2026, 11, 22),
            devices=100,
            production_devices=90,
        ),
        "f-crit-prod": Signals(
            severity="critical", cvss_score=9.8, devices=50, production_devices=50
        ),
        "f-crit-prod-epss": Signals(
            severity="critical", cvss_score=9.8, epss=0.5, devices=50, production_devices=50
        ),
        "f-high-epss-test": Signals(severity="high", cvss_score=8.8, epss=0.3, devices=4),
        "f-high-prod": Signals(severity="high", cvss_score=7.2, devices=10, production_devices=10),
        "f-medium-prod": Signals(
            severity="medium", cvss_score=5.3, devices=300, production_devices=3
        ),
        "f-crit-nowhere": Signals(severity="critical", cvss_score=9.9),
        "f-low-prod": Signals(
            severity="low", cvss_score=3.1, devices=1000, production_devices=1000
        ),
    }
    prios = {k: _p(s) for k, s in findings.items()}
    ranked = order(reversed(list(prios.items())))
    assert [(k, p.level) for k, p in ranked] == [
        ("f-kev-prod", "P1"),  # exploitation outranks severity
        ("f-crit-prod-epss", "P1"),  # same CVSS, higher EPSS
        ("f-crit-prod", "P1"),
        ("f-high-epss-test", "P2"),  # P1 by EPSS, one lower: only test devices
        ("f-high-prod", "P2"),
        ("f-crit-nowhere", "P3"),  # not deployed: held at P3, ahead of a medium by CVSS
        ("f-medium-prod", "P3"),
        ("f-low-prod", "P4"),
    ]
    # A KEV entry whose CISA date had passed when seen keeps the policy due.
    assert prios["f-kev-prod"].due == SEEN + dt.timedelta(days=15)
    assert order(prios.items()) == ranked


def test_equal_ranks_order_by_due_then_id() -> None:
    a = Priority(level="P2", rank=2000.0, due=SEEN, reasons=())
    b = Priority(level="P2", rank=2000.0, due=SEEN - dt.timedelta(days=1), reasons=())
    assert [k for k, _ in order([("z", a), ("y", a), ("x", b)])] == ["x", "y", "z"]


@st.composite
def _signals(draw: st.DrawFn) -> Signals:
    devices = draw(st.integers(0, 5000))
    kev = draw(st.booleans())
    return Signals(
        severity=draw(st.sampled_from(SEVERITIES)),
        cvss_score=draw(st.none() | st.floats(0.0, 10.0)),
        kev_added=dt.date(2026, 11, 1) if kev else None,
        kev_due=draw(st.none() | st.dates(dt.date(2026, 11, 1), dt.date(2027, 6, 1)))
        if kev
        else None,
        epss=draw(st.none() | st.floats(0.0, 1.0)),
        percentile=draw(st.none() | st.floats(0.0, 1.0)),
        devices=devices,
        production_devices=draw(st.integers(0, devices)),
        exploited_by_operator=draw(st.booleans()),
    )


@given(a=_signals(), b=_signals())
def test_levels_bands_and_dues_hold_for_any_signals(a: Signals, b: Signals) -> None:
    pa, pb = _p(a), _p(b)
    # A more urgent level always sorts first.
    if pa.level < pb.level:
        assert pa.rank > pb.rank
    # The due date is never later than the level's days, never before first seen.
    assert SEEN <= pa.due <= SEEN + dt.timedelta(days=POLICY.days(pa.level))
    if a.devices == 0:
        assert pa.level in ("P3", "P4")
    if a.exploited and a.devices > 0:
        assert pa.level == "P1"
    assert prioritise(a, policy=POLICY, first_seen=SEEN) == pa  # deterministic
