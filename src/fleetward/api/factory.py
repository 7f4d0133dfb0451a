"""App factory for multi-worker uvicorn (each worker builds its own context)."""

from __future__ import annotations

import os

from fastapi import FastAPI

from fleetward.api.app import create_app
from fleetward.api.context import AppContext
from fleetward.config import Settings


def app() -> FastAPI:
    """Build the app from the environment (``FLEETWARD_HOME`` and intervals)."""
    ctx = AppContext.from_settings(Settings.load())
    return create_app(
        ctx,
        crl_interval=float(os.environ.get("FLEETWARD_CRL_INTERVAL", "10")),
        checkpoint_interval=float(os.environ.get("FLEETWARD_CHECKPOINT_INTERVAL", "600")),
        isolate_publisher=True,
    )
