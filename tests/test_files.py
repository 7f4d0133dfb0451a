"""The home is private: 0700 directories and 0600 files whatever the umask,
and ``fleetward doctor`` finds (and with ``--fix`` narrows) what is not."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from fleetward._files import inspect_home
from fleetward.api.app import create_app
from fleetward.config import Settings
from fleetward.runtime.installation import initialise
from fleetward.store import Database
from tests.helpers import csr_pem, new_key


@pytest.fixture
def umask_000() -> Iterator[None]:
    """The loosest umask there is, restored afterwards."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def open_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An existing, world-readable directory to initialise, with the database
    and the key passphrase kept in it (the defaults)."""
    for name in ("FLEETWARD_HOME", "FLEETWARD_DATABASE_URL", "FLEETWARD_KEY_PASSPHRASE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    return home


def fw(home: Path, *args: str) -> Result:
    from fleetward.cli.main import app

    return CliRunner().invoke(app, ["--home", str(home), *args])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def assert_private(home: Path) -> None:
    """The home and every directory under it 0700, every file 0600."""
    assert mode(home) == 0o700
    for path in home.rglob("*"):
        wanted = 0o700 if path.is_dir() else 0o600
        assert mode(path) == wanted, f"{path} is {mode(path):04o}"


def test_init_with_umask_000_into_an_open_directory_is_private(
    open_home: Path, umask_000: None
) -> None:
    result = fw(open_home, "init")
    assert result.exit_code == 0, result.output
    for name in (
        "fleetward.db",
        "settings.json",
        "keys/.passphrase",
        "keys/audit-checkpoint.pem",
        "keys/audit-checkpoint.pub.pem",
    ):
        assert mode(open_home / name) == 0o600, name
    assert any((open_home / "keys").glob("*-root.pem"))
    assert any((open_home / "crls").glob("*.der"))
    assert_private(open_home)


def test_doctor_reports_then_fixes_loose_modes(open_home: Path) -> None:
    assert fw(open_home, "init").exit_code == 0
    assert fw(open_home, "doctor").exit_code == 0
    (open_home / "settings.json").chmod(0o644)
    (open_home / "keys").chmod(0o755)

    report = fw(open_home, "doctor")
    assert report.exit_code == 1
    assert f"{open_home / 'settings.json'}: mode 0644" in report.output
    assert f"{open_home / 'keys'}: mode 0755" in report.output
    assert mode(open_home / "settings.json") == 0o644  # reporting changes nothing

    fixed = fw(open_home, "doctor", "--fix")
    assert fixed.exit_code == 0, fixed.output
    assert mode(open_home / "settings.json") == 0o600
    assert mode(open_home / "keys") == 0o700
    assert fw(open_home, "doctor").exit_code == 0


def test_doctor_checks_a_database_kept_outside_the_home(
    open_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "elsewhere" / "fw.db"
    db.parent.mkdir()
    monkeypatch.setenv("FLEETWARD_DATABASE_URL", f"sqlite:///{db}")
    assert fw(open_home, "init").exit_code == 0
    assert mode(db) == 0o600
    db.chmod(0o664)
    result = fw(open_home, "doctor")
    assert result.exit_code == 1
    assert f"{db}: mode 0664" in result.output


def test_foreign_owners_are_reported_and_left_alone(open_home: Path) -> None:
    assert fw(open_home, "init").exit_code == 0
    (open_home / "settings.json").chmod(0o644)
    stranger = os.geteuid() + 1
    report = inspect_home(open_home, uid=stranger, fix=True)
    unowned = {f.path for f in report.remaining if "not by you" in f.problem}
    assert {open_home, open_home / "settings.json", open_home / "keys"} <= unowned
    assert mode(open_home / "settings.json") == 0o644  # not ours to change


def test_opening_an_old_loose_database_narrows_it(open_home: Path) -> None:
    assert fw(open_home, "init").exit_code == 0
    (open_home / "fleetward.db").chmod(0o644)
    assert fw(open_home, "tenant", "list").exit_code == 0
    assert mode(open_home / "fleetward.db") == 0o600


def test_files_the_running_api_writes_are_private(open_home: Path, umask_000: None) -> None:
    ctx, token = initialise(Settings.load(open_home), actor="test")
    crls = open_home / "crls"
    before = set(crls.iterdir())
    headers = {"Authorization": f"Bearer {token}"}
    app = create_app(ctx, crl_interval=0.2, checkpoint_interval=3600)
    with TestClient(app) as client:
        cert = client.post(
            "/api/v1/devices/p1/certificates",
            json={"csr": csr_pem(new_key(), "p1").decode(), "environment": "test"},
            headers=headers,
        )
        assert cert.status_code == 201, cert.text
        revoked = client.post(
            f"/api/v1/certificates/{cert.json()['serial']}/revocation",
            json={"reason": "keyCompromise"},
            headers=headers,
        )
        assert revoked.status_code == 200, revoked.text
        deadline = time.monotonic() + 10
        while set(crls.iterdir()) == before:
            assert time.monotonic() < deadline, "no new CRL was published"
            time.sleep(0.05)
        # SQLite's -wal and -shm exist while the database is open.
        assert mode(open_home / "fleetward.db-wal") == 0o600
        assert mode(open_home / "fleetward.db-shm") == 0o600
        assert_private(open_home)
    ctx.db.dispose()


def test_a_database_created_under_umask_000_is_private(tmp_path: Path, umask_000: None) -> None:
    db = Database(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        db.migrate()
        assert mode(tmp_path / "new.db") == 0o600
        assert mode(tmp_path / "new.db-wal") == 0o600
    finally:
        db.dispose()
