"""A simulated fleet over several processes, for fleets of thousands.

One asyncio loop handles a few thousand TLS connections; beyond that the
handshakes and Python's per-message work need more cores. :class:`FleetProcesses`
enrolls once in the parent, then starts ``processes`` children (``spawn``,
so no threads or sockets are inherited), each running a
:class:`~fleetward.sim.fleet.SimFleet` over a contiguous slice of the
devices, and offers the same synchronous API: each call is sent to the
children that own the devices concerned over a ``Pipe`` and their answers
are merged.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import ssl
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from fleetward.errors import FleetwardError, InvalidInputError
from fleetward.sim.enroll import SimulationError, enroll_fleet
from fleetward.sim.fleet import EXECUTOR_WORKERS, Broker, SimFleet, _check_workers
from fleetward.sim.spec import FleetSpec, device_ids

__all__ = ["MAX_PROCESSES", "FleetProcesses"]

MAX_PROCESSES = 64
REPLY_TIMEOUT = 600.0  # seconds a child may take to answer (start of 5,000 devices)


def _child(conn: Connection, spec: FleetSpec, options: dict[str, Any], ids: list[str]) -> None:
    """A child's main: a SimFleet over ``ids``, driven by commands on ``conn``."""
    fleet = SimFleet(spec, only=ids, **options)  # the parent enrolled and laid them out
    try:
        while True:
            try:
                command, args, kwargs = conn.recv()
            except EOFError:  # the parent is gone
                return
            try:
                result = getattr(fleet, command)(*args, **kwargs)
            except FleetwardError as exc:
                conn.send(("error", exc.detail))
            except Exception as exc:  # reported to the parent, which raises it
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
            else:
                conn.send(("ok", result))
            if command == "stop":
                return
    finally:
        fleet.stop()
        conn.close()


