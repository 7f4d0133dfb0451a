"""The CRA Article 14 clock, its reminders and the report drafts."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest

from fleetward.errors import InvalidInputError, PayloadTooLargeError
from fleetward.vulns.cra import (
    TO_BE_COMPLETED,
    AffectedProduct,
    CaseFacts,
    alerts_due,
    deadlines,
    draft,
    next_deadline,
)

UTC = dt.UTC
BERLIN = ZoneInfo("Europe/Berlin")
AWARE = dt.datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def test_deadlines_from_awareness_and_fix() -> None:
    d = deadlines(aware_at=AWARE, fix_available_at=None)
    assert d.early_warning == dt.datetime(2026, 12, 8, 8, 0, tzinfo=UTC)
    assert d.notification == dt.datetime(2026, 12, 10, 8, 0, tzinfo=UTC)
    assert d.final is None
    fixed = deadlines(aware_at=AWARE, fix_available_at=dt.datetime(2026, 12, 20, 17, tzinfo=UTC))
    assert fixed.final == dt.datetime(2027, 1, 3, 17, 0, tzinfo=UTC)


def test_deadlines_across_month_and_year_ends() -> None:
    d = deadlines(
        aware_at=dt.datetime(2027, 2, 27, 23, 30, tzinfo=UTC),
        fix_available_at=dt.datetime(2027, 2, 20, tzinfo=UTC),
    )
    assert d.early_warning == dt.datetime(2027, 2, 28, 23, 30, tzinfo=UTC)
    assert d.notification == dt.datetime(2027, 3, 2, 23, 30, tzinfo=UTC)
    # A fix that predates the case: the final report is due 14 days after awareness.
    assert d.final == dt.datetime(2027, 3, 13, 23, 30, tzinfo=UTC)
    leap = deadlines(aware_at=dt.datetime(2028, 2, 28, 12, tzinfo=UTC), fix_available_at=None)
    assert leap.notification == dt.datetime(2028, 3, 2, 12, tzinfo=UTC)  # via 29 February
    nye = deadlines(aware_at=dt.datetime(2026, 12, 31, 1, tzinfo=UTC), fix_available_at=None)
    assert nye.early_warning == dt.datetime(2027, 1, 1, 1, tzinfo=UTC)


def test_deadlines_are_elapsed_hours_across_dst() -> None:
    # 2026-10-25 03:00 CEST becomes 02:00 CET in Berlin: the day has 25 hours.
    # Adding 24 h to a Berlin wall-clock time would land an hour late.
    aware = dt.datetime(2026, 10, 24, 12, 0, tzinfo=BERLIN)  # 10:00 UTC
    d = deadlines(aware_at=aware, fix_available_at=None)
    assert d.aware_at == dt.datetime(2026, 10, 24, 10, 0, tzinfo=UTC)
    assert d.early_warning == dt.datetime(2026, 10, 25, 10, 0, tzinfo=UTC)
    assert d.early_warning.astimezone(BERLIN).hour == 11  # not 12: the clock went back
    assert d.early_warning - d.aware_at == dt.timedelta(hours=24)
    # 2026-03-29 02:00 CET becomes 03:00 CEST: 12:00 CET is 11:00 UTC, and the
    # notification is due 72 elapsed hours later, 13:00 in Berlin summer time.
    spring = deadlines(
        aware_at=dt.datetime(2026, 3, 28, 12, 0, tzinfo=BERLIN), fix_available_at=None
    )
    assert spring.notification == dt.datetime(2026, 3, 31, 11, 0, tzinfo=UTC)
    assert spring.notification.astimezone(BERLIN).hour == 13


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError):
        deadlines(aware_at=dt.datetime(2026, 12, 7), fix_available_at=None)


def test_next_deadline_skips_submitted_reports() -> None:
    d = deadlines(aware_at=AWARE, fix_available_at=dt.datetime(2026, 12, 8, tzinfo=UTC))
    assert next_deadline(d, submitted=frozenset()) == ("early-warning", d.early_warning)
    assert next_deadline(d, submitted=frozenset({"early-warning"})) == (
        "notification",
        d.notification,
    )
    assert next_deadline(d, submitted=frozenset({"early-warning", "notification", "final"})) is None


def test_alerts_due_soon_then_overdue_each_once() -> None:
    d = deadlines(aware_at=AWARE, fix_available_at=None)
    none: frozenset[str] = frozenset()
    assert alerts_due(d, submitted=none, alerted=none, now=AWARE + dt.timedelta(hours=17)) == []
    at_lead = AWARE + dt.timedelta(hours=18)  # 6 h before the early warning
    assert alerts_due(d, submitted=none, alerted=none, now=at_lead) == [
        ("early-warning", "due-soon")
    ]
    sent = frozenset({"early-warning:due-soon"})
    assert alerts_due(d, submitted=none, alerted=sent, now=at_lead) == []
    at_deadline = AWARE + dt.timedelta(hours=24)
    assert alerts_due(d, submitted=none, alerted=sent, now=at_deadline) == []
    late = at_deadline + dt.timedelta(seconds=1)
    assert alerts_due(d, submitted=none, alerted=sent, now=late) == [("early-warning", "overdue")]
    # Submitted: no more reminders for it; the notification's lead is 12 h.
    done = frozenset({"early-warning"})
    assert alerts_due(d, submitted=done, alerted=none, now=AWARE + dt.timedelta(hours=60)) == [
        ("notification", "due-soon")
    ]
    # Never reminded and already late: only "overdue", no stale "due-soon".
    assert alerts_due(d, submitted=none, alerted=none, now=AWARE + dt.timedelta(hours=80)) == [
        ("early-warning", "overdue"),
        ("notification", "overdue"),
    ]


def test_final_report_alerts_need_a_fix_and_honour_custom_leads() -> None:
    fix = dt.datetime(2026, 12, 9, 8, tzinfo=UTC)
    d = deadlines(aware_at=AWARE, fix_available_at=fix)
    subm = frozenset({"early-warning", "notification"})
    now = fix + dt.timedelta(days=11)  # 3 days before the final deadline
    assert alerts_due(d, submitted=subm, alerted=frozenset(), now=now) == [("final", "due-soon")]
    short = {"final": dt.timedelta(days=1)}
    assert alerts_due(d, submitted=subm, alerted=frozenset(), now=now, lead=short) == []
    no_fix = deadlines(aware_at=AWARE, fix_available_at=None)
    assert alerts_due(no_fix, submitted=subm, alerted=frozenset(), now=now) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"submitted": frozenset({"warning"})},
        {"alerted": frozenset({"early-warning:late"})},
        {"lead": {"early": dt.timedelta(hours=1)}},
        {"lead": {"final": dt.timedelta(days=-1)}},
        {"lead": {"final": dt.timedelta(days=31)}},
    ],
)
def test_alerts_refuse_unknown_kinds_and_bad_leads(kwargs: dict[str, object]) -> None:
    d = deadlines(aware_at=AWARE, fix_available_at=None)
    args: dict[str, object] = {"submitted": frozenset(), "alerted": frozenset(), "now": AWARE}
    args.update(kwargs)
    with pytest.raises(InvalidInputError):
        alerts_due(d, **args)  # type: ignore[arg-type]


def _facts(**over: object) -> CaseFacts:
    base: dict[str, object] = {
        "manufacturer": "Acme Devices GmbH",
        "products": (AffectedProduct("Acme Gateway", ("2.3.0", "2.4.0")),),
        "advisory_ids": ("CVE-2026-1234",),
        "summary": "Heap overflow in the TLS handshake\nof openssl.",
        "aware_at": AWARE,
        "trigger": "kev",
        "severity": "critical",
        "cvss_score": 9.8,
        "cvss_vector": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
        "kev_added": dt.date(2026, 12, 6),
        "kev_ransomware": True,
        "devices_by_environment": {"production": 160, "test": 3},
        "devices_by_market": {"DE": 80, "fr": 20, "EL": 5, "EU": 20, "US": 40, "unlabelled": 3},
        "mitigations": ("quarantined 3 devices", "analysis state: exploitable"),
    }
    base.update(over)
    return CaseFacts(**base)  # type: ignore[arg-type]


NOW = AWARE + dt.timedelta(hours=2)


def test_early_warning_draft() -> None:
    d = draft("early-warning", _facts(), now=NOW)
    assert d.kind == "early-warning"
    assert json.loads(json.dumps(d.json)) == d.json
    assert d.json["legal_basis"] == "Regulation (EU) 2024/2847, Article 14(2)(a)"
    assert d.json["deadline"] == "2026-12-08T08:00:00+00:00"
    assert d.json["markets"] == {
        # "EU" without a state: the manufacturer completes the list.
        "member_states": ["DE", "FR", "GR", TO_BE_COMPLETED],
        "devices_by_member_state": {"DE": 80, "FR": 20, "GR": 5},
        "devices_labelled_eu_without_state": 20,
        "devices_in_other_or_unlabelled_markets": {"US": 40, "unlabelled": 3},
    }
    assert d.json["actively_exploited"]["evidence"] == [
        "listed in CISA's Known Exploited Vulnerabilities catalogue (2026-12-06)",
        "CISA KEV states known use in ransomware campaigns",
    ]
    assert d.json["suspected_unlawful_or_malicious_act"] == TO_BE_COMPLETED
    md = d.markdown
    assert md.startswith("# Early warning: actively exploited vulnerability\n")
    assert "- Deadline: 2026-12-08T08:00:00+00:00" in md
    assert "## Markets" in md
    assert "  - DE: 80" in md
    # Operator text cannot break the Markdown structure.
    assert "- Summary: Heap overflow in the TLS handshake of openssl." in md


def test_early_warning_without_eu_labels_leaves_states_to_the_manufacturer() -> None:
    d = draft("early-warning", _facts(devices_by_market={"US": 4}), now=NOW)
    assert d.json["markets"]["member_states"] == TO_BE_COMPLETED
    only_states = draft("early-warning", _facts(devices_by_market={"IT": 4}), now=NOW)
    assert only_states.json["markets"]["member_states"] == ["IT"]


def test_notification_draft_never_invents() -> None:
    d = draft(
        "notification", _facts(trigger="operator", kev_added=None, kev_ransomware=None), now=NOW
    )
    j = d.json
    assert j["deadline"] == "2026-12-10T08:00:00+00:00"
    assert j["nature_of_exploit"] == {
        "evidence": ["an operator marked the vulnerability exploited"],
        "general_nature": TO_BE_COMPLETED,
    }
    assert j["corrective_or_mitigating_measures_taken"] == [
        "quarantined 3 devices",
        "analysis state: exploitable",
    ]
    assert j["measures_users_can_take"] == [TO_BE_COMPLETED]
    assert j["sensitivity_of_information"] == TO_BE_COMPLETED
    assert j["general_product_information"]["devices_by_environment"] == {
        "production": 160,
        "test": 3,
    }
    assert j["products"] == [{"name": "Acme Gateway", "affected_versions": ["2.3.0", "2.4.0"]}]
    assert "## Sensitivity of information" in d.markdown


def test_final_report_draft_with_a_fix_and_campaign() -> None:
    facts = _facts(
        trigger="incident:inc-42",
        fix_release="2.4.1",
        fix_available_at=dt.datetime(2026, 12, 9, 8, tzinfo=UTC),
        campaign_state="running",
        campaign_updated=120,
        campaign_total=163,
        submitted={
            "early-warning": AWARE + dt.timedelta(hours=3),
            "notification": AWARE + dt.timedelta(hours=40),
        },
    )
    d = draft("final", facts, now=NOW)
    j = d.json
    assert j["deadline"] == "2026-12-23T08:00:00+00:00"
    assert j["description"] == {
        "summary": "Heap overflow in the TLS handshake\nof openssl.",
        "severity": "critical",
        "cvss_score": 9.8,
        "impact": TO_BE_COMPLETED,
    }
    assert j["malicious_actor"] == {
        "known_facts": ["CISA KEV states known use in ransomware campaigns"],
        "information": TO_BE_COMPLETED,
    }
    assert j["security_update"] == {
        "release": "2.4.1",
        "available_at": "2026-12-09T08:00:00+00:00",
        "measures": [
            "quarantined 3 devices",
            "analysis state: exploitable",
            "security update released: 2.4.1",
            "update campaign running: 120 of 163 devices updated",
        ],
    }
    assert j["previous_reports"] == {
        "early-warning": "2026-12-07T11:00:00+00:00",
        "notification": "2026-12-09T00:00:00+00:00",
    }
    assert json.loads(json.dumps(j)) == j
    assert "update campaign running: 120 of 163 devices updated" in d.markdown


def test_final_report_before_a_fix_has_no_deadline() -> None:
    d = draft("final", _facts(), now=NOW)
    assert d.json["deadline"] is None
    assert d.json["security_update"]["release"] == TO_BE_COMPLETED


def test_draft_refuses_an_unknown_kind() -> None:
    with pytest.raises(InvalidInputError):
        draft("interim", _facts(), now=NOW)


@pytest.mark.parametrize(
    ("over", "exc"),
    [
        ({"trigger": "rumour"}, ValueError),
        ({"trigger": "incident:"}, ValueError),
        ({"aware_at": dt.datetime(2026, 12, 7)}, ValueError),
        ({"summary": "x" * 8001}, PayloadTooLargeError),
        ({"advisory_ids": tuple(f"CVE-2026-{i}" for i in range(201))}, PayloadTooLargeError),
        ({"devices_by_market": {"L" * 300: 1}}, PayloadTooLargeError),
        ({"devices_by_market": {"DE": -1}}, ValueError),
        ({"campaign_updated": 5, "campaign_total": 4}, ValueError),
        ({"submitted": {"interim": AWARE}}, ValueError),
        ({"advisory_ids": ()}, ValueError),
    ],
)
def test_case_facts_are_validated(over: dict[str, object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        _facts(**over)


EXPECTED_NOTIFICATION = """\
# Vulnerability notification

