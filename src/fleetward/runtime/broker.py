"""The broker that ``fleetward up`` runs: Mosquitto, its sync worker, its supervisor.

:class:`BrokerRuntime` prepares the broker's directory
(:func:`fleetward.comms.sync.prepare`), starts Mosquitto as a child
(:class:`fleetward.comms.mosquitto.MosquittoProcess`) and runs two workers:

- ``broker-sync`` (every 0.1 s): :meth:`BrokerSync.refresh` (table, CA and
  CRL bundles, SIGHUP on a CRL change), and once a second
  :meth:`BrokerSync.ingest_events`. No lease: every broker needs its own
  files. It builds no CRL: the :class:`~fleetward.runtime.publisher.Publisher`
  does, once for all processes.
- ``mosquitto`` (every 0.5 s): :func:`fleetward.comms.mosquitto.restart_if_exited`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fleetward.comms.mosquitto import MosquittoProcess, restart_if_exited
from fleetward.comms.mosquitto_conf import DEFAULT_MQTT_PORT, DEFAULT_SERVICE_PORT, BrokerFiles
from fleetward.comms.sync import BrokerSync, prepare
from fleetward.runtime.context import AppContext
from fleetward.runtime.worker import Every, PeriodicWorker

__all__ = ["BrokerHealth", "BrokerRuntime", "BrokerSyncWorker", "MosquittoSupervisor"]

SUPERVISE_EVERY_S = 0.5  # how soon an exited Mosquitto is restarted
INGEST_EVERY_S = 1.0  # how often the plugin's events are moved into the database


@dataclass(frozen=True)
class BrokerHealth:
    """Whether the Mosquitto child runs, and how often it was restarted."""

    running: bool
    pid: int | None
    port: int
    service_port: int
    restarts: int

    @property
    def healthy(self) -> bool:
        return self.running

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "healthy": self.healthy}


class BrokerSyncWorker(PeriodicWorker):
    """Runs the sync round (see the module docstring)."""

    def __init__(self, sync: BrokerSync, *, interval: float = 0.1) -> None:
        super().__init__("broker-sync", interval=interval, max_backoff=5.0)
        self.sync = sync
        self._ingest = Every(INGEST_EVERY_S, now=True)

    def work(self) -> None:
        self.sync.refresh()
        if self._ingest.due():
            self.sync.ingest_events()


class MosquittoSupervisor(PeriodicWorker):
    """Restarts Mosquitto when it exits; counts the restarts."""

    def __init__(self, process: MosquittoProcess, *, port: int) -> None:
        super().__init__("mosquitto", interval=SUPERVISE_EVERY_S, jitter=0.0, max_backoff=5.0)
        self.process = process
        self.port = port
        self.restarts = 0

    def work(self) -> None:
        if restart_if_exited(self.process, port=self.port):
            self.restarts += 1


class BrokerRuntime:
    """A prepared broker directory, a Mosquitto child and its two workers.

    Args:
        ctx: The installation.
        root: The broker's directory (``<home>/broker`` in ``fleetward up``).
        host: Listener address.
        port: Device listener (TLS, client certificates).
        service_port: fleetward's own listener.
        interval: Seconds between sync rounds.
    """

    def __init__(
        self,
        ctx: AppContext,
        root: Path,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_MQTT_PORT,
        service_port: int = DEFAULT_SERVICE_PORT,
        interval: float = 0.1,
    ) -> None:
        self.ctx = ctx
        self.root = root
        self.host = host
        self.port = port
        self.service_port = service_port
        self.files = BrokerFiles(root)
        self.sync = BrokerSync(ctx.db, ctx.pki, self.files)
        self.mosquitto = MosquittoProcess(self.files, on_handshake_refused=self.sync.note_refused)
        self.sync_worker = BrokerSyncWorker(self.sync, interval=interval)
        self.supervisor = MosquittoSupervisor(self.mosquitto, port=port)
        self._started = False

    @property
    def workers(self) -> list[PeriodicWorker]:
        """The broker's workers (for health and for tests to pause or step)."""
        return [self.sync_worker, self.supervisor]

    @property
    def restarts(self) -> int:
        """Times the supervisor brought Mosquitto back."""
        return self.supervisor.restarts

    def start(self) -> None:
        """Prepare the files, start Mosquitto and the workers (once).

        Raises:
            BrokerError: Mosquitto did not come up.
            PluginBuildError: the plugin cannot be built here.
        """
        if self._started:
            return
        self._started = True
        prepare(
            self.ctx.db,
            self.ctx.pki,
            self.root,
            host=self.host,
            port=self.port,
            service_port=self.service_port,
        )
        self.sync.reload = self.mosquitto.reload
        self.sync.refresh()
        self.mosquitto.start(port=self.port)
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        """Stop the workers and the broker."""
        for worker in self.workers:
            worker.stop()
        self.mosquitto.stop()

    def health(self) -> BrokerHealth:
        """The child process's state."""
        proc = self.mosquitto.proc
        running = proc is not None and proc.poll() is None
        return BrokerHealth(
            running=running,
            pid=proc.pid if running and proc is not None else None,
            port=self.port,
            service_port=self.service_port,
            restarts=self.restarts,
        )
