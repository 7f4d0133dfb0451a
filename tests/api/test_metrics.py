"""``GET /metrics``: the named series after an enrollment, a refusal and a
revocation; routes by template; workers read at scrape time; no tenant data
in any label."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from fleetward.api import access, metrics
from fleetward.api.app import create_app
from fleetward.runtime.context import AppContext
from fleetward.runtime.stack import Stack
from tests.helpers import csr_pem, new_key

pytestmark = pytest.mark.paused_workers

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def metered(ctx: AppContext, runtime: Stack) -> Iterator[TestClient]:
    """The API with request ids and metrics installed."""
    app = create_app(ctx, runtime=runtime)
    access.install(app)
    metrics.install(app)
    with TestClient(app) as c:
        yield c


def scrape(client: TestClient) -> tuple[str, Samples]:
    resp = client.get("/metrics")  # no token: see fleetward/api/metrics.py
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return resp.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_enrollments_refusals_and_revocations_are_counted(
    metered: TestClient, admin_token: str, runtime: Stack
) -> None:
    h = {"Authorization": f"Bearer {admin_token}"}
    _, before = scrape(metered)
    pem = csr_pem(new_key(), "metrics-dev-1").decode()
    ok = metered.post("/api/v1/devices/metrics-dev-1/certificates", json={"csr": pem}, headers=h)
    assert ok.status_code == 201, ok.text
    again = metered.post("/api/v1/devices/metrics-dev-1/certificates", json={"csr": pem}, headers=h)
    assert again.status_code == 409, again.text
    code = again.json()["type"].rsplit(":", 1)[1]
    revoked = metered.post(
        "/api/v1/devices/metrics-dev-1/revocation", json={"reason": "keyCompromise"}, headers=h
    )
    assert revoked.status_code == 200, revoked.text
    text, after = scrape(metered)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    enrollments = "fleetward_enrollments_total"
    assert delta(enrollments, result="accepted", category="none", route="rest") == 1
    # The refusal's category is provisioning's to name (category_of); any one.
    refused = [
        after[key] - before.get(key, 0.0)
        for key in after
        if key[0] == enrollments and {("result", "refused"), ("route", "rest")} <= key[1]
    ]
    assert sum(refused) == 1
    assert delta("fleetward_refusals_total", code=code) == 1
    assert delta("fleetward_revocations_total", reason="keyCompromise") == 1

    # Per route template, never per device: one series for both enrollments.
    route = "/api/v1/devices/{device_id}/certificates"
    assert value(after, "fleetward_http_requests_total", method="POST", route=route, status="201")
    assert value(after, "fleetward_http_requests_total", method="POST", route=route, status="409")
    assert value(after, "fleetward_http_request_duration_seconds_count", method="POST", route=route)
    # Every worker of the stack, read at scrape time.
    for worker in runtime.workers:
        assert ("fleetward_worker_up", frozenset({("worker", worker.name)})) in after
        assert ("fleetward_worker_lag_seconds", frozenset({("worker", worker.name)})) in after
    # No tenant data: not the device id, not the tenant's name, not a raw path.
    labels = {v for _, ls in after for _, v in ls}
    assert not [v for v in labels if "metrics-dev-1" in v or v == "default"]
    assert "metrics-dev-1" not in text


def test_requests_no_route_matched_share_one_series(metered: TestClient) -> None:
    for path in ("/no/such/a", "/no/such/b", "/api/v1/devices-typo"):
        assert metered.get(path).status_code == 404
    _, samples = scrape(metered)
    assert (
        value(
            samples, "fleetward_http_requests_total", method="GET", route="unmatched", status="404"
        )
        == 3
    )
    assert not [ls for (_, ls) in samples if ("route", "/no/such/a") in ls]


def test_install_twice_counts_once(ctx: AppContext, runtime: Stack) -> None:
    app = create_app(ctx, runtime=runtime)
    first = metrics.install(app)
    assert metrics.install(app) is first
    with TestClient(app) as c:
        c.get("/healthz")
        _, samples = scrape(c)
    assert (
        value(
            samples, "fleetward_http_requests_total", method="GET", route="/healthz", status="200"
        )
        == 1
    )


@dataclass(frozen=True)
class Health:
    name: str
    running: bool
    healthy: bool
    lag: float
    last_success: dt.datetime | None
    rounds: int
    failures: int
    leader: bool | None


@dataclass
class Worker:
    report: Health

    def health(self) -> Health:
        return self.report


def test_workers_report_lag_last_success_and_leadership() -> None:
    at = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    workers = [
        Worker(Health("publisher", True, True, 0.0, at, 7, 0, True)),
        Worker(Health("detection", True, False, 95.5, None, 0, 4, None)),
    ]
    app = FastAPI()
    metrics.install(app, workers=lambda: workers)
    with TestClient(app) as c:
        _, samples = scrape(c)
    pub, det = frozenset({("worker", "publisher")}), frozenset({("worker", "detection")})
    assert samples[("fleetward_worker_up", pub)] == 1
    assert samples[("fleetward_worker_up", det)] == 0
    assert samples[("fleetward_worker_lag_seconds", det)] == 95.5
    assert samples[("fleetward_worker_last_success_timestamp_seconds", pub)] == at.timestamp()
    assert ("fleetward_worker_last_success_timestamp_seconds", det) not in samples
    assert samples[("fleetward_worker_rounds_total", pub)] == 7
    assert samples[("fleetward_worker_consecutive_failures", det)] == 4
    assert samples[("fleetward_worker_leader", pub)] == 1
    assert ("fleetward_worker_leader", det) not in samples
