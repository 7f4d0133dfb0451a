"""FastAPI application assembly: two planes, two apps.

- The **operator plane** (``plane="operator"``): the REST API under
  ``/api/v1`` (token-authenticated), its OpenAPI document and docs, the
  operator console (``/``, :mod:`fleetward.web`, signed in at ``/login``),
  ``/metrics``, ``/healthz`` and broker discovery. Loopback by default,
  optional TLS.
- The **device plane** (``plane="device"``): EST, OCSP, CRLs, CA
  certificates, the TUF repository, attestation, renewal, the device
  telemetry post, broker discovery and ``/healthz``. Served over TLS only
  (:mod:`fleetward.api.tls`); the routes that act as a device take its TLS
  client certificate (:mod:`fleetward.api.device_auth`).

Neither serves the other's routes (404 there). :func:`create_planes` builds
both around one context: the operator app runs the
:class:`~fleetward.runtime.stack.Stack` while it runs (the publisher and the
TUF refresher by default, see :func:`~fleetward.runtime.stack.serve_stack`;
everything ``fleetward up`` runs when it passes its stack), the device app
shares it without running it; both answer ``/healthz`` from its health
(``api/routes/health.py``). docs/planes.md lists every listener.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal, get_args

from fastapi import FastAPI

from fleetward import __version__, web
from fleetward.api import access, gate, limits, metrics, problems
from fleetward.api import openapi as openapi_document
from fleetward.api.routes import attestation as attestation_routes
from fleetward.api.routes import audit as audit_routes
from fleetward.api.routes import comms as comms_routes
from fleetward.api.routes import console as console_routes
from fleetward.api.routes import detection as detection_routes
from fleetward.api.routes import device as device_routes
from fleetward.api.routes import docs as docs_routes
from fleetward.api.routes import est
from fleetward.api.routes import health as health_routes
from fleetward.api.routes import identity as identity_routes
from fleetward.api.routes import ota as ota_routes
from fleetward.api.routes import provisioning as provisioning_routes
from fleetward.api.routes import response as response_routes
from fleetward.api.routes import telemetry as telemetry_routes
from fleetward.api.routes import tenancy as tenancy_routes
from fleetward.api.routes import trustmap as trustmap_routes
from fleetward.api.routes import vulns as vulns_routes
from fleetward.runtime.context import AppContext
from fleetward.runtime.stack import Stack, serve_stack

__all__ = ["PLANES", "Plane", "create_app", "create_planes"]

Plane = Literal["operator", "device"]
PLANES: tuple[str, ...] = get_args(Plane)


def create_app(
    ctx: AppContext,
    *,
    plane: Plane = "operator",
    runtime: Stack | None = None,
    run_runtime: bool = True,
    crl_interval: float = 10.0,
    checkpoint_interval: float = 600.0,
    isolate_publisher: bool = False,
) -> FastAPI:
    """One plane of the fleetward API for ``ctx``; ``runtime`` runs while the app runs.

    Args:
        ctx: The installation.
        plane: ``operator`` or ``device`` (see the module docstring).
        runtime: The workers to run (default: :func:`serve_stack` with the
            intervals below). Pass ``Stack()`` for none; pause a stack before
            the app starts to step its workers by hand (tests).
        run_runtime: Start and stop ``runtime`` with the app; ``False`` when
            another app (the other plane) runs it and this one only reports
            its health.
        crl_interval: The default publisher's promise (seconds).
        checkpoint_interval: Seconds between its audit checkpoints.
        isolate_publisher: Build CRLs in a child process.
    """
    if plane not in PLANES:
        raise ValueError(f"unknown plane {plane!r}")
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
        if run_runtime:
            stack.start()
        try:
            yield
        finally:
            if run_runtime:
                stack.stop()
            for name in ("command_sender", "ota_sender"):  # one broker identity each
                sender = getattr(running.state, name, None)
                if sender is not None:
                    sender.close()

    operator = plane == "operator"
    app = FastAPI(
        title="fleetward" if operator else "fleetward device plane",
        version=__version__,
        summary="Trust plane for device fleets",
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json" if operator else None,
        docs_url=None,  # routes/docs.py serves it from the package (no CDN)
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.runtime = stack
    app.state.plane = plane
    problems.install(app)
    openapi_document.install(app)  # security and every problem answer, centrally
    limits.install(app)  # inside the access log: refusals get a request id and a line
    gate.install(app)  # authentication before the body (and before its size check)
    access.install(app)
    if operator:
        if ctx.settings.metrics_enabled:
            metrics.install(app, workers=lambda: stack.workers)
        app.include_router(docs_routes.router)
        app.include_router(tenancy_routes.router)
        app.include_router(identity_routes.router)
        app.include_router(audit_routes.router)
        app.include_router(provisioning_routes.router)
        app.include_router(comms_routes.router)
        app.include_router(comms_routes.public)
        app.include_router(ota_routes.router)
        app.include_router(detection_routes.router)
        app.include_router(telemetry_routes.router)
        app.include_router(response_routes.router)
        app.include_router(vulns_routes.router)
        app.include_router(trustmap_routes.router)
        app.include_router(console_routes.router)
        app.include_router(web.router)
    else:
        app.include_router(est.router)
        app.include_router(identity_routes.public)
        app.include_router(device_routes.router)
        app.include_router(attestation_routes.router)
        app.include_router(comms_routes.public)
        app.include_router(ota_routes.public)
    app.include_router(health_routes.router)
    return app


def create_planes(
    ctx: AppContext,
    *,
    runtime: Stack | None = None,
    crl_interval: float = 10.0,
    checkpoint_interval: float = 600.0,
    isolate_publisher: bool = False,
) -> tuple[FastAPI, FastAPI]:
    """The operator app (which runs ``runtime``) and the device app (which
    shares it), for one process serving both planes."""
    operator = create_app(
        ctx,
        plane="operator",
        runtime=runtime,
        crl_interval=crl_interval,
        checkpoint_interval=checkpoint_interval,
        isolate_publisher=isolate_publisher,
    )
    device = create_app(ctx, plane="device", runtime=operator.state.runtime, run_runtime=False)
    return operator, device
