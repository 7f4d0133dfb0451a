"""``GET /metrics``: Prometheus metrics of the operator plane.

:func:`install` adds, to one app: a middleware that times every HTTP request
by **route template** (``/api/v1/devices/{device_id}``, never the raw path,
so one series per route, not per device); the endpoint; and a collector that
reads the runtime's workers at scrape time. The domain counters
(enrollments, refusals, revocations, telemetry) come from
:mod:`fleetward.observe`.

Series added here:

* ``fleetward_http_requests_total{method,route,status}`` and
  ``fleetward_http_request_duration_seconds{method,route}`` (histogram).
  Requests no route matched count under ``route="unmatched"``.
* per worker (``worker`` label, the worker's name):
  ``fleetward_worker_up`` (running and not overdue),
  ``fleetward_worker_lag_seconds``,
  ``fleetward_worker_last_success_timestamp_seconds``,
  ``fleetward_worker_rounds_total``,
  ``fleetward_worker_consecutive_failures`` and ``fleetward_worker_leader``
  (1 while it holds its lease; absent for workers without one).

**Workers: the interface.** Anything with a ``health()`` method returning an
object with the attributes of ``fleetward.runtime.worker.WorkerHealth``
(``name``, ``running``, ``healthy``, ``lag``, ``last_success``, ``rounds``,
``failures``, ``leader``) can be watched: pass ``workers=`` (a function
returning the current workers) to :func:`install`; by default it reads
``app.state.runtime.workers`` (the stack ``create_app`` runs). Nothing is
pushed: a scrape reads each worker's snapshot, so a stopped or stuck worker
shows as such.

**No token.** The endpoint needs no API token, as is usual for Prometheus
targets: it serves on the operator plane, which listens on loopback by
default; it answers from memory (no database query, no tenant's data), so
it is cheap to call and says nothing about any one tenant: labels are route
templates, error codes, refusal categories and worker names, never tenant
names, device ids or paths. An installation whose operator plane is reachable
from other hosts restricts ``/metrics`` at the reverse proxy in front of it,
or turns it off (``FLEETWARD_METRICS_ENABLED=false``). A tenant-scoped API
token would be the wrong credential anyway: the numbers cover all tenants.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from fastapi import FastAPI
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetward import observe
from fleetward.api.access import route_template

__all__ = ["PATH", "HealthReport", "ReportsHealth", "WorkerSource", "install"]

PATH = "/metrics"
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds: from a cached OCSP answer to a large CRL or batch enrollment.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HealthReport(Protocol):
    """What a worker says about itself (``fleetward.runtime.worker.WorkerHealth``)."""

    @property
    def name(self) -> str: ...
    @property
    def running(self) -> bool: ...
    @property
    def healthy(self) -> bool: ...
    @property
    def lag(self) -> float: ...
    @property
    def last_success(self) -> dt.datetime | None: ...
    @property
    def rounds(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def leader(self) -> bool | None: ...


class ReportsHealth(Protocol):
    """A worker (``fleetward.runtime.worker.PeriodicWorker``)."""

    def health(self) -> HealthReport: ...


WorkerSource = Callable[[], Iterable[ReportsHealth]]


class _Http:
    """The request metrics of one app."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "fleetward_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "fleetward_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=registry,
        )


class _Timing:
    """ASGI middleware: one observation per HTTP request."""

    def __init__(self, app: ASGIApp, *, http: _Http) -> None:
        self.app = app
        self.http = http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = str(scope.get("method", ""))
            method = method if method in _METHODS else "OTHER"
            route = route_template(scope) or UNMATCHED
            self.http.requests.labels(method, route, str(status)).inc()
            self.http.duration.labels(method, route).observe(time.perf_counter() - started)


class _Shared(Collector):
    """The process-wide domain counters of :mod:`fleetward.observe`."""

    def collect(self) -> Iterator[Metric]:
        yield from observe.REGISTRY.collect()


class _Workers(Collector):
    """Each worker's health, read at scrape time."""

    def __init__(self, source: WorkerSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        label = ["worker"]
        up = GaugeMetricFamily(
            "fleetward_worker_up", "1 while running and not overdue.", labels=label
        )
        lag = GaugeMetricFamily(
            "fleetward_worker_lag_seconds", "Seconds past its next round's due time.", labels=label
        )
        last = GaugeMetricFamily(
            "fleetward_worker_last_success_timestamp_seconds",
            "When its last round succeeded (Unix time).",
            labels=label,
        )
        rounds = CounterMetricFamily(
            "fleetward_worker_rounds", "Rounds completed since start.", labels=label
        )
        failures = GaugeMetricFamily(
            "fleetward_worker_consecutive_failures", "Rounds failed in a row.", labels=label
        )
        leader = GaugeMetricFamily(
            "fleetward_worker_leader", "1 while it holds its lease.", labels=label
        )
        for worker in self.source():
            h = worker.health()
            up.add_metric([h.name], 1.0 if h.running and h.healthy else 0.0)
            lag.add_metric([h.name], h.lag)
            if h.last_success is not None:
                last.add_metric([h.name], h.last_success.timestamp())
            rounds.add_metric([h.name], h.rounds)
            failures.add_metric([h.name], h.failures)
            if h.leader is not None:
                leader.add_metric([h.name], 1.0 if h.leader else 0.0)
        yield from (up, lag, last, rounds, failures, leader)


def _runtime_workers(app: FastAPI) -> Iterable[ReportsHealth]:
    workers = getattr(getattr(app.state, "runtime", None), "workers", ())
    return list(workers)


def install(app: FastAPI, *, workers: WorkerSource | None = None) -> CollectorRegistry:
    """Serve ``GET /metrics`` on ``app`` and time its requests (call before it
    starts; a second call returns the first one's registry).

    Args:
        app: The operator-plane app.
        workers: Returns the workers to report; default: those of the
            app's runtime stack (``app.state.runtime.workers``), if any.

    Returns:
        The registry the endpoint exposes (tests read it directly).
    """
    installed = getattr(app.state, "metrics_registry", None)
    if isinstance(installed, CollectorRegistry):
        return installed  # once per app: a second call would count every request twice
    registry = CollectorRegistry(auto_describe=False)
    app.state.metrics_registry = registry
    http = _Http(registry)
    registry.register(_Shared())
    registry.register(_Workers(workers or (lambda: _runtime_workers(app))))
    app.add_middleware(_Timing, http=http)

    def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route(PATH, metrics, methods=["GET"], include_in_schema=False)
    return registry
