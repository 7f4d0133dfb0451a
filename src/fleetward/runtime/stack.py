"""The stack: every worker (and the broker) one fleetward process runs.

``fleetward serve`` runs :func:`serve_stack` in each API process: the
publisher and the TUF refresher, both under leases so that N processes (or
hosts) do the work once. ``fleetward up`` runs :func:`up_stack`: the same,
plus Mosquitto with its sync worker and supervisor, the campaign driver,
detection, the compliance tracker, telemetry ingest and, with ``--demo``, a
simulated fleet. (With ``up --workers N`` the API processes run the
publishers and the ``up`` process the rest.)

A :class:`Stack` starts and stops them together, lets tests pause and step
any of them by name, and reports their health (``/healthz``, and the
metrics endpoint through :meth:`Stack.health`, which only reads).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from fleetward.comms.mosquitto_conf import Listeners
from fleetward.runtime.broker import BrokerHealth, BrokerRuntime
from fleetward.runtime.context import AppContext
from fleetward.runtime.publisher import Publisher, TufRefresher
from fleetward.runtime.worker import PeriodicWorker, WorkerHealth
from fleetward.runtime.workers import (
    CampaignDriver,
    ComplianceTracker,
    DemoFleet,
    DetectionRunner,
    IngestWorker,
    TrustMapRunner,
    VulnsRunner,
)
from fleetward.sim import Broker

__all__ = ["Stack", "StackHealth", "serve_stack", "up_stack"]

W = TypeVar("W", bound=PeriodicWorker)


@dataclass(frozen=True)
class StackHealth:
    """Every worker's health and the broker's (``None``: no broker here)."""

    workers: tuple[WorkerHealth, ...]
    broker: BrokerHealth | None

    @property
    def healthy(self) -> bool:
        """Every worker healthy, and the broker running if there is one."""
        return all(w.healthy for w in self.workers) and (self.broker is None or self.broker.healthy)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (what ``/healthz`` answers)."""
        out: dict[str, Any] = {
            "status": "ok" if self.healthy else "unhealthy",
            "workers": {w.name: w.as_dict() for w in self.workers},
        }
        if self.broker is not None:
            out["broker"] = self.broker.as_dict()
        return out


class Stack:
    """The workers of one process, started, paused and stopped together.

    Args:
        workers: Workers to run.
        broker: A broker to start first (its workers join the stack's).
    """

    def __init__(
        self, workers: Iterable[PeriodicWorker] = (), *, broker: BrokerRuntime | None = None
    ) -> None:
        self._own: list[PeriodicWorker] = list(workers)
        self.broker = broker

    def add(self, worker: W) -> W:
        """Add a worker (started and stopped with the others)."""
        if any(w.name == worker.name for w in self.workers):
            raise ValueError(f"a worker named {worker.name} is already in the stack")
        self._own.append(worker)
        return worker

    @property
    def workers(self) -> list[PeriodicWorker]:
        """Every worker, the broker's first."""
        return [*(self.broker.workers if self.broker else []), *self._own]

    def worker(self, name: str) -> PeriodicWorker:
        """The worker called ``name``.

        Raises:
            KeyError: there is none.
        """
        for w in self.workers:
            if w.name == name:
                return w
        raise KeyError(f"no worker {name!r} (have: {', '.join(w.name for w in self.workers)})")

    def _select(self, names: Sequence[str]) -> list[PeriodicWorker]:
        return [self.worker(n) for n in names] if names else self.workers

    def start(self) -> None:
        """Start the broker (if any), then every worker; starting twice does nothing.

        Raises:
            BrokerError: Mosquitto did not come up.
            PluginBuildError: the plugin cannot be built here.
        """
        if self.broker is not None:
            self.broker.start()
        for w in self._own:
            w.start()

    def stop(self) -> None:
        """Stop every worker (last started first), then the broker."""
        for w in reversed(self._own):
            w.stop()
        if self.broker is not None:
            self.broker.stop()

    def pause(self, *names: str) -> None:
        """Pause the named workers (all without names); see :meth:`PeriodicWorker.pause`."""
        for w in self._select(names):
            w.pause()

    def resume(self, *names: str) -> None:
        """Resume the named workers (all without names)."""
        for w in self._select(names):
            w.resume()

    @contextmanager
    def paused(self, *names: str) -> Iterator[None]:
        """The named workers (all without names) paused inside the block."""
        selected = self._select(names)
        was = {w.name for w in selected if w.health().paused}
        for w in selected:
            w.pause()
        try:
            yield
        finally:
            for w in selected:
                if w.name not in was:
                    w.resume()

    def step(self, name: str) -> bool:
        """One round of the worker ``name`` now; see :meth:`PeriodicWorker.run_once`."""
        return self.worker(name).run_once()

    def health(self) -> StackHealth:
        """A read-only snapshot of every worker and the broker."""
        return StackHealth(
            workers=tuple(w.health() for w in self.workers),
            broker=self.broker.health() if self.broker is not None else None,
        )


