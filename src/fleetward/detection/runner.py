"""The detection loop that ``fleetward up`` runs beside the API."""

from __future__ import annotations

import logging
import threading
import time

from fleetward.api.context import AppContext
from fleetward.attestation import service as attestation
from fleetward.detection import service
from fleetward.telemetry import service as telemetry

__all__ = ["DetectionRunner"]

log = logging.getLogger("fleetward.detection")
SWEEP_SECONDS = 60.0  # enrollment signals, silent devices, expiring certificates


class DetectionRunner:
    """Runs :func:`service.run` every ``interval`` seconds in a daemon thread,
    and prunes events past retention and spent nonces once an hour."""

    def __init__(self, ctx: AppContext, *, interval: float = 0.5) -> None:
        self.ctx = ctx
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    def _run(self) -> None:
        last_prune = last_sweep = 0.0
        while not self._stop.wait(self.interval):
            try:
                with self.ctx.db.session() as s:
                    service.run(s)
                self.rounds += 1
                if time.monotonic() - last_sweep > SWEEP_SECONDS:
                    last_sweep = time.monotonic()
                    with self.ctx.db.session() as s:
                        service.sweep(s)
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    with self.ctx.db.session() as s:
                        telemetry.prune(s)
                        attestation.prune_nonces(s)
            except Exception:  # keep detecting; the next round retries
                log.exception("detection round failed")

    def start(self) -> None:
        """Start the loop."""
        self._thread = threading.Thread(target=self._run, daemon=True, name="detection")
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
