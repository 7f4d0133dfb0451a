"""The console's event stream on a real server: a change in the tenant is
announced, another tenant's is not, the stream ends when the session does,
a reconnect resumes from its Last-Event-ID, and stopping the server ends
open streams instead of waiting for them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from fleetward.api.serve import PlaneServers
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.web import events
from tests.web.helpers import sign_in_http

pytestmark = pytest.mark.paused_workers


READ = httpx.Timeout(30, read=6)  # a quiet stream sends nothing for 20 s: reads give up sooner


def _messages(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """The stream's messages (field -> value), until a read times out."""
    message: dict[str, str] = {}
    try:
        for line in lines:
            if not line:
                if message:
                    yield message
                message = {}
                continue
            name, _, value = line.partition(":")
            message[name] = value.strip()
    except httpx.ReadTimeout:
        return


def _first(lines: Iterator[str], kind: str, seconds: float) -> dict[str, str] | None:
    until = time.monotonic() + seconds
    for message in _messages(lines):
        if message.get("event") == kind:
            return message
        if time.monotonic() > until:
            return None
    return None


def test_a_tenant_change_is_announced_and_revocation_ends_the_stream(
    live: str, admin_token: str
) -> None:
    bearer = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=live, timeout=30) as api:
        made = api.post(
            "/api/v1/tokens", json={"name": "watcher", "role": "auditor"}, headers=bearer
        )
        assert made.status_code == 201, made.text
        watcher = httpx.Client(base_url=live, timeout=READ)
        sign_in_http(watcher, made.json()["token"])
        with watcher.stream("GET", events.PATH) as stream:
            lines = stream.iter_lines()
            assert stream.headers["content-type"].startswith("text/event-stream")
            changed = threading.Timer(
                0.5,
                lambda: api.post(
                    "/api/v1/devices", json={"device_id": "d-sse", "product": "p"}, headers=bearer
                ),
            )
            changed.start()
            message = _first(lines, "change", 10)
            changed.join()
            assert message is not None, "no change event after a device was registered"
            assert message.get("id"), "a change carries the cursor as its id"
            gone = api.delete(f"/api/v1/tokens/{made.json()['id']}", headers=bearer)
            assert gone.status_code in (200, 204), gone.text
            assert _first(lines, "ended", 10) is not None
        watcher.close()


@pytest.mark.sqlite_run_only
def test_another_tenants_change_is_not_announced(
    live: str, admin_token: str, ctx: AppContext
) -> None:
    with ctx.db.session() as s:
        other_tenant = tenancy.create_tenant(s, name="other", actor="test")
        _, other_token = tenancy.create_token(
            s, tenant=other_tenant, name="a", role="admin", actor="test"
        )
    with (
        httpx.Client(base_url=live, timeout=30) as watcher,
        httpx.Client(base_url=live, timeout=30) as other,
    ):
        sign_in_http(watcher, admin_token)
        with watcher.stream("GET", events.PATH) as stream:
            for i in range(3):
                r = other.post(
                    "/api/v1/devices",
                    json={"device_id": f"o-{i}", "product": "p"},
                    headers={"Authorization": f"Bearer {other_token}"},
                )
                assert r.status_code == 201, r.text
            assert _first(stream.iter_lines(), "change", 5) is None


@pytest.mark.sqlite_run_only
def test_stopping_the_server_ends_open_streams(
    planes: PlaneServers, live: str, admin_token: str
) -> None:
    watcher = httpx.Client(base_url=live, timeout=30)
    sign_in_http(watcher, admin_token)
    with watcher.stream("GET", events.PATH) as stream:
        started = time.monotonic()
        planes.exit()
        for _ in stream.iter_lines():
            pass
        assert time.monotonic() - started < events.POLL * 3
    watcher.close()


def test_a_resumed_cursor_is_ours_or_ignored() -> None:
    assert events._resumed("12.34") == events._Cursor(12, 34)
    for bad in (None, "", "x.1", "1", "1.2.3", "9" * 50 + ".1", "-1.2"):
        assert events._resumed(bad) is None, bad
