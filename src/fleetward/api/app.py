"""FastAPI application assembly and the background publisher.

The publisher rebuilds CRLs that missed a revocation (checked every
``crl_interval`` seconds) and signs an audit checkpoint every
``checkpoint_interval`` seconds when the log grew, so neither ever runs on a
request path.
"""

from __future__ import annotations

import datetime as dt
import logging
import multiprocessing
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import select

from fleetward import __version__
from fleetward.api import problems
from fleetward.api.context import AppContext
from fleetward.attestation import routes as attestation_routes
from fleetward.audit import routes as audit_routes
from fleetward.audit import service as audit
from fleetward.audit.models import AuditCheckpoint, AuditHead
from fleetward.comms import routes as comms_routes
from fleetward.config import Settings
from fleetward.detection import routes as detection_routes
from fleetward.identity import est, publication
from fleetward.identity import routes as identity_routes
from fleetward.ota import routes as ota_routes
from fleetward.ota import service as ota
from fleetward.provisioning import routes as provisioning_routes
from fleetward.response import routes as response_routes
from fleetward.store import lease, utcnow
from fleetward.telemetry import routes as telemetry_routes
from fleetward.tenancy import routes as tenancy_routes

__all__ = ["Publisher", "create_app"]

log = logging.getLogger("fleetward.publisher")
TUF_REFRESH_SECONDS = 60.0


def _checkpoint_if_grown(ctx: AppContext) -> None:
    with ctx.db.session() as s:
        last = s.execute(
            select(AuditCheckpoint.tree_size).order_by(AuditCheckpoint.tree_size.desc()).limit(1)
        ).scalar()
        head = s.get(AuditHead, 1)
        # A checkpoint appends its own entry: only sign when more came.
        if head is not None and head.seq > (last or 0) + 1:
            audit.checkpoint(s, signer=ctx.checkpoint_signer())


def _round(ctx: AppContext, *, checkpoint: bool) -> int:
    """One publisher round; returns how many CRLs were rebuilt."""
    built = len(publication.publish_crls(ctx.db, ctx.pki))
    if checkpoint:
        _checkpoint_if_grown(ctx)
    return built


_child: AppContext | None = None


def _round_in_child(settings: Settings, checkpoint: bool) -> int:
    """Entry point in the publisher's child process (keeps its context)."""
    global _child
    if _child is None:
        _child = AppContext.from_settings(settings)
    return _round(_child, checkpoint=checkpoint)


class Publisher:
    """Background CRL publication and audit checkpointing.

    A thread wakes every second (or ``crl_interval``, if shorter). If this
    process holds the ``publisher`` lease and a CRL is due (a revocation since
    the last one, or past half its validity) or a checkpoint is due, the work
    runs at once, so a revocation is in the CRL within ``crl_interval`` as
    long as one rebuild takes less than that (about 5 s at 1,000,000
    entries, see ``benchmarks/crl.py``). It runs — in a
    child process when ``isolate`` is set (``fleetward serve``), so that
    building a million-entry CRL never holds this process's GIL while it
    answers OCSP and enrollment requests.
    """

    def __init__(
        self,
        ctx: AppContext,
        *,
        crl_interval: float,
        checkpoint_interval: float,
        isolate: bool = False,
    ) -> None:
        self.ctx = ctx
        self.crl_interval = crl_interval
        self.checkpoint_interval = checkpoint_interval
        self.isolate = isolate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetward-publisher", daemon=True)
        self._last_checkpoint = time.monotonic()
        self._last_tuf = 0.0
        self._pool: ProcessPoolExecutor | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread (and the child process) and wait for them."""
        self._stop.set()
        self._thread.join(timeout=60)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def run_once(self, *, now: dt.datetime | None = None) -> int:
        """One round: returns how many CRLs were rebuilt (0 without the lease)."""
        now = now or utcnow()
        ttl = dt.timedelta(seconds=max(3 * self.crl_interval, 60))
        if not lease.acquire(self.ctx.db, name="publisher", holder=self.holder, ttl=ttl, now=now):
            return 0
        if time.monotonic() - self._last_tuf >= TUF_REFRESH_SECONDS:
            # Timestamp and snapshot are re-signed at half-life, or devices
            # would see them expire and (rightly) refuse every update.
            self._last_tuf = time.monotonic()
            with self.ctx.db.session() as s:
                ota.refresh_online_roles(s, self.ctx.pki.keyring, now=now)
        checkpoint = time.monotonic() - self._last_checkpoint >= self.checkpoint_interval
        if not checkpoint and not publication.crls_due(self.ctx.db, self.ctx.pki, now=now):
            return 0
        if checkpoint:
            self._last_checkpoint = time.monotonic()
        if not self.isolate:
            return _round(self.ctx, checkpoint=checkpoint)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool.submit(_round_in_child, self.ctx.settings, checkpoint).result()

    def _run(self) -> None:
        # Check every second (one small read) so a revocation starts its CRL
        # rebuild at once; the interval is the promise, not the poll period.
        while not self._stop.wait(min(1.0, self.crl_interval)):
            try:
                self.run_once()
            except Exception:  # keep publishing; the next round retries
                log.exception("publisher round failed")


def create_app(
    ctx: AppContext,
    *,
    crl_interval: float = 10.0,
    checkpoint_interval: float = 600.0,
    isolate_publisher: bool = False,
) -> FastAPI:
    """The fleetward API for ``ctx``; the publisher runs while the app runs."""
    publisher = Publisher(
        ctx,
        crl_interval=crl_interval,
        checkpoint_interval=checkpoint_interval,
        isolate=isolate_publisher,
    )

    @asynccontextmanager
    async def lifespan(running: FastAPI) -> AsyncIterator[None]:
        publisher.start()
        try:
            yield
        finally:
            publisher.stop()
            sender = getattr(running.state, "command_sender", None)
            if sender is not None:
                sender.close()

    app = FastAPI(
        title="fleetward",
        version=__version__,
        summary="Trust plane for device fleets",
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.publisher = publisher
    problems.install(app)
    app.include_router(tenancy_routes.router)
    app.include_router(identity_routes.router)
    app.include_router(identity_routes.public)
    app.include_router(audit_routes.router)
    app.include_router(provisioning_routes.router)
    app.include_router(est.router)
    app.include_router(comms_routes.router)
    app.include_router(comms_routes.public)
    app.include_router(ota_routes.router)
    app.include_router(attestation_routes.router)
    app.include_router(detection_routes.router)
    app.include_router(telemetry_routes.router)
    app.include_router(response_routes.router)
    app.include_router(ota_routes.public)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok", "version": __version__}

    return app
