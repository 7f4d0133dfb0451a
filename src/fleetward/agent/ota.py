"""The agent's updates: TUF-verified download into the inactive slot of an A/B layout.

:class:`Slots` is the device's boot state on disk (``slots/a``, ``slots/b``
and ``slots/state.json``, written durably): which slot is active and which
version each holds, and an update **pending** in the other slot with a boot
counter. :meth:`Slots.boot` is what the bootloader does at each boot: try the
pending slot, run the health check, commit it, or fall back to the previous
slot once the counter runs out.

:func:`install` fetches an update through a stock ``tuf.ngclient.Updater``
and refuses, before anything is written to a slot:

- a target the repository does not sign (not in targets),
- a release for other hardware,
- a version not higher than the installed one (anti-rollback; going back is
  a new, higher release carrying old content),

while the TUF client itself refuses tampered artifacts, metadata below
threshold, expired metadata (freeze) and older metadata (rollback).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import shutil
import ssl
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetward.agent._fetcher import HttpsFetcher
from fleetward.agent.client import write_durably
from fleetward.errors import ConflictError, FleetwardError, NotFoundError, UpdateRefusedError
from fleetward.ota.release import parse_version

__all__ = ["BootOutcome", "OtaClient", "Slots", "UpdateRefusedError", "install"]

DEFAULT_BOOT_ATTEMPTS = 3
MAX_ROOT_BYTES = 512_000  # a first TUF root fetched on trust (python-tuf's root limit)

log = logging.getLogger("fleetward.agent")


@dataclass(frozen=True)
class BootOutcome:
    """What one boot did: ``normal``, ``committed``, ``retry`` or ``fell-back``."""

    outcome: str
    slot: str
    version: str | None


class Slots:
    """The A/B slots of one device, under ``<directory>/slots``."""

    IMAGE = "image.bin"

    def __init__(self, directory: Path, *, initial_version: str = "0.0.0") -> None:
        self.root = directory / "slots"
        self.state_path = self.root / "state.json"
        if not self.state_path.exists():
            for slot in ("a", "b"):
                (self.root / slot).mkdir(parents=True, exist_ok=True)
            self._save(
                {"active": "a", "versions": {"a": initial_version, "b": None}, "pending": None}
            )

    def _load(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.state_path.read_text())
        return data

    def _save(self, state: dict[str, Any]) -> None:
        write_durably(self.state_path, json.dumps(state, indent=2), sync_dir=True)

    @property
    def active(self) -> str:
        """The slot the device runs from."""
        return str(self._load()["active"])

    @property
    def installed_version(self) -> str:
        """The version the device actually runs (what it reports)."""
        state = self._load()
        return str(state["versions"][state["active"]])

    @property
    def pending(self) -> dict[str, Any] | None:
        """The update waiting to be booted, if any."""
        pending: dict[str, Any] | None = self._load()["pending"]
        return pending

    def image(self, slot: str) -> Path:
        """The image file of a slot."""
        return self.root / slot / self.IMAGE

    def stage(self, source: Path, *, version: str, attempts: int = DEFAULT_BOOT_ATTEMPTS) -> str:
        """Copy a verified image into the inactive slot and mark it pending."""
        state = self._load()
        inactive = "b" if state["active"] == "a" else "a"
        target = self.image(inactive)
        tmp = target.with_name(".image.new")
        shutil.copyfile(source, tmp)
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        state["versions"][inactive] = None  # the slot's old content is gone
        state["pending"] = {"slot": inactive, "version": version, "boots_left": attempts}
        self._save(state)
        return inactive

    def fall_back(self, version: str) -> bool:
        """Leave ``version`` (an aborted release): drop it if it is pending, or
        return to the other slot if the device runs it and the other slot
        holds an older committed version. Anything else is left alone, so a
        repeated or late fallback never swaps slots back and forth. Returns
        whether anything changed."""
        state = self._load()
        pending = state["pending"]
        if pending is not None and pending["version"] == version:
            state["pending"] = None
            self._save(state)
            return True
        active = state["active"]
        other = "b" if active == "a" else "a"
        previous = state["versions"].get(other)
        if state["versions"].get(active) != version or previous is None:
            return False
        if parse_version(previous) >= parse_version(version):
            return False
        state["active"] = other
        self._save(state)
        return True

    def boot(self, health_check: Callable[[Path], bool]) -> BootOutcome:
        """One boot: try a pending slot (counting the attempt first, so a crash
        during the health check still counts), commit it or fall back."""
        state = self._load()
        pending = state["pending"]
        if pending is None:
            return BootOutcome("normal", state["active"], state["versions"][state["active"]])
        pending["boots_left"] -= 1
        self._save(state)  # the boot counter survives a crash in the check
        slot = pending["slot"]
        try:
            healthy = health_check(self.image(slot))
        except Exception:  # a check that crashes is a failed boot
            healthy = False
        if healthy:
            state["active"] = slot
            state["versions"][slot] = pending["version"]
            state["pending"] = None
            self._save(state)
            return BootOutcome("committed", slot, pending["version"])
        if pending["boots_left"] <= 0:
            state["pending"] = None
            self._save(state)
            active = state["active"]
            return BootOutcome("fell-back", active, state["versions"][active])
        return BootOutcome("retry", slot, pending["version"])


def install(
    updater: Any,
    slots: Slots,
    *,
    target_path: str,
    hardware: str,
    attempts: int = DEFAULT_BOOT_ATTEMPTS,
) -> str:
    """Verify and stage ``target_path``; returns the version staged.

    Args:
        updater: a fresh ``tuf.ngclient.Updater`` (python-tuf refreshes an
            updater once; a device makes one per update check).
        slots: the device's slots.
        target_path: ``<product>/<version>/<file>`` as offered.
        hardware: this device's hardware id.

    Raises:
        UpdateRefusedError: not signed, other hardware, or not newer.
        tuf.api.exceptions.RepositoryError (and subclasses): the TUF client
            refused the metadata or the artifact.
    """
    updater.refresh()
    info = updater.get_targetinfo(target_path)
    if info is None:
        raise UpdateRefusedError(f"{target_path} is not in the signed targets")
    custom = info.custom or {}
    if hardware not in custom.get("hardware", []):
        raise UpdateRefusedError(f"{target_path} is not built for hardware {hardware!r}")
    version = str(custom.get("version", ""))
    try:
        newer = parse_version(version) > parse_version(slots.installed_version)
    except FleetwardError as exc:
        raise UpdateRefusedError(f"{target_path} has no valid version: {exc.detail}") from exc
    if not newer:
        raise UpdateRefusedError(
            f"{version} is not newer than the installed {slots.installed_version} (anti-rollback)"
        )
    pending = slots.pending
    if pending is not None and pending["version"] == version:
        raise ConflictError(f"{version} is already staged")
    path = updater.download_target(info)  # verifies length and SHA-256
    if not Path(path).exists():
        raise NotFoundError("the TUF client did not store the target")
    slots.stage(Path(path), version=version, attempts=attempts)
    return version


class OtaClient:
    """The device's update worker: offers in, steps reported out.

    Offers arrive on ``fw/<tenant>/<device>/ota/offer`` and are handled one at
    a time in a worker thread (never on the MQTT thread). Each step is
    reported through ``report`` (the agent publishes it on ``state/ota``):
    ``received`` (as soon as an offer is taken, also when it is one the
    device works on already), ``downloading``, ``staged``, ``boot`` (per
    boot), then ``committed``,
    ``fell-back``, ``refused`` or ``error`` with the version the device runs.

    A job identical to one waiting or in progress is dropped: the server
    re-sends an offer until the device reports a result, and a slow update
    (a long download, a busy device) must not pile up copies that would each
    refresh the TUF metadata again once the first one finished.

    Without an ``executor`` each client runs its own worker thread
    (:meth:`start`). With one (the simulator shares a small pool across
    thousands of devices), :meth:`bind` sets the report and :meth:`submit`
    runs :meth:`handle` on the pool, still one job at a time per device and
    in the order they arrived.

    The TUF trust root is ``<directory>/tuf-root.json``. A device is normally
    provisioned with it; if it is missing, the first check fetches version 1
    of the tenant's root from the server (trust on first use).

    The repository is on the device plane (HTTPS): ``tls`` makes the TLS
    context of one update check (the service CA as trust anchor, and the
    device's certificate where the agent has it, see
    :func:`fleetward.agent._tls.client_context`; called per check, so a
    renewed certificate is picked up). Without it the check trusts the
    system's CAs (a repository behind a public certificate).
    """

    def __init__(
        self,
        directory: Path,
        *,
        server_url: str,
        tenant: str,
        hardware: str,
        initial_version: str = "0.0.0",
        health_check: Callable[[Path], bool] | None = None,
        executor: Executor | None = None,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.directory = directory
        self.tls = tls
        self.base = f"{server_url.rstrip('/')}/tuf/{tenant}"
        self.hardware = hardware
        self.slots = Slots(directory, initial_version=initial_version)
        self.health_check = health_check or (lambda image: image.stat().st_size > 0)
        self._jobs: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=16)
        self._report: Callable[[dict[str, Any]], object] = lambda _: None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._executor = executor
        self._waiting: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()
        self._busy = False
        self._chain_lock = threading.Lock()
        self._queued: set[str] = set()  # jobs waiting or in progress (see _key)

    def fetcher(self) -> HttpsFetcher:
        """The HTTPS fetcher of one update check (close it afterwards)."""
        context = self.tls() if self.tls is not None else ssl.create_default_context()
        return HttpsFetcher(context)

    def updater(self, fetcher: HttpsFetcher | None = None) -> Any:
        """A fresh stock TUF client for one update check, fetching through
        ``fetcher`` (default: a new :meth:`fetcher`)."""
        from tuf.ngclient import Updater

        fetcher = fetcher or self.fetcher()
        metadata = self.directory / "tuf"
        metadata.mkdir(parents=True, exist_ok=True)
        downloads = self.directory / "downloads"
        downloads.mkdir(exist_ok=True)
        bootstrap = None
        if not (metadata / "root.json").exists():
            root = self.directory / "tuf-root.json"
            if not root.exists():
                first = fetcher.download_bytes(f"{self.base}/metadata/1.root.json", MAX_ROOT_BYTES)
                write_durably(root, first, sync_dir=True)
            bootstrap = root.read_bytes()
        return Updater(
            metadata_dir=str(metadata),
            metadata_base_url=f"{self.base}/metadata/",
            target_dir=str(downloads),
            target_base_url=f"{self.base}/targets/",
            fetcher=fetcher,
            bootstrap=bootstrap,
        )

    def submit(self, kind: str, payload: dict[str, Any]) -> None:
        """Queue an ``offer`` or ``fallback`` (dropped when 16 are waiting, or
        when the same job is waiting or in progress already)."""
        key = self._key(kind, payload)
        with self._chain_lock:
            if key in self._queued:
                self._received(kind, payload)  # still on it: no need to offer again
                return
            self._queued.add(key)
        if self._executor is None:
            try:
                self._jobs.put_nowait((kind, payload))
            except queue.Full:
                self._done(key)
                return
            self._received(kind, payload)
            return
        with self._chain_lock:
            if len(self._waiting) >= self._jobs.maxsize:
                self._queued.discard(key)
                return
            self._waiting.append((kind, payload))
            busy, self._busy = self._busy, True
        self._received(kind, payload)
        if not busy:  # otherwise the running job submits the next one when it ends
            self._executor.submit(self._drain)

    def _received(self, kind: str, payload: dict[str, Any]) -> None:
        """Tell the server an offer is taken (a ``received`` step), so it is
        not offered again while it waits for its turn."""
        if kind == "offer":
            self._report(
                {"campaign": payload.get("campaign"), "step": "received",
                 "target": str(payload.get("target", ""))[:300]}
            )  # fmt: skip

    def _drain(self) -> None:
        while True:
            with self._chain_lock:
                if not self._waiting or self._stop.is_set():
                    self._busy = False
                    return
                kind, payload = self._waiting.popleft()
            try:
                self.handle(kind, payload)
            except Exception:  # a broken job must not stop the device's later ones
                log.exception("%s: update job failed", self.directory.name)
            finally:
                self._done(self._key(kind, payload))

    @staticmethod
    def _key(kind: str, payload: dict[str, Any]) -> str:
        return kind + json.dumps(payload, sort_keys=True, default=str)

    def _done(self, key: str) -> None:
        with self._chain_lock:
            self._queued.discard(key)

    def bind(self, report: Callable[[dict[str, Any]], object]) -> None:
        """Set where steps are reported (without starting a worker thread)."""
        self._report = report

    def handle(self, kind: str, payload: dict[str, Any]) -> None:
        """Run one job now, in the caller's thread: an ``offer`` is installed
        and booted, a ``fallback`` leaves the named version. Steps go to the
        bound report."""
        if kind == "offer":
            self._update(payload)
        elif kind == "fallback" and self.slots.fall_back(str(payload.get("version", ""))):
            self._report(
                {
                    "campaign": payload.get("campaign"),
                    "step": "fell-back",
                    "version": self.slots.installed_version,
                }
            )

    def _update(self, payload: dict[str, Any]) -> None:
        campaign = payload.get("campaign")

        def step(name: str, **fields: Any) -> None:
            self._report({"campaign": campaign, "step": name, **fields})

        target = str(payload.get("target", ""))
        step("downloading", target=target)
        try:
            with self.fetcher() as fetcher:
                version = install(
                    self.updater(fetcher), self.slots, target_path=target, hardware=self.hardware
                )
        except UpdateRefusedError as exc:
            step("refused", reason=exc.detail, version=self.slots.installed_version)
            return
        except Exception as exc:  # TUF refusals, network: the device keeps running
            step(
                "error",
                reason=f"{type(exc).__name__}: {exc}"[:300],
                version=self.slots.installed_version,
            )
            return
        step("staged", version=version)
        while self.slots.pending is not None:
            outcome = self.slots.boot(self.health_check)
            step("boot", outcome=outcome.outcome, slot=outcome.slot)
        final = "committed" if self.slots.installed_version == version else "fell-back"
        step(final, version=self.slots.installed_version)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                kind, payload = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.handle(kind, payload)
            finally:
                self._done(self._key(kind, payload))

    def start(self, report: Callable[[dict[str, Any]], object]) -> None:
        """Start the worker; ``report`` publishes a step. With an executor no
        thread is started: jobs run on the executor."""
        self._report = report
        if self._executor is not None:
            return
        self._thread = threading.Thread(target=self._run, daemon=True, name="ota")
        self._thread.start()

    def stop(self) -> None:
        """Stop the worker (an update in progress finishes first; jobs still
        waiting are dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
