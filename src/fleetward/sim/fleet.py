"""A simulated fleet in one process: many real agents on one asyncio loop.

:class:`SimFleet` enrolls its devices (see :mod:`fleetward.sim.enroll`),
then runs each as a :class:`fleetward.agent.mqtt.DeviceAgent` whose paho
client is driven by one asyncio loop in a background thread (see
:mod:`fleetward.sim._device`). Blocking work, TUF updates (python-tuf and
httpx are synchronous) and attestation, runs on one small shared
``ThreadPoolExecutor`` instead of a thread per device. Callers use a
synchronous API; every call that touches device state runs on the loop.

Times in snapshots are ``time.monotonic()``: the same clock in every
process of a Linux host, so a drill can compare them with its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import random
import resource
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from fleetward.agent import (
    AgentConfig,
    DeviceAgent,
    OtaClient,
    attest_device,
    client_context,
    load_identity,
    write_durably,
)
from fleetward.errors import InvalidInputError
from fleetward.sim._device import Driver, Endpoint, SimDevice
from fleetward.sim.enroll import SimulationError, enroll_fleet, keystore, read_plan
from fleetward.sim.spec import FleetSpec, device_ids, plan, tampered_bootloader

__all__ = ["Broker", "SimFleet", "raise_nofile", "summary"]

T = TypeVar("T")

EXECUTOR_WORKERS = 4  # default pool shared by all devices of the process (updates, attestation)
MAX_EXECUTOR_WORKERS = 256
FDS_PER_DEVICE = 2  # its socket, and headroom for files opened during updates


class Broker:
    """Where devices connect: host, port and the CA of the broker's certificate,
    and the listener of each environment (``listeners``: environment to port,
    on ``host``; a device connects to its own environment's,
    :meth:`for_environment`)."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ca: Path,
        listeners: Mapping[str, int] | None = None,
        hosts: Mapping[str, str] | None = None,
    ) -> None:
        self.host, self.port, self.ca = host, port, ca
        self.listeners = dict(listeners or {})
        self.hosts = dict(hosts or {})

    def for_environment(self, environment: str) -> Broker:
        """The listener of ``environment`` (this one when none is known)."""
        port = self.listeners.get(environment)
        if port is None:
            return self
        return Broker(host=self.hosts.get(environment, self.host), port=port, ca=self.ca)

    @classmethod
    def announced(
        cls, server_url: str, *, directory: Path, verify: ssl.SSLContext | bool = True
    ) -> Broker:
        """What the server announces at ``/api/v1/comms/broker`` (its CA is
        saved in ``directory``); ``verify``: the TLS context of an HTTPS
        ``server_url`` (the device plane trusts the service CA)."""
        try:
            resp = httpx.get(
                f"{server_url.rstrip('/')}/api/v1/comms/broker", timeout=30, verify=verify
            )
            resp.raise_for_status()
            info = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise SimulationError(f"cannot learn where the broker is: {exc}") from exc
        ca = directory / "broker-ca.pem"
        directory.mkdir(parents=True, exist_ok=True)
        write_durably(ca, str(info["ca_pem"]))
        try:
            listeners = info.get("listeners") or {}
            return cls(
                host=str(info["host"]),
                port=int(info["port"]),
                ca=ca,
                listeners={env: int(v["port"]) for env, v in listeners.items()},
                hosts={env: str(v["host"]) for env, v in listeners.items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SimulationError(f"the server announced no usable broker: {exc}") from exc


def _check_workers(workers: int) -> None:
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise TypeError("executor_workers must be an int")
    if not 1 <= workers <= MAX_EXECUTOR_WORKERS:
        raise InvalidInputError(f"executor_workers must be between 1 and {MAX_EXECUTOR_WORKERS}")


def raise_nofile(needed: int) -> int:
    """Raise this process's open-file limit towards ``needed`` (up to the
    hard limit); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class SimFleet:
    """N simulated devices in this process (see the module docstring).

    Args:
        spec: the fleet.
        server_url: the operator plane (enrollment, with ``token``).
        device_url: the device plane (HTTPS): renewal, attestation, TUF,
            broker discovery; each device presents its own certificate
            where it acts as itself (renewal, attestation).
        server_ca: the service CA the device plane's certificate chains to.
        directory: where the fleet's devices live (reused by a later start).
        token: an admin token, to enroll devices the directory lacks.
        broker: where to connect (default: what the device plane announces).
        only: run just these devices of the fleet (a process's share); they
            must be prepared already (by whoever runs the whole fleet).
        backoff_base: first reconnection window (seconds, full jitter).
        backoff_cap: largest reconnection window.
        executor_workers: threads shared by the process's devices for
            updates and attestation (each device still runs one job at a time).
    """

    def __init__(
        self,
        spec: FleetSpec,
        *,
        server_url: str,
        device_url: str,
        server_ca: Path,
        directory: Path,
        token: str | None = None,
        broker: Broker | None = None,
        only: Sequence[str] | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        executor_workers: int = EXECUTOR_WORKERS,
    ) -> None:
        if not isinstance(spec, FleetSpec):
            raise TypeError("spec must be a FleetSpec")
        _check_workers(executor_workers)
        self._workers = executor_workers
        self.spec = spec
        self.server_url = server_url.rstrip("/")
        self.device_url = device_url.rstrip("/")
        self.server_ca = server_ca
        self.directory = directory
        self._token = token
        self._broker = broker
        self._public_tls: ssl.SSLContext | None = None  # the device plane, no certificate
        known = set(device_ids(spec))
        if only is not None and not set(only) <= known:
            raise InvalidInputError("only: ids that are not in the fleet")
        self.ids: list[str] = list(only) if only is not None else device_ids(spec)
        self._share = only is not None
        self._backoff = (backoff_base, backoff_cap)
        self._devices: dict[str, SimDevice] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._driver: Driver | None = None
        self._misc: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._prepared = False

    def __enter__(self) -> SimFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- setup ----------------------------------------------------------------

    def prepare(self, *, on_progress: Callable[[int, int], object] | None = None) -> list[str]:
        """Enroll what is missing and lay out every device; returns the ids
        enrolled now (see :func:`fleetward.sim.enroll.enroll_fleet`)."""
        enrolled = enroll_fleet(
            self.spec,
            server_url=self.server_url,
            device_url=self.device_url,
            server_ca=self.server_ca,
            token=self._token,
            directory=self.directory,
            on_progress=on_progress,
        )
        self._prepared = True
        return enrolled

    def _build(self, loop: asyncio.AbstractEventLoop, broker: Broker) -> None:
        store = keystore(self.directory)
        plans = {p.device_id: p for p in plan(self.spec)}
        slow = self.spec.slow_link_ms / 1000.0
        if self._executor is None:
            raise RuntimeError("broken invariant, expected: self._executor is not None")
        # TUF is public on the device plane: one context for every device
        # (thousands of per-device contexts would each hold a key).
        public = self._public()
        for device_id in self.ids:
            folder = self.directory / "devices" / device_id
            p = plans[device_id]
            health: Callable[[Path], bool] | None = (
                (lambda _image: False) if p.fail_health else None
            )
            ota = OtaClient(
                folder,
                server_url=self.device_url,
                tenant=self.spec.tenant,
                hardware=self.spec.hardware,
                initial_version=self.spec.initial_version,
                health_check=health,
                executor=self._executor,
                tls=lambda: public,
            )
            config = AgentConfig(
                directory=folder,
                keystore=store,
                broker_host=broker.host,
                broker_port=broker.port,
                broker_ca=broker.ca,
                # Renewal only on the server's command (certificates outlive any
                # drill, so no renewal traffic otherwise: renew_within is 0).
                server_url=self.device_url,
                server_ca=self.server_ca,
                renew_within=dt.timedelta(0),
                telemetry_interval=self.spec.telemetry_interval,
                backoff_base=self._backoff[0],
                backoff_cap=self._backoff[1],
            )
            agent = DeviceAgent(config, ota=ota)
            recorded = read_plan(folder)
            dev = SimDevice(
                agent,
                online=not p.offline,
                slow=slow,
                batch=str(recorded.get("labels", {}).get("batch", f"b{p.batch}")),
                version=ota.slots.installed_version,
                rng=random.Random(f"{self.spec.seed}/{device_id}"),  # noqa: S311 - jitter
            )
            ota.bind(self._reporter(loop, dev))
            self._devices[device_id] = dev

    @staticmethod
    def _reporter(
        loop: asyncio.AbstractEventLoop, dev: SimDevice
    ) -> Callable[[dict[str, Any]], object]:
        def report(step: dict[str, Any]) -> None:
            dev.agent.enqueue("state/ota", step)  # thread-safe: the outbox has a lock
            loop.call_soon_threadsafe(dev.record_step, step)

        return report

    @staticmethod
    def _reading(dev: SimDevice) -> dict[str, Any]:
        return {"temp": round(21.0 + dev.rng.gauss(0.0, 1.5), 2), "version": dev.version}

    def _public(self) -> ssl.SSLContext:
        """The device plane's TLS without a client certificate (TUF, discovery)."""
        if self._public_tls is None:
            self._public_tls = ssl.create_default_context(cafile=str(self.server_ca))
        return self._public_tls

    # -- running --------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], *, timeout: float | None = None) -> T:
        if self._loop is None:
            coro.close()
            raise SimulationError("the fleet is not running: start() it first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self, *, timeout: float = 120.0) -> None:
        """Connect the online devices and wait until all of them are connected.

        Raises:
            SimulationError: devices did not connect within ``timeout``.
        """
        if self._loop is not None:
            raise SimulationError("the fleet is running already")
        if not self._prepared and not self._share:
            self.prepare()
        missing = [
            d
            for d in self.ids
            if not (self.directory / "devices" / d / "boot" / "kernel.bin").exists()
        ]
        if missing:
            raise SimulationError(f"{len(missing)} devices are not prepared, e.g. {missing[0]}")
        broker = self._broker or Broker.announced(
            self.device_url, directory=self.directory, verify=self._public()
        )
        broker = broker.for_environment(self.spec.environment)  # its own listener only
        raise_nofile(len(self.ids) * FDS_PER_DEVICE + 256)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self._workers, thread_name_prefix="sim-work"
        )
        loop = asyncio.new_event_loop()
        self._build(loop, broker)
        self._driver = Driver(
            loop,
            endpoint=Endpoint(broker.host, broker.port),
            reading=self._reading,
            interval=self.spec.telemetry_interval,
            backoff_base=self._backoff[0],
            backoff_cap=self._backoff[1],
            executor=self._executor,
        )
        self._driver.devices = list(self._devices.values())
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="sim-loop", daemon=True)
        self._thread.start()
        self._call(self._launch(list(self._devices.values())))
        self.wait_connected(timeout=timeout)

    async def _launch(self, devices: list[SimDevice]) -> None:
        if self._driver is None:
            raise RuntimeError("broken invariant, expected: self._driver is not None")
        if self._misc is None:
            self._misc = asyncio.get_running_loop().create_task(self._driver.misc())
        for dev in devices:
            if dev.online:
                self._driver.launch(dev)

    def wait_connected(self, ids: Iterable[str] | None = None, *, timeout: float = 60.0) -> None:
        """Wait until the online devices among ``ids`` (default: all) are connected.

        Raises:
            SimulationError: some are not connected after ``timeout`` seconds.
        """
        wanted = set(self._select(ids))
        deadline = time.monotonic() + timeout
        while True:
            waiting = [
                d["device_id"]
                for d in self.snapshot()
                if d["device_id"] in wanted and d["online"] and not d["connected"]
            ]
            if not waiting:
                return
            if time.monotonic() > deadline:
                cut = sum(1 for d in self.snapshot() if d["cut_off"] and d["device_id"] in wanted)
                raise SimulationError(
                    f"{len(waiting)} devices did not connect within {timeout:g} s "
                    f"({cut} refused by the broker), e.g. {waiting[0]}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Disconnect every device and stop the loop and the workers."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        driver = self._driver
        if driver is None:
            raise RuntimeError("broken invariant, expected: driver is not None")

        async def wind_down() -> None:
            driver.stopping = True
            tasks = [d.task for d in self._devices.values() if d.task is not None]
            for dev in self._devices.values():
                dev.wake.set()
            if tasks:
                await asyncio.wait(tasks, timeout=15)
            for task in tasks:
                task.cancel()
            if self._misc is not None:
                self._misc.cancel()
            for dev in self._devices.values():
                await driver._hang_up(dev)  # anything a cancelled task left

        with contextlib.suppress(concurrent.futures.TimeoutError):
            asyncio.run_coroutine_threadsafe(wind_down(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()
        for dev in self._devices.values():
            if dev.agent.ota is not None:
                dev.agent.ota.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._misc = None

    # -- control --------------------------------------------------------------

    def _select(self, ids: Iterable[str] | None) -> list[str]:
        if ids is None:
            return list(self.ids)
        chosen = list(ids)
        unknown = [i for i in chosen if i not in self._devices and i not in self.ids]
        if unknown:
            raise InvalidInputError(f"not in this fleet: {', '.join(unknown[:5])}")
        return chosen

    def snapshot(self) -> list[dict[str, Any]]:
        """Every device's state as plain values (see ``SimDevice.snapshot``)."""

        async def take() -> list[dict[str, Any]]:
            return [d.snapshot() for d in self._devices.values()]

        return self._call(take(), timeout=30)

    def take_offline(self, ids: Iterable[str]) -> None:
        """Disconnect these devices and keep them off until brought online."""
        chosen = [self._devices[i] for i in self._select(ids)]

        async def go() -> None:
            tasks = []
            for dev in chosen:
                dev.online = False
                dev.wake.set()
                if dev.task is not None:
                    tasks.append(dev.task)
            if tasks:
                await asyncio.wait(tasks, timeout=10)

        self._call(go(), timeout=30)

    def bring_online(self, ids: Iterable[str]) -> None:
        """Let these devices connect (returns at once; see :meth:`wait_connected`)."""
        chosen = [self._devices[i] for i in self._select(ids)]

        async def go() -> None:
            for dev in chosen:
                dev.online = True
            await self._launch(chosen)

        self._call(go(), timeout=30)

    def tamper(self, ids: Iterable[str]) -> None:
        """Change these devices' bootloader (their next attestation fails)."""
        implant = tampered_bootloader(self.spec)
        for device_id in self._select(ids):
            (self.directory / "devices" / device_id / "boot" / "bootloader.bin").write_bytes(
                implant
            )

    def attest(self, ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Run the agent's attestation for these devices (default: all);
        the verifier's verdict per device, or ``{"verdict": "refused" |
        "error", "detail": ...}`` when it refused the evidence or failed."""
        chosen = self._select(ids)
        if self._executor is None:
            raise SimulationError("the fleet is not running: start() it first")
        futures = {d: self._executor.submit(self._attest_one, d) for d in chosen}
        return {d: f.result() for d, f in futures.items()}

    def _attest_one(self, device_id: str) -> dict[str, Any]:
        dev = self._devices[device_id]
        ota = dev.agent.ota
        if ota is None:
            raise RuntimeError("broken invariant, expected: ota is not None")
        folder = self.directory / "devices" / device_id
        try:
            store = keystore(self.directory)
            signer = store.open(load_identity(folder)["key_uri"])
            return attest_device(
                server_url=self.device_url,
                tenant=self.spec.tenant,
                device_id=device_id,
                directory=folder,
                slots=ota.slots,
                signer=signer,
                # As the device: its current certificate (it may have renewed).
                verify=client_context(folder, store, cafile=self.server_ca),
            )
        except httpx.HTTPStatusError as exc:
            return {
                "verdict": "refused",
                "status": exc.response.status_code,
                "detail": _detail(exc.response),
            }
        except Exception as exc:  # one device's failure is a result, not the drill's end
            return {"verdict": "error", "detail": f"{type(exc).__name__}: {exc}"[:300]}


def _detail(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("detail", resp.text))[:300]
    except (ValueError, AttributeError):
        return resp.text[:300]


def summary(snapshot: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts over a snapshot: online, connected, cut off, refused, versions."""
    versions: dict[str, int] = {}
    for d in snapshot:
        versions[d["version"]] = versions.get(d["version"], 0) + 1
    return {
        "devices": len(snapshot),
        "online": sum(1 for d in snapshot if d["online"]),
        "connected": sum(1 for d in snapshot if d["connected"]),
        "cut_off": sum(1 for d in snapshot if d["cut_off"]),
        "refused": sum(d["refused"] for d in snapshot),
        "published": sum(d["published"] for d in snapshot),
        "versions": dict(sorted(versions.items())),
    }
