"""Limits before work on both listeners (issue 15, item 2): body limits
enforced before the body is read (``fleetward.api.limits``), the header-read
timeout, the TLS handshake timeout and the connection cap
(``fleetward.api.protocol``), against real servers over raw sockets, with no
credentials."""

from __future__ import annotations

import json
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from fleetward.api import limits
from fleetward.api.app import create_app
from fleetward.api.protocol import FD_RESERVE, connection_cap
from fleetward.api.routes import est
from fleetward.api.serve import PlaneServers
from fleetward.identity.revocation import MAX_OCSP_REQUEST_BYTES
from fleetward.ota import release
from fleetward.runtime.context import AppContext
from fleetward.runtime.stack import Stack

pytestmark = pytest.mark.paused_workers

MiB = 1024 * 1024
HUNDRED_MB = 104_857_600
BODY_METHODS = {"POST", "PUT", "PATCH"}

Serve = Callable[..., PlaneServers]


@pytest.fixture
def serve(ctx: AppContext, request: pytest.FixtureRequest) -> Serve:
    """Both planes served for real with settings ``changes`` (the ``planes`` fixture)."""

    def start(**changes: Any) -> PlaneServers:
        if changes:
            ctx.settings = ctx.settings.replace(**changes)
        servers: PlaneServers = request.getfixturevalue("planes")
        return servers

    return start


