"""FastAPI application assembly.

The app runs a :class:`~fleetward.runtime.stack.Stack` while it runs (the
publisher and the TUF refresher by default, see
:func:`~fleetward.runtime.stack.serve_stack`; everything ``fleetward up``
runs when it passes its stack) and answers ``/healthz`` from its health (``api/routes/health.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from fleetward import __version__
from fleetward.api import access, metrics, problems
from fleetward.api.routes import attestation as attestation_routes
from fleetward.api.routes import audit as audit_routes
from fleetward.api.routes import comms as comms_routes
from fleetward.api.routes import detection as detection_routes
from fleetward.api.routes import est
from fleetward.api.routes import health as health_routes
from fleetward.api.routes import identity as identity_routes
from fleetward.api.routes import ota as ota_routes
from fleetward.api.routes import provisioning as provisioning_routes
from fleetward.api.routes import response as response_routes
from fleetward.api.routes import telemetry as telemetry_routes
from fleetward.api.routes import tenancy as tenancy_routes
from fleetward.runtime.context import AppContext
from fleetward.runtime.stack import Stack, serve_stack

__all__ = ["create_app"]


def create_app(
    ctx: AppContext,
    *,
    runtime: Stack | None = None,
    crl_interval: float = 10.0,
    checkpoint_interval: float = 600.0,
    isolate_publisher: bool = False,
) -> FastAPI:
    """The fleetward API for ``ctx``; ``runtime`` runs while the app runs.

    Args:
        ctx: The installation.
        runtime: The workers to run (default: :func:`serve_stack` with the
            intervals below). Pass ``Stack()`` for none; pause a stack before
            the app starts to step its workers by hand (tests).
        crl_interval: The default publisher's promise (seconds).
        checkpoint_interval: Seconds between its audit checkpoints.
        isolate_publisher: Build CRLs in a child process.
    """
    if runtime is None:
        runtime = serve_stack(
            ctx,
            crl_interval=crl_interval,
            checkpoint_interval=checkpoint_interval,
            isolate=isolate_publisher,
        )
    stack = runtime

    @asynccontextmanager
    async def lifespan(running: FastAPI) -> AsyncIterator[None]:
        stack.start()
        try:
            yield
        finally:
            stack.stop()
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
    app.state.runtime = stack
    problems.install(app)
    access.install(app)
    if ctx.settings.metrics_enabled:
        metrics.install(app, workers=lambda: stack.workers)
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
    app.include_router(health_routes.router)
    return app
