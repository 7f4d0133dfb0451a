"""Shared fixtures.

``db`` is a freshly migrated database: SQLite in a temporary directory, or,
when ``FLEETWARD_TEST_PG_URL`` is set (``scripts/test`` does), a new
PostgreSQL database cloned from a migrated template. In the PostgreSQL run,
tests that do not use a database are deselected: they ran in the SQLite run;
so are tests marked ``sqlite_run_only``: they use a database, but what they
hold (an HTTP contract, hostile input refused before any query) does not
depend on which one, and running them twice would only lengthen CI.

The API fixtures run the runtime's workers (publisher, TUF refresher) in a
``runtime`` stack a test can ask for, to pause or step them by name:
``client`` starts them paused (``runtime.step("publisher")`` runs one round);
``live`` runs them, unless the test is marked ``paused_workers``.

There are two planes (``fleetward.api.app``): ``client`` is the operator
plane's TestClient, ``device_client`` the device plane's (TestClient speaks
no TLS, so :class:`DeviceTestClient` passes a device certificate the way the
server's TLS protocol does: ``device_client.as_device(cert_pem)``). ``live``
serves both planes for real (the device plane over TLS) and is the operator
URL; ``live_device`` is the device plane's URL and ``service_ca`` the CA
file its certificate chains to.
"""

from __future__ import annotations

import base64
import itertools
import os
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from fleetward.api.app import create_app
from fleetward.api.serve import PlaneServers, plane_servers, serve_planes
from fleetward.api.tls import PEER_EXTENSION
from fleetward.config import Settings
from fleetward.runtime.context import AppContext
from fleetward.runtime.installation import initialise
from fleetward.runtime.stack import Stack, serve_stack
from fleetward.store import Database
from fleetward.tenancy import service as tenancy
from tests.broker import broker  # noqa: F401 - registers the Mosquitto fixture
from tests.hsm import softhsm  # noqa: F401 - registers the session-wide token fixture

