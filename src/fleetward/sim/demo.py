"""``fleetward up --demo``: a small simulated fleet beside the server it runs.

The demo waits for the API to answer, creates an admin token of tenant
``default`` in-process (``up`` holds the installation), and runs a
:class:`~fleetward.sim.fleet.SimFleet` in the ``test`` environment against
both API planes (enrollment on the operator plane, the rest on the device
plane, trusting the service CA) and the broker ``up`` started, so the API
shows a living fleet.

:meth:`Demo.advance` is one step towards that, called by the runtime until
the fleet is up (``ready``) or has given up (``error``).
"""

from __future__ import annotations

import logging
import secrets
import ssl
import threading
import time
from pathlib import Path

import httpx

from fleetward import tenancy
from fleetward.sim.fleet import Broker, SimFleet
from fleetward.sim.spec import FleetSpec
from fleetward.store import Database

__all__ = ["Demo"]

log = logging.getLogger("fleetward.sim")

API_WAIT = 60.0  # seconds to wait for the API to answer
FLEET_START_TIMEOUT = 120.0  # seconds for every demo device to connect


class Demo:
    """A demo fleet: enrolled and connected step by step, stopped at shutdown."""

    def __init__(
        self,
        db: Database,
        *,
        api_url: str,
        device_url: str,
        server_ca: Path,
        broker: Broker,
        devices: int,
        directory: Path,
    ) -> None:
        self.db = db
        self.api_url = api_url
        self.device_url = device_url
        self.server_ca = server_ca
        self.spec = FleetSpec(
            devices=devices, prefix="demo", environment="test", product="demo-sensor",
            batches=min(2, devices), telemetry_interval=5.0,
        )  # fmt: skip
        self.broker = broker
        self.directory = directory
        self.fleet: SimFleet | None = None
        self.error: str | None = None
        self.ready = threading.Event()  # set once every demo device is connected
        self._cancelled = threading.Event()
        self._deadline: float | None = None

    @property
    def done(self) -> bool:
        """Whether nothing is left to do (up, failed or cancelled)."""
        return self.ready.is_set() or self.error is not None or self._cancelled.is_set()

    def _token(self) -> str:
        with self.db.session() as s:
            tenant = tenancy.get_tenant_by_name(s, self.spec.tenant)
            _, token = tenancy.create_token(
                s,
                tenant=tenant,
                name=f"demo-fleet-{secrets.token_hex(3)}",
                role="admin",
                actor="fleetward-up-demo",
            )
        return token

    def advance(self) -> None:
        """One step: wait for the API (one request), then enroll and connect
        the fleet (a long step, up to :data:`FLEET_START_TIMEOUT`). A failure
        is kept in ``error``; the server runs on without its demo."""
        if self.done:
            return
        if self._deadline is None:
            self._deadline = time.monotonic() + API_WAIT
        try:
            httpx.get(
                f"{self.api_url}/api/v1/comms/broker",
                timeout=2,
                verify=ssl.create_default_context(cafile=str(self.server_ca)),
            ).raise_for_status()
        except httpx.HTTPError:
            if time.monotonic() > self._deadline:
                self.error = "the API did not answer"
                log.warning("demo fleet: %s", self.error)
            return
        try:
            fleet = SimFleet(
                self.spec,
                server_url=self.api_url,
                device_url=self.device_url,
                server_ca=self.server_ca,
                directory=self.directory,
                token=self._token(),
                broker=self.broker,
            )
            fleet.prepare()
            self.fleet = fleet
            if not self._cancelled.is_set():
                fleet.start(timeout=FLEET_START_TIMEOUT)
                self.ready.set()
                log.warning("demo fleet: %d devices connected", self.spec.devices)
        except Exception as exc:  # the server keeps running without its demo
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("demo fleet failed: %s", self.error)

    def cancel(self) -> None:
        """Do no more steps (a step in flight finishes)."""
        self._cancelled.set()

    def stop(self) -> None:
        """Disconnect the demo devices."""
        self.cancel()
        if self.fleet is not None:
            self.fleet.stop()
