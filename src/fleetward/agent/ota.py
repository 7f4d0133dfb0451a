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

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetward.errors import ConflictError, FleetwardError, NotFoundError, VerificationError
from fleetward.ota.release import parse_version

__all__ = ["BootOutcome", "Slots", "UpdateRefusedError", "install"]

DEFAULT_BOOT_ATTEMPTS = 3


class UpdateRefusedError(VerificationError):
    """The device refused an update (wrong hardware, not newer, not signed)."""


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.new")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        _write_durably(self.state_path, json.dumps(state, indent=2).encode())

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
