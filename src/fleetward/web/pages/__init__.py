"""The console's pages, one module per area; :data:`ROUTERS` in navigation order."""

from fastapi import APIRouter

from fleetward.web.pages import audit, campaigns, devices, incidents, posture, trustmap, vulns

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    posture.router,
    devices.router,
    campaigns.router,
    incidents.router,
    vulns.router,
    trustmap.router,
    audit.router,
)