PG_URL = os.environ.get("FLEETWARD_TEST_PG_URL")
CRL_INTERVAL = 0.5  # the live server's publication interval
_template_ready = False
_counter = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "paused_workers: the live server's workers start paused (step them with the runtime "
        "fixture)",
    )
    config.addinivalue_line(
        "markers",
        "sqlite_run_only: uses a database, but does not depend on which: the PostgreSQL run "
        "deselects it",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not PG_URL:
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        uses_db = "db" in getattr(item, "fixturenames", ())
        once = item.get_closest_marker("sqlite_run_only") is not None
        (keep if uses_db and not once else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _pg_database() -> str:
    global _template_ready
    assert PG_URL
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    template = "fw_template"
    with admin.connect() as conn:
        if not _template_ready:
            conn.execute(text(f"DROP DATABASE IF EXISTS {template}"))
            conn.execute(text(f"CREATE DATABASE {template}"))
            url = make_url(PG_URL).set(database=template).render_as_string(hide_password=False)
            tdb = Database(url)
            tdb.migrate()
            tdb.dispose()
            _template_ready = True
        name = f"fw_t{os.getpid()}_{next(_counter)}_{uuid.uuid4().hex[:6]}"
        conn.execute(text(f"CREATE DATABASE {name} TEMPLATE {template}"))
    admin.dispose()
    return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)


def _drop_pg(url: str) -> None:
    assert PG_URL
    name = make_url(url).database
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture
def db_url(tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, migrated database."""
    if PG_URL:
        url = _pg_database()
        yield url
        _drop_pg(url)
    else:
        url = f"sqlite:///{tmp_path / 'fleetward.db'}"
        d = Database(url)
        d.migrate()
        d.dispose()
        yield url


@pytest.fixture
def installation(db_url: str, tmp_path: Path) -> Iterator[tuple[AppContext, str]]:
    """A fresh installation (what ``fleetward init`` makes): context and admin token."""
    settings = Settings(
        home=tmp_path / "home", database_url=db_url, public_url="http://127.0.0.1:8400"
    )
    ctx, token = initialise(settings, actor="test")
    # Identity tests enroll software keys straight into production, which
    # needs the tenant's dangerous option; provisioning tests turn it off to
    # check the refusal (see tests/provisioning).
    with ctx.db.session() as s:
        admin = tenancy.authenticate(s, token)
        tenancy.set_allow_unattested(s, admin, allow=True)
    yield ctx, token
    ctx.db.dispose()


@pytest.fixture
def ctx(installation: tuple[AppContext, str], db: Database) -> AppContext:
    """The installation's context (``db`` is requested so the PostgreSQL run keeps it)."""
    return installation[0]


@pytest.fixture
def admin_token(installation: tuple[AppContext, str]) -> str:
    """The first admin token of tenant ``default``."""
    return installation[1]


@pytest.fixture
def runtime(ctx: AppContext, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The workers of the API fixtures: the publisher (CRL interval
    :data:`CRL_INTERVAL`) and the TUF refresher. Paused when the test uses
    ``client`` or is marked ``paused_workers``. The publisher builds in this
    process (tests/runtime covers the child-process path), so the first CRL
    after a revocation does not wait for a child to start."""
    stack = serve_stack(ctx, crl_interval=CRL_INTERVAL, checkpoint_interval=3600)
    paused = {"client", "device_client"} & set(request.fixturenames)
    if paused or request.node.get_closest_marker("paused_workers"):
        stack.pause()
    yield stack
    stack.stop()


@pytest.fixture
def client(ctx: AppContext, runtime: Stack) -> Iterator[TestClient]:
    """An HTTP client bound to the installation's API (workers paused: step them)."""
    with TestClient(create_app(ctx, runtime=runtime)) as c:
        yield c


TLS_TEST_HEADER = "x-test-tls-client-cert"  # read by the shim below, never by the app
PEER_TEST_HEADER = "x-test-peer"


class _TlsShim:
    """What the device plane's TLS protocol adds to a request's scope
    (``fleetward.api.tls.TlsHttpProtocol``), taken from test-only headers
    that the shim removes: the client certificate (base64 of its PEM) and
    the raw TCP peer (default ``testclient``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = []
            cert: str | None = None
            peer = "testclient"
            for name, value in scope["headers"]:
                if name == TLS_TEST_HEADER.encode():
                    cert = base64.b64decode(value).decode()
                elif name == PEER_TEST_HEADER.encode():
                    peer = value.decode()
                else:
                    headers.append((name, value))
            extensions = dict(scope.get("extensions") or {})
            extensions[PEER_EXTENSION] = {"peer": (peer, 50000)}
            extensions["tls"] = {
                "server_cert": None,
                "client_cert_chain": [cert] if cert else [],
                "client_cert_name": None,
                "client_cert_error": None,
                "tls_version": 0x0304,
                "cipher_suite": None,
            }
            scope = {**scope, "headers": headers, "extensions": extensions, "scheme": "https"}
        await self.app(scope, receive, send)


class DeviceTestClient(TestClient):
    """A TestClient of the device plane; :meth:`as_device` presents a certificate."""

    def as_device(self, cert: bytes | str, *, peer: str | None = None) -> DeviceTestClient:
        """A client of the same (running) app whose requests come with
        ``cert`` (PEM) as their TLS client certificate."""
        pem = cert.decode() if isinstance(cert, bytes) else cert
        headers = {TLS_TEST_HEADER: base64.b64encode(pem.encode()).decode()}
        if peer is not None:
            headers[PEER_TEST_HEADER] = peer
        return DeviceTestClient(self.app, headers=headers, raise_server_exceptions=True)

    def from_peer(self, peer: str) -> DeviceTestClient:
        """A client of the same app whose raw TCP peer is ``peer`` (no certificate)."""
        return DeviceTestClient(self.app, headers={PEER_TEST_HEADER: peer})


@pytest.fixture
def device_client(
    ctx: AppContext, runtime: Stack, request: pytest.FixtureRequest
) -> Iterator[DeviceTestClient]:
    """A client of the device plane (workers paused; the operator ``client``
    runs them when the test also uses it)."""
    app = create_app(
        ctx, plane="device", runtime=runtime, run_runtime="client" not in request.fixturenames
    )
    with DeviceTestClient(_TlsShim(app)) as c:
        yield c


@pytest.fixture
def planes(ctx: AppContext, runtime: Stack) -> Iterator[PlaneServers]:
    """Both planes served for real on free loopback ports (uvicorn in a
    thread; the device plane over TLS), running ``runtime``."""
    # Bound here and handed to the servers: a port picked, released and bound
    # again later can be taken in between (an outgoing connection's ephemeral
    # port), which failed a CI run with "address already in use".
    listeners = []
    for _ in range(2):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        listeners.append(sock)
    ports = [sock.getsockname()[1] for sock in listeners]
    ctx.settings = ctx.settings.replace(
        operator_host="127.0.0.1",
        operator_port=ports[0],
        device_host="127.0.0.1",
        device_port=ports[1],
    )
    servers = plane_servers(ctx, runtime=runtime, isolate_publisher=False, log_level="warning")
    servers.tls.interval = 0.2
    import asyncio

    sockets = ([listeners[0]], [listeners[1]])
    thread = threading.Thread(
        target=lambda: asyncio.run(serve_planes(servers, sockets=sockets)), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    try:
        while not (servers.operator.started and servers.device.started):
            assert time.monotonic() < deadline, "server did not start"
            assert thread.is_alive(), "server failed to start"
            time.sleep(0.02)
        yield servers
    finally:
        servers.exit()
        thread.join(timeout=10)
        for sock in listeners:
            sock.close()


@pytest.fixture
def live(planes: PlaneServers, ctx: AppContext) -> str:
    """The operator plane's URL of the real server (see ``planes``)."""
    return f"http://127.0.0.1:{ctx.settings.operator_port}"


@pytest.fixture
def live_device(planes: PlaneServers, ctx: AppContext) -> str:
    """The device plane's URL of the real server (HTTPS; see ``service_ca``)."""
    return f"https://127.0.0.1:{ctx.settings.device_port}"


@pytest.fixture
def service_ca(ctx: AppContext) -> Path:
    """The CA file the device plane's certificate chains to."""
    ctx.service_pki.server()
    return ctx.service_pki.ca_cert


@pytest.fixture
def device_http(live_device: str, service_ca: Path) -> Iterator[httpx.Client]:
    """An HTTPS client of the live device plane, without a client certificate."""
    with httpx.Client(
        base_url=live_device, verify=ssl.create_default_context(cafile=service_ca), timeout=30
    ) as c:
        yield c


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    """A fresh, migrated :class:`Database`."""
    d = Database(db_url)
    yield d
    d.dispose()


CLI_PASSPHRASE = "correct horse battery staple"


@pytest.fixture
def home(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fleetward home for the CLI (``fleetward init`` not run yet)."""
    monkeypatch.setenv("FLEETWARD_DATABASE_URL", db_url)
    monkeypatch.setenv("FLEETWARD_KEY_PASSPHRASE", CLI_PASSPHRASE)
    return tmp_path / "home"
