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

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetward.comms.identities import SERVICE_IDENTITIES, ServiceIdentity
from fleetward.comms.mosquitto import MosquittoProcess, restart_if_exited
from fleetward.comms.mosquitto_conf import BrokerFiles, Listeners
from fleetward.comms.sync import BrokerSync, prepare
from fleetward.runtime.context import AppContext
from fleetward.runtime.worker import Every, PeriodicWorker

__all__ = [
    "BrokerHealth",
    "BrokerRuntime",
    "BrokerSyncWorker",
    "MosquittoSupervisor",
    "listeners_of",
]

SUPERVISE_EVERY_S = 0.5  # how soon an exited Mosquitto is restarted
INGEST_EVERY_S = 1.0  # how often the plugin's events are moved into the database


@dataclass(frozen=True)
class BrokerHealth:
    """Whether the Mosquitto child runs, where it listens, and how often it
    was restarted."""

    running: bool
    pid: int | None
    listeners: Mapping[str, int]  # device listener port by environment
    service_port: int
    restarts: int

    @property
    def port(self) -> int:
        """The production listener (the single port of earlier versions)."""
        return self.listeners["production"]

    @property
    def healthy(self) -> bool:
        return self.running

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "pid": self.pid,
            "port": self.port,
            "listeners": dict(self.listeners),
            "service_port": self.service_port,
            "restarts": self.restarts,
            "healthy": self.healthy,
        }


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
        ctx: The installation (its settings give the listeners:
            ``mqtt_host``, ``mqtt_test_port``, ``mqtt_production_port``,
            ``mqtt_drill_port``, ``mqtt_service_port``).
        root: The broker's directory (``<home>/broker`` in ``fleetward up``).
        listeners: Where to listen instead of the settings (tests pass free ports).
        interval: Seconds between sync rounds.
        identities: fleetward's own identities (default: its three jobs).
    """

    def __init__(
        self,
        ctx: AppContext,
        root: Path,
        *,
        listeners: Listeners | None = None,
        interval: float = 0.1,
        identities: Mapping[str, ServiceIdentity] = SERVICE_IDENTITIES,
    ) -> None:
        self.ctx = ctx
        self.root = root
        self.listeners = listeners or listeners_of(ctx)
        self.files = BrokerFiles(root)
        self.sync = BrokerSync(
            ctx.db, ctx.pki, self.files, service_pki=ctx.service_pki, identities=identities
        )
        self.mosquitto = MosquittoProcess(self.files, on_handshake_refused=self.sync.note_refused)
        self.sync_worker = BrokerSyncWorker(self.sync, interval=interval)
        self.supervisor = MosquittoSupervisor(self.mosquitto, port=self.listeners.service_port)
        self._started = False

    @property
    def host(self) -> str:
        """The listeners' address."""
        return self.listeners.host

    @property
    def ports(self) -> Mapping[str, int]:
        """The device listener's port of each environment."""
        return self.listeners.ports

    @property
    def service_port(self) -> int:
        """fleetward's own listener."""
        return self.listeners.service_port

    @property
    def port(self) -> int:
        """The test environment's device listener (where devices enrolled
        without an environment, as most tests do, connect)."""
        return self.listeners.ports["test"]

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
            service_pki=self.ctx.service_pki,
            listeners=self.listeners,
        )
        self.sync.reload = self.mosquitto.reload
        self.sync.refresh()
        self.mosquitto.start(port=self.service_port)
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
            listeners=dict(self.ports),
            service_port=self.service_port,
            restarts=self.restarts,
        )


def listeners_of(ctx: AppContext) -> Listeners:
    """The listeners the settings name."""
    s = ctx.settings
    return Listeners(
        host=s.mqtt_host,
        ports={
            "test": s.mqtt_test_port,
            "production": s.mqtt_production_port,
            "drill": s.mqtt_drill_port,
        },
        service_port=s.mqtt_service_port,
    )
