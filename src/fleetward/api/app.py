"""FastAPI application assembly and the background publisher.

The publisher thread rebuilds stale CRLs every ``crl_interval`` seconds and
signs an audit checkpoint every ``checkpoint_interval`` seconds when the log
grew, so neither ever runs on a request path.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy import select

from fleetward import __version__
from fleetward.api import problems
from fleetward.api.context import AppContext
from fleetward.audit import routes as audit_routes
from fleetward.audit import service as audit
from fleetward.audit.models import AuditCheckpoint, AuditHead
from fleetward.identity import ca_service, est
from fleetward.identity import routes as identity_routes
from fleetward.store import lease, utcnow
from fleetward.tenancy import routes as tenancy_routes

__all__ = ["Publisher", "create_app"]

log = logging.getLogger("fleetward.publisher")


class Publisher:
    """Background CRL publication and audit checkpointing."""

    def __init__(self, ctx: AppContext, *, crl_interval: float, checkpoint_interval: float) -> None:
        self.ctx = ctx
        self.crl_interval = crl_interval
        self.checkpoint_interval = checkpoint_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetward-publisher", daemon=True)
        self._since_checkpoint = 0.0
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        self._thread.join(timeout=30)

    def run_once(self, *, now: dt.datetime | None = None) -> None:
        """If this process holds the publisher lease: publish stale CRLs and,
        when due, checkpoint the audit log."""
        now = now or utcnow()
        ttl = dt.timedelta(seconds=max(3 * self.crl_interval, 30))
        if not lease.acquire(self.ctx.db, name="publisher", holder=self.holder, ttl=ttl, now=now):
            return
        ca_service.publish_crls(self.ctx.db, self.ctx.pki, now=now)
        self._since_checkpoint += self.crl_interval
        if self._since_checkpoint >= self.checkpoint_interval:
            self._since_checkpoint = 0.0
            with self.ctx.db.session() as s:
                last = s.execute(
                    select(AuditCheckpoint.tree_size)
                    .order_by(AuditCheckpoint.tree_size.desc())
                    .limit(1)
                ).scalar()
                head = s.get(AuditHead, 1)
                # A checkpoint appends its own entry: only sign when more came.
                if head is not None and head.seq > (last or 0) + 1:
                    audit.checkpoint(s, signer=self.ctx.checkpoint_signer())

    def _run(self) -> None:
        while not self._stop.wait(self.crl_interval):
            try:
                self.run_once()
            except Exception:  # keep publishing; the next round retries
                log.exception("publisher round failed")


def create_app(
    ctx: AppContext, *, crl_interval: float = 60.0, checkpoint_interval: float = 600.0
) -> FastAPI:
    """The fleetward API for ``ctx``; the publisher runs while the app runs."""
    publisher = Publisher(ctx, crl_interval=crl_interval, checkpoint_interval=checkpoint_interval)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        publisher.start()
        try:
            yield
        finally:
            publisher.stop()

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
    app.include_router(est.router)

    @app.get("/healthz", tags=["meta"])
    def healthz() -> dict[str, str]:
        """Liveness."""
        return {"status": "ok", "version": __version__}

    return app