class FleetProcesses:
    """The :class:`SimFleet` API over ``processes`` child processes.

    Args:
        spec: the fleet.
        server_url: the operator plane (enrollment).
        device_url: the device plane (see :class:`SimFleet`).
        server_ca: the service CA the device plane's certificate chains to.
        directory: where the fleet's devices live.
        processes: how many children.
        token: an admin token, to enroll devices the directory lacks.
        broker: where to connect (default: what the server announces).
        backoff_base, backoff_cap: reconnection windows (see SimFleet).
        executor_workers: update/attestation threads per process (see SimFleet).
    """

    def __init__(
        self,
        spec: FleetSpec,
        *,
        server_url: str,
        device_url: str,
        server_ca: Path,
        directory: Path,
        processes: int,
        token: str | None = None,
        broker: Broker | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        executor_workers: int = EXECUTOR_WORKERS,
    ) -> None:
        if not isinstance(processes, int) or isinstance(processes, bool):
            raise TypeError("processes must be an int")
        if not 1 <= processes <= min(MAX_PROCESSES, spec.devices):
            raise InvalidInputError(
                f"processes must be between 1 and {min(MAX_PROCESSES, spec.devices)}"
            )
        self.spec = spec
        self.server_url = server_url.rstrip("/")
        self.device_url = device_url.rstrip("/")
        self.server_ca = server_ca
        self.directory = directory
        self.processes = processes
        self._token = token
        self._broker = broker
        self._backoff = (backoff_base, backoff_cap)
        _check_workers(executor_workers)
        self._workers = executor_workers
        ids = device_ids(spec)
        size = -(-len(ids) // processes)
        self._slices = [ids[i : i + size] for i in range(0, len(ids), size)]
        self._owner = {d: n for n, part in enumerate(self._slices) for d in part}
        self._children: list[tuple[BaseProcess, Connection]] = []
        self._prepared = False

    def __enter__(self) -> FleetProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def prepare(self, *, on_progress: Callable[[int, int], object] | None = None) -> list[str]:
        """Enroll what is missing, once, in this process."""
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

    def start(self, *, timeout: float = 300.0) -> None:
        """Start the children and wait until their online devices are connected.

        Raises:
            SimulationError: a child failed, or devices did not connect in time.
        """
        if self._children:
            raise SimulationError("the fleet is running already")
        if not self._prepared:
            self.prepare()
        broker = self._broker or Broker.announced(
            self.device_url,
            directory=self.directory,
            verify=ssl.create_default_context(cafile=str(self.server_ca)),
        )
        options = {
            "server_url": self.server_url,
            "device_url": self.device_url,
            "server_ca": self.server_ca,
            "directory": self.directory,
            "broker": broker,
            "backoff_base": self._backoff[0],
            "backoff_cap": self._backoff[1],
            "executor_workers": self._workers,
        }
        spawn = mp.get_context("spawn")
        for n, part in enumerate(self._slices):
            parent, child = spawn.Pipe()
            proc = spawn.Process(
                target=_child,
                args=(child, self.spec, options, part),
                name=f"sim-{n}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._children.append((proc, parent))
        try:
            self._all("start", timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def _ask(self, which: list[int], command: str, *args: Any, **kwargs: Any) -> list[Any]:
        if not self._children:
            raise SimulationError("the fleet is not running: start() it first")
        for n in which:
            self._children[n][1].send((command, args, kwargs))
        answers: list[Any] = []
        errors: list[str] = []
        for n in which:
            proc, conn = self._children[n]
            if not conn.poll(REPLY_TIMEOUT):
                errors.append(f"process {proc.name} did not answer {command}")
                continue
            try:
                status, value = conn.recv()
            except EOFError:
                errors.append(f"process {proc.name} ended (exit code {proc.exitcode})")
                continue
            (answers if status == "ok" else errors).append(value)
        if errors:
            raise SimulationError(errors[0])
        return answers

    def _all(self, command: str, *args: Any, **kwargs: Any) -> list[Any]:
        return self._ask(list(range(len(self._children))), command, *args, **kwargs)

    def _by_owner(self, ids: Iterable[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = {}
        for device_id in ids:
            if device_id not in self._owner:
                raise InvalidInputError(f"not in this fleet: {device_id}")
            groups.setdefault(self._owner[device_id], []).append(device_id)
        return groups

    def _each(self, command: str, ids: Iterable[str]) -> list[Any]:
        out: list[Any] = []
        for n, part in sorted(self._by_owner(ids).items()):
            out.extend(self._ask([n], command, part))
        return out

    def snapshot(self) -> list[dict[str, Any]]:
        """Every device's state (see :meth:`SimFleet.snapshot`)."""
        return [d for part in self._all("snapshot") for d in part]

    def wait_connected(self, ids: Iterable[str] | None = None, *, timeout: float = 60.0) -> None:
        """See :meth:`SimFleet.wait_connected`."""
        if ids is None:
            self._all("wait_connected", timeout=timeout)
            return
        for n, part in sorted(self._by_owner(ids).items()):
            self._ask([n], "wait_connected", part, timeout=timeout)

    def take_offline(self, ids: Iterable[str]) -> None:
        """See :meth:`SimFleet.take_offline`."""
        self._each("take_offline", ids)

    def bring_online(self, ids: Iterable[str]) -> None:
        """See :meth:`SimFleet.bring_online`."""
        self._each("bring_online", ids)

    def tamper(self, ids: Iterable[str]) -> None:
        """See :meth:`SimFleet.tamper`."""
        self._each("tamper", ids)

    def attest(self, ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """See :meth:`SimFleet.attest`."""
        parts = self._all("attest") if ids is None else self._each("attest", ids)
        return {k: v for part in parts for k, v in part.items()}

    def stop(self) -> None:
        """Stop every child (each disconnects its devices first)."""
        children, self._children = self._children, []
        for proc, conn in children:
            if proc.is_alive():
                with contextlib.suppress(OSError):  # it ended meanwhile
                    conn.send(("stop", (), {}))
        for proc, conn in children:
            if conn.poll(60):
                with contextlib.suppress(EOFError):
                    conn.recv()
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            conn.close()
            proc.close()
