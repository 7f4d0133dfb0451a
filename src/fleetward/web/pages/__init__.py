"""The console's pages, one module per area; :data:`ROUTERS` in navigation order."""

from fastapi import APIRouter

from fleetward.web.pages import posture

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (posture.router,)
