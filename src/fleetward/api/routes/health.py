"""``GET /healthz``: each background worker and the broker, from the app's stack.

200 when every worker is healthy and the broker (when this process runs one)
runs; 503 with the same body otherwise. Operator plane, no credentials:
``last_error`` names the exception type, with the detail only for
fleetward's own errors (whose text is written for users).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from fleetward import __version__
from fleetward.api import problems

__all__ = ["HealthOut", "router"]

router = APIRouter(tags=["meta"], responses=problems.PUBLIC)


class WorkerOut(BaseModel):
    """What one worker says about itself."""

    name: str
    interval: float
    running: bool
    paused: bool
    lease: str | None
    leader: bool | None
    rounds: int
    failures: int
    last_success: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None
    lag: float
    stale_after: float
    healthy: bool


class BrokerHealthOut(BaseModel):
    """The Mosquitto child of this process."""

    running: bool
    pid: int | None
    port: int  # the production listener
    listeners: dict[str, int]  # every device listener's port by environment
    service_port: int
    restarts: int
    healthy: bool


class HealthOut(BaseModel):
    """The health of this process's workers (and broker)."""

    version: str
    status: Literal["ok", "unhealthy"]
    workers: dict[str, WorkerOut]
    broker: BrokerHealthOut | None = None


@router.get(
    "/healthz",
    response_model=HealthOut,
    responses={
        503: {
            "model": HealthOut,
            "description": "a worker is overdue or stopped, or the broker is down",
        }
    },
)
def healthz(request: Request) -> JSONResponse:
    """Health: each background worker (running, last success, lag, last
    error) and the broker when this process runs one; 200 when all are
    healthy, 503 otherwise."""
    report = HealthOut.model_validate(
        {"version": __version__, **request.app.state.runtime.health().as_dict()}
    )
    return JSONResponse(
        # No broker member when this process runs none (as before the model).
        report.model_dump(mode="json", exclude={"broker"} if report.broker is None else None),
        status_code=200 if report.status == "ok" else 503,
    )
