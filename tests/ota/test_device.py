"""The device side of OTA: TUF-verified install into the inactive slot, boot
counter, health check, commit or fall back, and anti-rollback."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

import pytest
from tuf.api import exceptions as tuf_errors

from fleetward.agent.ota import OtaClient, Slots, UpdateRefusedError, install
from fleetward.ota import service as ota
from fleetward.ota.blobs import LocalBlobStore
from fleetward.runtime.context import AppContext
from tests.ota.helpers import call, operator, updater, upload
from tests.ota.test_repository import IMAGE, release, root_of


@pytest.fixture
def repo(live: str, ctx: AppContext, admin_token: str) -> dict[str, str]:
    call(live, admin_token, "POST", "/api/v1/ota/products/thermo", json={"threshold": 2})
    return {
        "rm1": operator(ctx, "release-manager", "a"),
        "rm2": operator(ctx, "release-manager", "b"),
    }


def healthy(image: Path) -> bool:
    return b"BROKEN" not in image.read_bytes()


def test_install_commits_after_a_healthy_boot(
    live: str, ctx: AppContext, repo: dict[str, str], tmp_path: Path
) -> None:
    release(live, repo, "1.1.0")
    slots = Slots(tmp_path / "dev", initial_version="1.0.0")
    client = updater(ctx, tmp_path / "tuf", root_of(ctx))
    assert install(client, slots, target_path="thermo/1.1.0/fw.bin", hardware="board-a") == "1.1.0"
    assert slots.installed_version == "1.0.0"  # still running the old slot
    assert slots.pending == {"slot": "b", "version": "1.1.0", "boots_left": 3}
    outcome = slots.boot(healthy)
    assert (outcome.outcome, outcome.slot, outcome.version) == ("committed", "b", "1.1.0")
    assert slots.installed_version == "1.1.0" and slots.active == "b"
    assert slots.image("b").read_bytes() == IMAGE


def test_unhealthy_image_falls_back_after_n_boots(
    live: str, ctx: AppContext, repo: dict[str, str], tmp_path: Path
) -> None:
    release(live, repo, "1.1.0", image=b"BROKEN firmware")
    slots = Slots(tmp_path / "dev", initial_version="1.0.0")
    install(
        updater(ctx, tmp_path / "tuf", root_of(ctx)),
        slots,
        target_path="thermo/1.1.0/fw.bin",
        hardware="board-a",
    )
    outcomes = [slots.boot(healthy).outcome for _ in range(3)]
    assert outcomes == ["retry", "retry", "fell-back"]
    assert slots.installed_version == "1.0.0" and slots.active == "a"
    assert slots.boot(healthy).outcome == "normal"
    # A crashing health check counts as a failed boot, never as success.
    release(live, repo, "1.2.0", image=b"fine")
    install(
        updater(ctx, tmp_path / "tuf2", root_of(ctx)),
        slots,
        target_path="thermo/1.2.0/fw.bin",
        hardware="board-a",
        attempts=1,
    )

    def crash(_: Path) -> bool:
        raise RuntimeError("watchdog")

    assert slots.boot(crash).outcome == "fell-back"


def test_device_refuses_other_hardware_older_versions_and_unsigned_targets(
    live: str, ctx: AppContext, repo: dict[str, str], tmp_path: Path
) -> None:
    release(live, repo, "1.1.0")
    slots = Slots(tmp_path / "dev", initial_version="1.1.0")

    def client() -> object:  # a device makes a fresh TUF client per update check
        return updater(ctx, tmp_path / "tuf", root_of(ctx))

    with pytest.raises(UpdateRefusedError, match="anti-rollback"):
        install(client(), slots, target_path="thermo/1.1.0/fw.bin", hardware="board-a")
    other = Slots(tmp_path / "dev2", initial_version="1.0.0")
    with pytest.raises(UpdateRefusedError, match="hardware"):
        install(client(), other, target_path="thermo/1.1.0/fw.bin", hardware="board-z")
    with pytest.raises(UpdateRefusedError, match="not in the signed targets"):
        install(client(), other, target_path="thermo/9.0.0/fw.bin", hardware="board-a")
    # A pending (unsigned) release is not installable either.
    resp = upload(live, repo["rm1"], product="thermo", version="1.2.0", image=b"new")
    assert resp.json()["state"] == "pending"
    with pytest.raises(UpdateRefusedError, match="not in the signed targets"):
        install(client(), other, target_path="thermo/1.2.0/fw.bin", hardware="board-a")
    assert other.pending is None and slots.pending is None  # nothing was staged


def test_tampered_artifact_never_reaches_a_slot(
    live: str, ctx: AppContext, repo: dict[str, str], tmp_path: Path
) -> None:
    release(live, repo, "1.1.0")
    with ctx.db.read() as s:
        [r] = ota.list_releases(s, admin_principal(ctx))
    LocalBlobStore(ctx.settings.home / "blobs").path(r.sha256).write_bytes(b"X" * len(IMAGE))
    slots = Slots(tmp_path / "dev", initial_version="1.0.0")
    with pytest.raises(tuf_errors.LengthOrHashMismatchError):
        install(
            updater(ctx, tmp_path / "tuf", root_of(ctx)),
            slots,
            target_path="thermo/1.1.0/fw.bin",
            hardware="board-a",
        )
    assert slots.pending is None
    assert not slots.image("b").exists()


def admin_principal(ctx: AppContext):  # type: ignore[no-untyped-def]
    from tests.broker import admin_of

    return admin_of(ctx)


def test_fallback_is_tied_to_the_aborted_version(tmp_path: Path) -> None:
    slots = Slots(tmp_path / "dev", initial_version="1.0.0")
    image = tmp_path / "img"
    image.write_bytes(b"v2")
    slots.stage(image, version="2.0.0")
    assert not slots.fall_back("9.9.9")  # another release: nothing to do
    assert slots.fall_back("2.0.0") and slots.pending is None
    slots.stage(image, version="2.0.0")
    assert slots.boot(healthy).outcome == "committed"
    assert slots.fall_back("2.0.0") and slots.installed_version == "1.0.0"
    assert not slots.fall_back("2.0.0")  # a redelivered fallback does not swap back
    assert slots.installed_version == "1.0.0"


class _HeldExecutor(Executor):
    """Runs nothing until the test calls what was submitted."""

    def __init__(self) -> None:
        self.jobs: list[Callable[[], object]] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.jobs.append(lambda: fn(*args, **kwargs))
        return Future()


@pytest.mark.parametrize("threaded", [False, True])
def test_a_resent_offer_waiting_or_in_progress_is_not_queued_again(
    tmp_path: Path, threaded: bool
) -> None:
    executor = None if threaded else _HeldExecutor()
    client = OtaClient(
        tmp_path / "dev", server_url="http://127.0.0.1:9", tenant="default",
        hardware="board-a", executor=executor,
    )  # fmt: skip
    offer = {"campaign": 1, "release": 2, "target": "thermo/1.1.0/fw.bin"}
    handled: list[tuple[str, dict[str, Any]]] = []

    def handle(kind: str, payload: dict[str, Any]) -> None:
        if not handled:
            client.submit(kind, dict(payload))  # re-sent while in progress: dropped
        handled.append((kind, payload))

    client.handle = handle  # type: ignore[method-assign]
    client.submit("offer", offer)
    client.submit("offer", dict(offer))  # re-sent while waiting: dropped
    client.submit("offer", {**offer, "campaign": 3})  # another campaign: a job of its own
    if executor is None:
        client.start(lambda _step: None)
        deadline = time.monotonic() + 5
        while len(handled) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        client.stop()
    else:
        assert len(executor.jobs) == 1  # one chain per device
        executor.jobs.pop()()
    assert handled == [("offer", offer), ("offer", {**offer, "campaign": 3})]
    # Once finished, a re-sent offer is a new attempt (e.g. the first one failed).
    client._stop.clear()
    client.submit("offer", offer)
    if executor is not None:
        executor.jobs.pop()()
        assert handled[-1] == ("offer", offer)
