"""Several API processes on the same two ports, each with its own listening sockets.

uvicorn's ``--workers`` shares one listening socket, and Linux hands new
connections to whichever worker wakes first: with long-lived keep-alive
clients one worker ended up with 14 of 16 connections (measured), the other
core idle. Here every worker binds its own socket per plane (operator and
device, see :mod:`fleetward.api.serve`) with ``SO_REUSEPORT``, so the kernel
spreads connections across workers by their address hash.

:func:`proxy_options` is how every API process (one or several) treats
``X-Forwarded-For``: believed only from ``FLEETWARD_TRUSTED_PROXIES``;
:func:`listener_options` its listeners' timeouts. Every worker enforces the
listener limits (:mod:`fleetward.api.protocol`) on its own connections: the
connection cap is per process and plane, from each process's own
file-descriptor limit.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
from types import FrameType
from typing import Any

from fleetward import logs
from fleetward.config import Settings
from fleetward.runtime.context import AppContext

__all__ = ["listener_options", "log_options", "proxy_options", "serve_workers"]


def proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's proxy-header options for ``settings``.

    uvicorn believes ``X-Forwarded-For`` from 127.0.0.1 by default, so any
    local process (or a same-host reverse proxy passing the header through)
    could choose the source address recorded for an enrollment. Here the
    headers count only when the peer is one of ``settings.trusted_proxies``,
    and with none configured the middleware is off.
    """
    trusted = list(settings.trusted_proxies)
    # An explicit list (even empty) also keeps uvicorn from reading
    # FORWARDED_ALLOW_IPS from the environment.
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted}


def listener_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for the listeners' limits that uvicorn itself has:
    the keep-alive (idle) timeout. The header-read timeout and the
    connection cap are in the protocol class (:mod:`fleetward.api.protocol`),
    the TLS handshake timeout in :func:`fleetward.api.serve.serve_planes`.
    ``limit_concurrency`` stays off: it answers 503 only after a request's
    headers arrived, and the connection cap refuses earlier."""
    return {"timeout_keep_alive": settings.idle_timeout}


def log_options() -> dict[str, Any]:
    """uvicorn's logging options once :func:`fleetward.logs.configure` ran:
    no logging setup of its own (its lines go through fleetward's handler)
    and no access log of its own (``fleetward.api.access`` writes one with
    the request id)."""
    return {"log_config": None, "access_log": False}


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _worker(settings: Settings, crl_interval: float, checkpoint_interval: float) -> None:
    from fleetward.api.serve import plane_servers, run_planes

    operator = _bind(settings.operator_host, settings.operator_port)
    device = _bind(settings.device_host, settings.device_port)
    logs.configure(level=settings.log_level, fmt=settings.log_format)
    ctx = AppContext.from_settings(settings)
    planes = plane_servers(
        ctx,
        crl_interval=crl_interval,
        checkpoint_interval=checkpoint_interval,
        isolate_publisher=True,
    )
    run_planes(planes, sockets=([operator], [device]))


def serve_workers(
    settings: Settings,
    *,
    workers: int,
    crl_interval: float,
    checkpoint_interval: float,
) -> None:
    """Run ``workers`` API processes until one of them exits or we are
    signalled. Each serves both planes (``settings.operator_*`` and
    ``settings.device_*``), with its own socket per plane."""
    spawn = multiprocessing.get_context("spawn")
    procs = [
        spawn.Process(
            target=_worker,
            args=(settings, crl_interval, checkpoint_interval),
            name=f"fleetward-api-{i}",
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        for p in procs:
            if p.is_alive():
                p.terminate()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        for p in procs:
            p.join()
    finally:
        _stop(signal.SIGTERM, None)
        for p in procs:
            p.join(timeout=30)