Regulation (EU) 2024/2847, Article 14(2)(b).

- Manufacturer: Acme Devices GmbH
- Aware at: 2026-12-07T08:00:00+00:00
- Deadline: 2026-12-10T08:00:00+00:00
- Drafted at: 2026-12-07T10:00:00+00:00

## Vulnerability

- IDs:
  - CVE-2026-1234
- Summary: Heap overflow in the TLS handshake of openssl.
- Severity: critical
- CVSS score: 9.8
- CVSS vector: CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H

## Products

- Name: Acme Gateway
  - Affected versions:
    - 2.3.0
    - 2.4.0

## Previous reports

- none

## General product information

- Devices by environment:
  - Production: 160
  - Test: 3
- Markets:
  - Member States:
    - DE
  - Devices by Member State:
    - DE: 2
  - Devices labelled EU without a Member State: 0
  - Devices in other or unlabelled markets:
    - none

## Nature of exploit

- Evidence:
  - listed in CISA's Known Exploited Vulnerabilities catalogue (2026-12-06)
  - CISA KEV states known use in ransomware campaigns
- General nature: TO BE COMPLETED BY THE MANUFACTURER

## Corrective or mitigating measures taken

- security update released: 2.4.1

## Measures users can take

- install the security update 2.4.1
- TO BE COMPLETED BY THE MANUFACTURER

## Sensitivity of information

TO BE COMPLETED BY THE MANUFACTURER
"""


def test_notification_markdown_exactly() -> None:
    facts = _facts(devices_by_market={"DE": 2}, mitigations=(), fix_release="2.4.1")
    assert draft("notification", facts, now=NOW).markdown == EXPECTED_NOTIFICATION
