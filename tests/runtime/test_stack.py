"""The stacks ``serve`` and ``up`` assemble, and ``/healthz`` built on their health."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleetward.api.app import create_app
from fleetward.comms.mosquitto_conf import Listeners
from fleetward.runtime.broker import BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.runtime.stack import Stack, up_stack
from fleetward.runtime.worker import PeriodicWorker
from tests.broker import free_listeners, wait_for


class Idle(PeriodicWorker):
    def work(self) -> None:
        pass


def test_up_runs_every_worker_once_with_leases_where_hosts_share_work(ctx: AppContext) -> None:
    stack = up_stack(ctx, api_url="http://127.0.0.1:1", demo_devices=3)
    try:
        leases = {w.name: w.lease for w in stack.workers}
        assert leases == {
            "broker-sync": None,
            "mosquitto": None,
            "publisher": "publisher",
            "tuf-refresh": "tuf-refresh",
            "campaign-driver": "campaign-driver",
            "detection": "detection",
            "vulns": "vulns",
            "trustmap": "trustmap",
            "fleetward-ingest-1": None,
            "compliance-tracker": "compliance-tracker",
            "demo-fleet": None,
        }
        # With separate API processes, they run the publishers, not ``up``.
        rest = up_stack(ctx, api_url="http://127.0.0.1:1", publishers=False)
        assert {"publisher", "tuf-refresh", "demo-fleet"}.isdisjoint(w.name for w in rest.workers)
        rest.stop()
        with pytest.raises(KeyError, match="have: broker-sync"):
            stack.worker("nope")
        with pytest.raises(ValueError, match="already"):
            stack.add(Idle("detection", interval=1))
    finally:
        stack.stop()  # never started: closes what the workers opened


def test_up_listens_where_the_settings_say(ctx: AppContext) -> None:
    s = ctx.settings
    stack = up_stack(ctx, api_url="http://127.0.0.1:1", publishers=False)
    try:
        broker = stack.broker
        assert broker is not None
        assert broker.host == s.mqtt_host
        assert dict(broker.ports) == {
            "test": s.mqtt_test_port,
            "production": s.mqtt_production_port,
            "drill": s.mqtt_drill_port,
        }
        assert broker.service_port == s.mqtt_service_port
        listeners = free_listeners()
        other = up_stack(ctx, api_url="http://127.0.0.1:1", listeners=listeners, publishers=False)
        assert other.broker is not None and other.broker.listeners == listeners
        other.stop()
    finally:
        stack.stop()


@pytest.mark.parametrize(
    "ports",
    [
        {"test": 1, "production": 1, "drill": 2},  # shared
        {"test": 1, "production": 2},  # an environment without a listener
        {"test": 1, "production": 2, "drill": 3, "staging": 4},  # an unknown one
        {"test": 0, "production": 2, "drill": 3},  # out of range
        {"test": 70000, "production": 2, "drill": 3},
    ],
)
def test_listeners_refuse_nonsense(ports: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=r"listener|environment"):
        Listeners(host="127.0.0.1", ports=ports, service_port=9)


def test_healthz_reports_each_worker(client: TestClient) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "ok" and "broker" not in body
    assert set(body["workers"]) == {"publisher", "tuf-refresh"}
    publisher = body["workers"]["publisher"]
    assert publisher["running"] and publisher["paused"] and publisher["lease"] == "publisher"
    assert publisher["last_success"] is None and publisher["last_error"] is None
    client.app.state.runtime.step("publisher")  # type: ignore[attr-defined]
    publisher = client.get("/healthz").json()["workers"]["publisher"]
    assert publisher["last_success"] is not None and publisher["leader"] is True


def test_healthz_is_503_with_details_when_a_worker_is_overdue(ctx: AppContext) -> None:
    clock = [0.0]
    late = Idle("late", interval=1.0, stale_after=5.0, clock=lambda: clock[0])
    with TestClient(create_app(ctx, runtime=Stack([late]))) as client:
        assert client.get("/healthz").status_code == 200
        clock[0] = 60.0
        resp = client.get("/healthz")
        assert resp.status_code == 503
        body = resp.json()
        assert body["status"] == "unhealthy"
        assert body["workers"]["late"]["healthy"] is False
        assert body["workers"]["late"]["lag"] == pytest.approx(59.0)


@pytest.fixture
def broker_stack(ctx: AppContext, tmp_path: Path) -> Iterator[Stack]:
    broker = BrokerRuntime(ctx, ctx.settings.home / "broker", listeners=free_listeners())
    stack = Stack(broker=broker)
    yield stack
    stack.stop()


@pytest.mark.broker
def test_healthz_reports_the_broker_and_a_dead_one_is_503(
    ctx: AppContext, broker_stack: Stack
) -> None:
    with TestClient(create_app(ctx, runtime=broker_stack)) as client:
        body = client.get("/healthz").json()
        assert body["status"] == "ok" and body["broker"]["running"]
        assert set(body["workers"]) == {"broker-sync", "mosquitto"}
        running = broker_stack.broker
        assert running is not None
        assert body["broker"]["listeners"] == dict(running.ports)
        assert body["broker"]["port"] == running.ports["production"]
        assert body["broker"]["service_port"] == running.service_port
        broker_stack.pause("mosquitto")  # the supervisor would restart it
        broker = broker_stack.broker
        assert broker is not None and broker.mosquitto.proc is not None
        broker.mosquitto.proc.kill()
        broker.mosquitto.proc.wait()
        resp = client.get("/healthz")
        assert resp.status_code == 503
        assert resp.json()["broker"] == {**body["broker"], "running": False, "pid": None,
                                         "healthy": False}  # fmt: skip
        broker_stack.step("mosquitto")  # one supervisor round brings it back
        assert broker.restarts == 1
        wait_for(lambda: client.get("/healthz").status_code == 200, what="healthy again")


def test_the_isolated_publisher_builds_in_a_child_process(ctx: AppContext, tmp_path: Path) -> None:
    """What ``fleetward serve`` runs: the rebuild happens in a spawned child."""
    from fleetward.identity import service as identity
    from fleetward.runtime.publisher import Publisher
    from tests.broker import admin_of, make_device

    make_device(ctx, tmp_path, "p1")
    publisher = Publisher(ctx, crl_interval=10, isolate=True)
    try:
        assert publisher.run_once() and publisher.rebuilt == 0  # nothing due
        admin = admin_of(ctx)
        with ctx.db.session() as s:
            identity.revoke_device(s, admin, "p1", reason="keyCompromise")
        assert publisher.run_once() and publisher.rebuilt == 1
        assert publisher._pool is not None  # it ran in the child
    finally:
        publisher.stop()
    assert publisher._pool is None
