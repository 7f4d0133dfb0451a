"""The periodic review report: content, ordering, JSON round trip, Markdown safety."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from fleetward.errors import InvalidInputError
from fleetward.vulns import review as review_module
from fleetward.vulns.review import CraCaseLine, ReviewData, ReviewFinding, render

UTC = dt.UTC
START = dt.datetime(2026, 11, 30, tzinfo=UTC)
END = dt.datetime(2026, 12, 7, tzinfo=UTC)


def _f(id_: str, level: str, rank: float, **over: object) -> ReviewFinding:
    base: dict[str, object] = {
        "id": id_,
        "advisory": f"CVE-2026-{id_[-1]}",
        "component": "openssl 3.0.11",
        "release": "gateway 2.4.0",
        "level": level,
        "rank": rank,
        "due": dt.datetime(2026, 12, 22, 9, 30, tzinfo=UTC),
        "devices": 10,
        "production_devices": 8,
    }
    base.update(over)
    return ReviewFinding(**base)  # type: ignore[arg-type]


def _data() -> ReviewData:
    return ReviewData(
        tenant="acme",
        period_start=START,
        period_end=END,
        new=[
            _f("f-2", "P2", 2300.0),
            _f("f-1", "P1", 3700.0, note="KEV listed"),
            _f("f-3", "P2", 2300.0, component="busybox | 1.36", devices=4, production_devices=0),
        ],
        overdue=[_f("f-4", "P3", 1200.0, due=dt.datetime(2026, 12, 1, tzinfo=UTC))],
        fixed=[
            _f("f-5", "P1", 3500.0, due=None, fixed_at=dt.datetime(2026, 12, 3, 14, tzinfo=UTC))
        ],
        open_by_priority={"P1": 1, "P2": 2, "P3": 5},
        exposure_now={"production": 150, "test": 4},
        exposure_last={"production": 180, "drill": 2},
        cra_cases=[
            CraCaseLine(id="cra-2", advisories=("CVE-2026-9",), aware_at=START),
            CraCaseLine(
                id="cra-1",
                advisories=("CVE-2026-1", "GHSA-xxxx"),
                aware_at=dt.datetime(2026, 12, 6, 8, tzinfo=UTC),
                next_kind="notification",
                next_due=dt.datetime(2026, 12, 9, 8, tzinfo=UTC),
                submitted=("early-warning",),
            ),
        ],
    )


def test_json_document() -> None:
    _, doc = render(_data())
    assert json.loads(json.dumps(doc)) == doc
    assert doc["period"] == {
        "start": "2026-11-30T00:00:00+00:00",
        "end": "2026-12-07T00:00:00+00:00",
    }
    assert doc["summary"] == {"new": 3, "overdue": 1, "fixed": 1, "open": 8}
    assert doc["open_by_priority"] == {"P1": 1, "P2": 2, "P3": 5, "P4": 0}
    # Priority rank first, id to break ties.
    assert [f["id"] for f in doc["new"]] == ["f-1", "f-2", "f-3"]
    assert doc["exposure"] == {
        "by_environment": {
            "drill": {"now": 0, "last_review": 2, "change": -2},
            "production": {"now": 150, "last_review": 180, "change": -30},
            "test": {"now": 4, "last_review": 0, "change": 4},
        },
        "total": {"now": 154, "last_review": 182, "change": -28},
    }
    assert doc["fixed"][0]["fixed_at"] == "2026-12-03T14:00:00+00:00"
    assert doc["fixed"][0]["due"] is None
    # Cases by next deadline; one with every report submitted comes last.
    assert [c["id"] for c in doc["cra_cases"]] == ["cra-1", "cra-2"]
    assert doc["cra_cases"][0] == {
        "id": "cra-1",
        "advisories": ["CVE-2026-1", "GHSA-xxxx"],
        "aware_at": "2026-12-06T08:00:00+00:00",
        "next_report": "notification",
        "next_due": "2026-12-09T08:00:00+00:00",
        "submitted": ["early-warning"],
    }


def test_markdown_report() -> None:
    md, _ = render(_data())
    assert md.startswith(
        "# Vulnerability review: acme\n"
        "\n"
        "Period 2026-11-30T00:00:00+00:00 to 2026-12-07T00:00:00+00:00.\n"
        "\n"
        "- New findings: 3\n"
        "- Overdue: 1\n"
        "- Fixed since the last review: 1\n"
        "- Open: 8 (P1 1, P2 2, P3 5, P4 0)\n"
    )
    assert (
        "| Environment | Now | Last review | Change |\n"
        "|---|---|---|---|\n"
        "| drill | 0 | 2 | -2 |\n"
        "| production | 150 | 180 | -30 |\n"
        "| test | 4 | 0 | +4 |\n"
        "| total | 154 | 182 | -28 |\n"
    ) in md
    # A pipe in a component name cannot open a new table cell.
    assert (
        "| P2 | CVE-2026-3 | busybox \\| 1.36 | gateway 2.4.0 | 4 (0) |"
        " 2026-12-22T09:30:00+00:00 |  |"
    ) in md
    assert "| cra-1 | CVE-2026-1, GHSA-xxxx | 2026-12-06T08:00:00+00:00 | notification |" in md
    assert "| cra-2 | CVE-2026-9 | 2026-11-30T00:00:00+00:00 | all submitted |  |  |" in md
    lines = md.splitlines()
    assert lines.index("## New (3)") < lines.index("## Overdue (1)") < lines.index("## Fixed (1)")


def test_empty_review() -> None:
    md, doc = render(ReviewData(tenant="t", period_start=START, period_end=END))
    assert doc["summary"] == {"new": 0, "overdue": 0, "fixed": 0, "open": 0}
    assert "## New (0)\n\nNone." in md
    assert "## Open CRA cases (0)\n\nNone." in md


def test_long_sections_are_cut_in_markdown_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(review_module, "MAX_MARKDOWN_ROWS", 2)
    md, doc = render(_data())
    assert len(doc["new"]) == 3
    assert "… and 1 more (see the JSON report)." in md


@pytest.mark.parametrize(
    "change",
    [
        {"period_end": START - dt.timedelta(days=1)},
        {"period_start": dt.datetime(2026, 11, 30)},
        {"open_by_priority": {"P0": 1}},
        {"exposure_now": {"production": -1}},
    ],
)
def test_bad_review_data_is_refused(change: dict[str, object]) -> None:
    data = _data()
    for key, value in change.items():
        setattr(data, key, value)
    with pytest.raises(InvalidInputError):
        render(data)


def test_findings_and_cases_validate_themselves() -> None:
    with pytest.raises(ValueError):
        _f("f-9", "P5", 1.0)
    with pytest.raises(ValueError):
        _f("f-9", "P1", 1.0, due=dt.datetime(2026, 12, 1))
    with pytest.raises(ValueError):
        CraCaseLine(id="c", advisories=(), aware_at=START, next_kind="final")
