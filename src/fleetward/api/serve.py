"""Serving both planes from one process: two uvicorn servers on one event loop.

:func:`plane_servers` builds the two servers of one API process around
:func:`fleetward.api.app.create_planes`: the operator plane (plain HTTP, or
HTTPS with fleetward's service certificate when ``operator_tls`` is set) and
the device plane (HTTPS always, client certificates optional, through
:class:`~fleetward.api.tls.DeviceTls` and
:class:`~fleetward.api.tls.TlsHttpProtocol`). :func:`run_planes` runs them
until a signal or until either stops: a plane that cannot bind takes the
other down with it, so a half-served installation never looks healthy.

Signals are handled here, once, for both servers (uvicorn's own handler is
per server and the second would replace the first's).

**Listener limits** (docs/planes.md): both planes use
:class:`~fleetward.api.protocol.GuardedHttpProtocol` (the device plane through
:class:`~fleetward.api.tls.TlsHttpProtocol`), configured from the settings
(header-read timeout, connection cap), with uvicorn's keep-alive timeout set
to ``idle_timeout``. uvicorn creates its listeners without asyncio's
``ssl_handshake_timeout`` (60 s by default), so :func:`serve_planes` has the
event loop's ``create_server`` add ``tls_handshake_timeout`` to every TLS
listener it opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import Any

import uvicorn

from fleetward import web
from fleetward.api.app import create_planes
from fleetward.api.protocol import GuardedHttpProtocol
from fleetward.api.tls import DeviceTls, TlsHttpProtocol
from fleetward.api.workers import listener_options, log_options, proxy_options
from fleetward.runtime.context import AppContext
from fleetward.runtime.stack import Stack

__all__ = ["PlaneServers", "plane_servers", "run_planes", "serve_planes"]


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to :func:`run_planes`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class PlaneServers:
    """The two servers of one API process and the device plane's TLS."""

    operator: uvicorn.Server
    device: uvicorn.Server
    tls: DeviceTls
    handshake_timeout: float = 60.0  # asyncio's default; plane_servers sets the setting

    @property
    def servers(self) -> tuple[uvicorn.Server, uvicorn.Server]:
        """Both servers, operator first."""
        return self.operator, self.device

    def exit(self) -> None:
        """Ask both servers to stop (and the console's event streams to end,
        which uvicorn's graceful shutdown would otherwise wait for)."""
        web.close_streams(self.operator.config.app)
        for server in self.servers:
            server.should_exit = True


def plane_servers(
    ctx: AppContext,
    *,
    runtime: Stack | None = None,
    crl_interval: float = 10.0,
    checkpoint_interval: float = 600.0,
    isolate_publisher: bool = True,
    log_level: str | None = None,
) -> PlaneServers:
    """The operator and device servers for ``ctx`` (hosts and ports from its settings)."""
    settings = ctx.settings
    operator_app, device_app = create_planes(
        ctx,
        runtime=runtime,
        crl_interval=crl_interval,
        checkpoint_interval=checkpoint_interval,
        isolate_publisher=isolate_publisher,
    )
    options: dict[str, Any] = {**proxy_options(settings), **listener_options(settings)}
    if log_level is None:
        options.update(log_options())
    else:
        options["log_level"] = log_level
    pair = ctx.service_pki.server()
    operator_tls: dict[str, Any] = (
        {"ssl_certfile": str(pair.cert), "ssl_keyfile": str(pair.key)}
        if settings.operator_tls
        else {}
    )
    operator = uvicorn.Config(
        operator_app,
        host=settings.operator_host,
        port=settings.operator_port,
        http=GuardedHttpProtocol.from_settings(settings),
        **operator_tls,
        **options,
    )
    tls = DeviceTls(ctx)
    device = uvicorn.Config(
        device_app,
        host=settings.device_host,
        port=settings.device_port,
        http=TlsHttpProtocol.from_settings(settings),
        ssl_context_factory=tls.factory(),
        **options,
    )
    return PlaneServers(
        _Server(operator), _Server(device), tls, handshake_timeout=settings.tls_handshake_timeout
    )


@contextlib.contextmanager
def _handshake_timeout(loop: asyncio.AbstractEventLoop, seconds: float) -> Iterator[None]:
    """While the planes run, the TLS listeners they open get ``seconds`` as
    their handshake timeout (uvicorn calls ``loop.create_server`` without one)."""
    create = loop.create_server

    async def create_server(*args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", seconds)
        return await create(*args, **kwargs)

    loop.create_server = create_server  # type: ignore[method-assign]
    try:
        yield
    finally:
        del loop.create_server  # the instance attribute: the class's method again


async def serve_planes(
    planes: PlaneServers,
    *,
    sockets: tuple[list[socket.socket], list[socket.socket]] | None = None,
) -> None:
    """Serve both planes until both stop; when one stops, the other is told to."""
    planes.tls.start()
    with _handshake_timeout(asyncio.get_running_loop(), planes.handshake_timeout):
        tasks = [
            asyncio.create_task(server.serve(sockets=sockets[i] if sockets else None))
            for i, server in enumerate(planes.servers)
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            planes.exit()
            await asyncio.wait(tasks)
            for task in done:
                task.result()  # a plane that failed to start says why
        finally:
            planes.exit()
            planes.tls.stop()


def run_planes(
    planes: PlaneServers,
    *,
    sockets: tuple[list[socket.socket], list[socket.socket]] | None = None,
) -> None:
    """Run :func:`serve_planes` in a new event loop; SIGINT and SIGTERM stop both."""

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        planes.exit()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    # The loop uvicorn.run would choose (uvloop when installed): the default
    # asyncio loop made every request measurably slower.
    loop_factory = planes.servers[0].config.get_loop_factory()
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(serve_planes(planes, sockets=sockets))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
