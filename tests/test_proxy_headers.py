"""X-Forwarded-For counts only from FLEETWARD_TRUSTED_PROXIES (nobody by default).

The recorded source of an enrollment attempt is evidence; a client on the
same host must not be able to choose it by sending a header.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from fleetward.api.app import create_app
from fleetward.api.workers import proxy_options
from fleetward.config import Settings, parse_trusted_proxies
from fleetward.errors import InvalidInputError
from fleetward.runtime.context import AppContext
from tests.helpers import csr_pem, new_key

API = "/api/v1/provisioning"
SPOOFED = "203.0.113.9"


@contextmanager
def served(ctx: AppContext, settings: Settings) -> Iterator[str]:
    """The API on a loopback port, with the proxy options ``fleetward serve`` uses."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        create_app(ctx, crl_interval=3600, checkpoint_interval=3600),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        **proxy_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def recorded_source(base: str, admin: str, device_id: str) -> str:
    """Enroll ``device_id`` through a factory batch, claiming to come from
    SPOOFED, and return the source the attempt was recorded with."""
    h = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=base, timeout=30) as c:
        factory = c.post(
            f"{API}/factories", json={"name": f"line-{device_id}", "environment": "test"}, headers=h
        )
        assert factory.status_code == 201, factory.text
        fid = factory.json()["id"]
        token = c.post(f"{API}/factories/{fid}/tokens", json={"name": "station"}, headers=h)
        assert token.status_code == 201, token.text
        batch = c.post(
            f"{API}/batches",
            json={
                "factory_id": fid,
                "product": "thermo",
                "expires_in_hours": 1,
                "device_ids": [device_id],
            },
            headers=h,
        )
        assert batch.status_code == 201, batch.text
        item = {"device_id": device_id, "csr": csr_pem(new_key(), device_id).decode()}
        resp = c.post(
            f"{API}/batches/{batch.json()['id']}/enroll",
            json={"items": [item]},
            headers={
                "Authorization": f"Bearer {token.json()['token']}",
                "X-Forwarded-For": SPOOFED,
            },
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["issued"] == 1, resp.text
        rows = c.get(f"{API}/attempts", params={"factory_id": fid}, headers=h).json()["items"]
    assert [r["device_id"] for r in rows] == [device_id]
    return str(rows[0]["source"])


def test_forwarded_for_is_ignored_by_default(
    ctx: AppContext, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEETWARD_TRUSTED_PROXIES", raising=False)
    settings = Settings.load(ctx.settings.home)
    assert settings.trusted_proxies == ()
    with served(ctx, settings) as base:
        assert recorded_source(base, admin_token, "px-1") == "127.0.0.1"


def test_forwarded_for_counts_from_a_configured_proxy(
    ctx: AppContext, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWARD_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")
    settings = Settings.load(ctx.settings.home)
    assert settings.trusted_proxies == ("127.0.0.1", "10.0.0.0/8")
    with served(ctx, settings) as base:
        assert recorded_source(base, admin_token, "px-2") == SPOOFED


def test_forwarded_for_is_ignored_from_an_unlisted_peer(
    ctx: AppContext, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWARD_TRUSTED_PROXIES", "10.0.0.0/8")
    with served(ctx, Settings.load(ctx.settings.home)) as base:
        assert recorded_source(base, admin_token, "px-3") == "127.0.0.1"


@pytest.mark.parametrize("raw", ["*", "10.0.0.1/8", "proxy.example", "127.0.0.1;"])
def test_trusted_proxies_that_are_not_addresses_are_refused(raw: str) -> None:
    with pytest.raises(InvalidInputError, match="FLEETWARD_TRUSTED_PROXIES"):
        parse_trusted_proxies(raw)


def test_trusted_proxies_parse() -> None:
    assert parse_trusted_proxies("") == ()
    assert parse_trusted_proxies(" ::1 , 192.0.2.0/24,") == ("::1", "192.0.2.0/24")
