"""``fleetward up --demo``: a small simulated fleet beside the server it runs.

The demo waits for the API to answer, creates an admin token of tenant
``default`` in-process (``up`` holds the installation), and runs a
:class:`~fleetward.sim.fleet.SimFleet` in the ``test`` environment against
the API and the broker ``up`` started, so the API shows a living fleet.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from pathlib import Path

import httpx

from fleetward.api.context import AppContext
from fleetward.sim.fleet import Broker, SimFleet
from fleetward.sim.spec import FleetSpec
from fleetward.tenancy import service as tenancy

__all__ = ["Demo"]

log = logging.getLogger("fleetward.sim")

API_WAIT = 60.0  # seconds to wait for the API to answer


class Demo:
    """A demo fleet in a background thread (start, then stop at shutdown)."""

    def __init__(
        self,
        context: AppContext,
        *,
        api_url: str,
        broker: Broker,
        devices: int,
        directory: Path,
    ) -> None:
        self.context = context
        self.api_url = api_url
        self.spec = FleetSpec(
            devices=devices, prefix="demo", environment="test", product="demo-sensor",
            batches=min(2, devices), telemetry_interval=5.0,
        )  # fmt: skip
        self.broker = broker
        self.directory = directory
        self.fleet: SimFleet | None = None
        self.error: str | None = None
        self.ready = threading.Event()  # set once every demo device is connected
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sim-demo", daemon=True)

    def start(self) -> None:
        """Enroll and connect the demo fleet once the API answers (in the background)."""
        self._thread.start()

    def _token(self) -> str:
        with self.context.db.session() as s:
            tenant = tenancy.get_tenant_by_name(s, self.spec.tenant)
            _, token = tenancy.create_token(
                s,
                tenant=tenant,
                name=f"demo-fleet-{secrets.token_hex(3)}",
                role="admin",
                actor="fleetward-up-demo",
            )
        return token

    def _run(self) -> None:
        deadline = time.monotonic() + API_WAIT
        while not self._stop.is_set():
            try:
                httpx.get(f"{self.api_url}/api/v1/comms/broker", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    self.error = "the API did not answer"
                    log.warning("demo fleet: %s", self.error)
                    return
                self._stop.wait(0.2)
        try:
            fleet = SimFleet(
                self.spec,
                server_url=self.api_url,
                directory=self.directory,
                token=self._token(),
                broker=self.broker,
            )
            fleet.prepare()
            self.fleet = fleet
            if not self._stop.is_set():
                fleet.start(timeout=120)
                self.ready.set()
                log.warning("demo fleet: %d devices connected", self.spec.devices)
        except Exception as exc:  # the server keeps running without its demo
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("demo fleet failed: %s", self.error)

    def stop(self) -> None:
        """Disconnect the demo devices."""
        self._stop.set()
        self._thread.join(timeout=150)
        if self.fleet is not None:
            self.fleet.stop()