def serve_stack(
    ctx: AppContext,
    *,
    crl_interval: float = 10.0,
    checkpoint_interval: float = 600.0,
    isolate: bool = False,
) -> Stack:
    """What every API process runs: the publisher and the TUF refresher."""
    return Stack(
        [
            Publisher(
                ctx,
                crl_interval=crl_interval,
                checkpoint_interval=checkpoint_interval,
                isolate=isolate,
            ),
            TufRefresher(ctx),
        ]
    )


def up_stack(
    ctx: AppContext,
    *,
    api_url: str,
    listeners: Listeners | None = None,
    crl_interval: float = 10.0,
    checkpoint_interval: float = 600.0,
    publishers: bool = True,
    demo_devices: int | None = None,
) -> Stack:
    """What ``fleetward up`` runs beside the API.

    Args:
        ctx: The installation (the broker listens where its settings say:
            ``mqtt_host`` and the ``mqtt_*_port`` of each environment and
            of the service listener).
        api_url: Where the demo fleet enrolls and learns its broker
            listeners (``GET /api/v1/comms/broker``).
        listeners: Where the broker listens instead (tests pass free ports).
        crl_interval: The publisher's promise.
        checkpoint_interval: Seconds between audit checkpoints.
        publishers: Include the publisher and the TUF refresher (``False``
            when separate API processes run them).
        demo_devices: Also run a simulated fleet of this many devices.
    """
    broker = BrokerRuntime(ctx, ctx.settings.home / "broker", listeners=listeners)
    stack = (
        serve_stack(
            ctx, crl_interval=crl_interval, checkpoint_interval=checkpoint_interval, isolate=True
        )
        if publishers
        else Stack()
    )
    stack.broker = broker
    if publishers:
        # A trust change wakes the publisher, so a revoked certificate also
        # fails at the TLS handshake within about one sync interval.
        broker.sync.on_change = stack.worker("publisher").wake
    stack.add(CampaignDriver(ctx))
    stack.add(DetectionRunner(ctx))
    stack.add(VulnsRunner(ctx))
    stack.add(TrustMapRunner(ctx))
    stack.add(IngestWorker(ctx.db, ctx.settings.home))
    stack.add(ComplianceTracker(ctx))
    if demo_devices:
        stack.add(
            DemoFleet(
                ctx.db,
                api_url=api_url,
                device_url=f"https://{ctx.settings.device_host}:{ctx.settings.device_port}",
                server_ca=ctx.service_pki.ca_cert,
                broker=Broker(
                    host=broker.host,
                    port=broker.ports["production"],
                    ca=broker.files.broker_ca,
                    listeners=broker.ports,
                ),
                devices=demo_devices,
                directory=ctx.settings.home / "sim-demo",
            )
        )
    return stack