def _rss_kib() -> int:
    """This process's resident set (the ``planes`` servers run in a thread of it)."""
    status = Path("/proc/self/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    assert match is not None
    return int(match.group(1))


def _response(
    sock: socket.socket | ssl.SSLSocket, timeout: float = 5
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one response read from ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def _closed_within(sock: socket.socket | ssl.SSLSocket, seconds: float) -> float:
    """Seconds until the server closed ``sock`` (fails if it is still open after ``seconds``)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        pytest.fail(f"still open after {seconds} s")
    except (ConnectionResetError, ssl.SSLError):
        pass
    return time.monotonic() - started


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def _flat(routes: list[Any]) -> Iterator[Any]:
    for route in routes:
        if hasattr(route, "effective_candidates"):
            yield from _flat(route.effective_candidates())
        else:
            yield route


def _body_routes(ctx: AppContext) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for plane in ("operator", "device"):
        app = create_app(ctx, plane=plane, runtime=Stack())
        for route in _flat(app.routes):
            methods = getattr(route, "methods", None) or set()
            takes_body = getattr(route, "body_field", None) is not None
            for method in methods & BODY_METHODS or ({"POST"} if takes_body else set()):
                found.add((method, route.path))
    return found


# -- body limits -----------------------------------------------------------------


def test_every_body_taking_route_has_a_limit_and_every_limit_a_route(ctx: AppContext) -> None:
    routes = _body_routes(ctx)
    assert len(routes) > 40
    for method, path in routes:
        limit = limits.limit_for(method, _concrete(path))
        assert limit.bytes > 0, (method, path)
        # The table's limit when it names the route, otherwise the default.
        assert limit == limits.ROUTE_LIMITS.get((method, path), limits.DEFAULT), (method, path)
    assert set(limits.ROUTE_LIMITS) <= routes, "a limit for a route that does not exist"


def test_limits_are_sized_from_the_domain_limits() -> None:
    at = limits.limit_for
    # Small inputs: the route's own check, now before the read.
    assert at("POST", "/.well-known/est/simpleenroll").bytes == est.MAX_BODY
    assert at("POST", "/.well-known/est/test/simplereenroll").bytes == est.MAX_BODY
    assert at("POST", "/ocsp").bytes == MAX_OCSP_REQUEST_BYTES
    for small in (
        "/api/v1/renew",
        "/api/v1/device/telemetry",
        "/api/v1/attestation/default/d-1/evidence",
    ):
        assert at("POST", small).bytes < limits.DEFAULT.bytes, small
    # Uploads: an artifact and an SBOM at their limits fit.
    upload = at("POST", "/api/v1/releases").bytes
    assert upload > release.MAX_ARTIFACT_BYTES + release.MAX_SBOM_BYTES
    # Unknown paths and bodiless methods get the default.
    assert at("GET", "/api/v1/releases") == limits.DEFAULT
    assert at("POST", "/no/such/route") == limits.DEFAULT


def test_an_oversized_declared_body_is_a_413_problem(client: TestClient, admin_token: str) -> None:
    resp = client.post(
        "/api/v1/tokens",
        content=b"x" * (limits.DEFAULT.bytes + 1),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status_code == 413
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["type"] == "urn:fleetward:problem:payload-too-large"
    assert body["limit"] == "json"
    assert resp.headers["connection"] == "close"
    # Under the limit the request goes on to the route.
    resp = client.post(
        "/api/v1/tokens",
        content=b"{}",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status_code == 422, resp.text


@pytest.mark.parametrize("credential", ["admin", "none"])
def test_a_100_mb_body_is_refused_at_once_without_memory_growth(
    live: str, ctx: AppContext, admin_token: str, credential: str
) -> None:
    """With a token the body limit refuses it (413); without one the
    authentication gate may refuse it first (401): either way at once, and
    without reading it."""
    auth = f"Authorization: Bearer {admin_token}\r\n" if credential == "admin" else ""
    port = ctx.settings.operator_port
    chunk = b"[" + b"0," * (MiB // 2 - 1) + b"0"  # 1 MiB of a JSON array
    # Warm the server's code paths so the measurement sees the request alone.
    # The oversized request announces its size and sends nothing: the server
    # answers and closes at once, and a client still writing a body could get
    # a reset before the answer (seen once in CI).
    with httpx.Client(base_url=live, timeout=10) as http:
        assert http.get("/healthz").status_code == 200
    with socket.create_connection(("127.0.0.1", port), timeout=5) as warm:
        warm.sendall(
            b"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {admin_token}\r\nContent-Length: {2 * MiB}\r\n\r\n".encode()
        )
        assert _response(warm)[0] == 413
    before = _rss_kib()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.perf_counter()
        sock.sendall(
            b"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"{auth}Content-Length: {HUNDRED_MB}\r\n\r\n".encode()
            + chunk[:65536]
        )
        status, headers, body = _response(sock)
        elapsed = time.perf_counter() - started
        # The client goes on sending; the server reads none of it into memory
        # and closes the connection.
        sent = 65536
        try:
            while sent < HUNDRED_MB:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
    growth_mib = (_rss_kib() - before) / 1024
    print(f"{credential}: {status} in {elapsed * 1000:.1f} ms, RSS {growth_mib:+.1f} MiB")
    assert status == 413 or (credential == "none" and status == 401), body
    if status == 413:
        assert json.loads(body)["type"] == "urn:fleetward:problem:payload-too-large"
        assert headers["connection"] == "close"
    assert elapsed < 0.1, f"{elapsed * 1000:.1f} ms"
    assert growth_mib < 10, f"{growth_mib:.1f} MiB"


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(
    live: str, ctx: AppContext, admin_token: str
) -> None:
    port = ctx.settings.operator_port
    piece = b"x" * 65536
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {admin_token}\r\n".encode()
            + b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        try:
            # Up to 4 times the limit, never the terminating chunk: a server
            # that reads to the end waits for ever.
            while sent < 4 * limits.DEFAULT.bytes:
                sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = _response(sock)
    assert status == 413, body
    assert json.loads(body)["type"] == "urn:fleetward:problem:payload-too-large"


def test_an_oversized_body_on_the_device_plane_is_refused_before_tls_client_checks(
    live_device: str, service_ca: Path
) -> None:
    port = int(live_device.rsplit(":", 1)[1])
    context = ssl.create_default_context(cafile=service_ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request\r\n"
            + f"Content-Length: {MAX_OCSP_REQUEST_BYTES + 1}\r\n\r\n".encode()
        )
        status, _, body = _response(tls)
    assert status == 413, body


# -- timeouts and the connection cap ----------------------------------------------


def test_a_slow_header_socket_is_closed_within_the_header_timeout(
    serve: Serve, ctx: AppContext
) -> None:
    serve(header_timeout=0.5)
    port = ctx.settings.operator_port
    # From the connection's start: half a request line, then nothing.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /hea")
        assert 0.3 < _closed_within(sock, 3) < 1.5
    # A connection that sends nothing at all.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        assert _closed_within(sock, 3) < 1.5
    # From the end of the previous response: a kept-alive connection that
    # starts its next request and never finishes the headers.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(sock)[0] == 200
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost:")
        assert 0.3 < _closed_within(sock, 3) < 1.5
    # A client that sends its headers in time is answered.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.2)
        sock.sendall(b"Host: x\r\n\r\n")
        assert _response(sock)[0] == 200


def test_the_device_plane_times_out_slow_headers_and_slow_handshakes(
    serve: Serve, ctx: AppContext, service_ca: Path
) -> None:
    serve(header_timeout=0.5, tls_handshake_timeout=0.5)
    port = ctx.settings.device_port
    # A TCP connection that never starts its TLS handshake.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        assert _closed_within(raw, 3) < 1.5
    # A TLS connection that sends half a request.
    context = ssl.create_default_context(cafile=service_ca)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert 0.3 < _closed_within(tls, 3) < 1.5


def test_the_connection_cap_refuses_past_the_cap_and_health_comes_back(
    serve: Serve, ctx: AppContext
) -> None:
    cap = 20
    serve(max_connections=cap, header_timeout=30)
    port = ctx.settings.operator_port
    held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(cap)]
    try:
        time.sleep(0.3)  # the server has accepted them all
        # Past the cap: closed at once, no answer.
        with socket.create_connection(("127.0.0.1", port), timeout=5) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _closed_within(extra, 3) < 1
        # The held connections still work.
        held[0].sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(held[0])[0] == 200
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 5
    while True:
        try:
            with httpx.Client(timeout=2) as http:
                if http.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "/healthz did not come back"
        time.sleep(0.05)


def test_the_cap_leaves_room_under_the_file_descriptor_limit(ctx: AppContext) -> None:
    settings = ctx.settings.replace(max_connections=100_000)
    assert connection_cap(settings, fd_limit=1024) == (1024 - FD_RESERVE) // 2
    assert 2 * connection_cap(settings, fd_limit=1024) + FD_RESERVE <= 1024
    assert connection_cap(ctx.settings.replace(max_connections=50), fd_limit=1024) == 50
    assert connection_cap(settings, fd_limit=FD_RESERVE) == 1
