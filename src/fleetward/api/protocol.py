"""The listeners' HTTP protocol: uvicorn's, with a header-read timeout and a connection cap.

uvicorn times out idle kept-alive connections (``timeout_keep_alive``, our
``idle_timeout``) but not a client that sends a request slowly: a socket
that sent half a request line was kept open forever, and 1,100 of them took
every file descriptor of a process with the usual limit of 1,024, so
``/healthz`` failed. :class:`GuardedHttpProtocol` (both planes; the device
plane's :class:`~fleetward.api.tls.TlsHttpProtocol` extends it) adds:

1. **Header-read timeout.** A connection must deliver a request's complete
   headers within ``header_timeout`` seconds, counted from the connection's
   start and again from the end of each response. While a request is being
   handled nothing is timed here (the application decides how long it
   takes); uvicorn's keep-alive timeout still closes a connection that sends
   nothing after a response, and the header timeout closes one that sends
   something, slowly.
2. **Connection cap.** Past ``max_connections`` open connections of one
   server (one plane of one process), a new connection is closed at once,
   before it costs a parser or a task. :func:`connection_cap` lowers the
   configured cap to what the process's file-descriptor limit leaves for
   each plane after :data:`FD_RESERVE`, so the cap is reached before the
   process runs out of descriptors and ``/healthz`` keeps answering.

On a TLS listener the application protocol sees a connection only once its
handshake is done; handshakes are bounded by asyncio's
``ssl_handshake_timeout`` instead (``tls_handshake_timeout``, which
:mod:`fleetward.api.serve` passes to the listener because uvicorn does not).

Both refusals are counted in ``fleetward_refusals_total{code}``
(``connection-cap``, ``header-timeout``).
"""

from __future__ import annotations

import asyncio
import resource
from asyncio.events import TimerHandle
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fleetward import observe
from fleetward.config import Settings

__all__ = [
    "CONNECTION_CAP",
    "FD_RESERVE",
    "HEADER_TIMEOUT",
    "PLANES_PER_PROCESS",
    "GuardedHttpProtocol",
    "connection_cap",
]

# Descriptors each process keeps for what is not a client connection:
# database and broker connections, log and key files, listening sockets,
# TLS handshakes in progress, the publisher's child process.
FD_RESERVE = 256
PLANES_PER_PROCESS = 2  # operator and device: each gets its share of the rest
CONNECTION_CAP = "connection-cap"  # refusal codes (closed set, see fleetward.observe)
HEADER_TIMEOUT = "header-timeout"


def connection_cap(settings: Settings, *, fd_limit: int | None = None) -> int:
    """The per-plane connection cap of one process: ``settings.max_connections``,
    lowered to its share of the file-descriptor limit (at least 1).

    Args:
        settings: The installation's settings.
        fd_limit: The soft ``RLIMIT_NOFILE`` (default: this process's).
    """
    if fd_limit is None:
        fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if fd_limit == resource.RLIM_INFINITY:
        return settings.max_connections
    share = (fd_limit - FD_RESERVE) // PLANES_PER_PROCESS
    return max(1, min(settings.max_connections, share))


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header-read timeout and a
    connection cap (see the module docstring). Build a configured subclass
    with :meth:`configured`; the class itself has the defaults."""

    header_timeout: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 1000

    _header_timer: TimerHandle | None = None
    _refused: bool = False

    @classmethod
    def configured(
        cls, *, header_timeout: float, max_connections: int
    ) -> type[GuardedHttpProtocol]:
        """A subclass with these limits (uvicorn instantiates the class it is given)."""
        if header_timeout <= 0:
            raise ValueError("header_timeout must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        return type(
            cls.__name__,
            (cls,),
            {
                "header_timeout": float(header_timeout),
                "max_connections": int(max_connections),
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
            },
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> type[GuardedHttpProtocol]:
        """:meth:`configured` with ``settings``' header timeout and :func:`connection_cap`."""
        return cls.configured(
            header_timeout=settings.header_timeout, max_connections=connection_cap(settings)
        )

    # -- connection -----------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        if len(self.server_state.connections) >= self.max_connections:
            # Closed before uvicorn counts it or builds anything for it.
            self._refused = True
            observe.refusal(CONNECTION_CAP)
            transport.close()
            return
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._cancel_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    # -- the header timer -----------------------------------------------------

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        # A pipelined request's headers are complete already: it starts now.
        waiting = bool(self.pipeline)
        super().on_response_complete()
        if not waiting and not self.transport.is_closing():
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        loop: asyncio.AbstractEventLoop = self.loop
        self._header_timer = loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being handled: not ours to time
        observe.refusal(HEADER_TIMEOUT)
        self.transport.close()
