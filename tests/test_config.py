"""One configuration: every option in ``Settings``, read once, in one order
(arguments > environment > settings.json > defaults), shown by ``config show``
with its source and secrets masked; no environment read anywhere else."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fleetward import config as config_module
from fleetward.cli import main
from fleetward.cli.config import config_app
from fleetward.config import Settings
from fleetward.errors import InvalidInputError
from fleetward.keys.ring import KeyRing

SRC = Path(config_module.__file__).parent
VARIABLES = (
    "FLEETWARD_HOME",
    "FLEETWARD_DATABASE_URL",
    "FLEETWARD_PUBLIC_URL",
    "FLEETWARD_TRUSTED_PROXIES",
    "FLEETWARD_WEBHOOK_HOSTS",
    "FLEETWARD_KEY_PASSPHRASE",
    "FLEETWARD_ROOT_PASSPHRASE",
    "FLEETWARD_PKCS11_MODULE",
    "FLEETWARD_PKCS11_TOKEN",
    "FLEETWARD_PKCS11_PIN",
    "FLEETWARD_LOG_LEVEL",
    "FLEETWARD_LOG_FORMAT",
    "FLEETWARD_METRICS_ENABLED",
    "FLEETWARD_TENANT",
    "FLEETWARD_OPERATOR_HOST",
    "FLEETWARD_OPERATOR_PORT",
    "FLEETWARD_OPERATOR_TLS",
    "FLEETWARD_DEVICE_HOST",
    "FLEETWARD_DEVICE_PORT",
    "FLEETWARD_SERVICE_NAMES",
    "FLEETWARD_MQTT_HOST",
    "FLEETWARD_MQTT_PRODUCTION_PORT",
    "FLEETWARD_MQTT_TEST_PORT",
    "FLEETWARD_MQTT_DRILL_PORT",
    "FLEETWARD_MQTT_SERVICE_PORT",
    "FLEETWARD_HEADER_TIMEOUT",
    "FLEETWARD_AUTH_FAILURES_PER_SOURCE",
    "FLEETWARD_AUTH_FAILURES_PER_IDENTITY",
    "FLEETWARD_AUTH_FAILURE_WINDOW",
    "FLEETWARD_REFUSAL_AUDIT_WINDOW",
    "FLEETWARD_IDLE_TIMEOUT",
    "FLEETWARD_TLS_HANDSHAKE_TIMEOUT",
    "FLEETWARD_MAX_CONNECTIONS",
)


@pytest.fixture
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No FLEETWARD_* variable set; returns a home with a settings.json."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    (home / "settings.json").write_text(
        json.dumps({"public_url": "http://file.example", "webhook_hosts": ["Hooks.Example"]})
    )
    return home


def test_every_variable_is_an_option() -> None:
    assert {Settings.variable(name) for name in Settings.model_fields} == set(VARIABLES)


def test_arguments_win_over_the_environment_over_the_file_over_defaults(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Settings.load(clean)
    assert s.public_url == "http://file.example"
    assert s.webhook_hosts == frozenset({"hooks.example"})
    assert s.database_url == f"sqlite:///{clean.resolve() / 'fleetward.db'}"
    assert [s.source(n) for n in ("home", "public_url", "database_url")] == [
        "argument",
        "settings.json",
        "default",
    ]
    monkeypatch.setenv("FLEETWARD_PUBLIC_URL", "http://env.example/")
    s = Settings.load(clean)
    assert (s.public_url, s.source("public_url")) == ("http://env.example", "environment")
    s = Settings.load(clean, public_url="http://arg.example", log_level=None)
    assert (s.public_url, s.source("public_url")) == ("http://arg.example", "argument")
    assert s.source("log_level") == "default"  # None means "not given"
    monkeypatch.setenv("FLEETWARD_HOME", str(clean))
    assert Settings.load().source("home") == "environment"
    assert Settings.load().public_url == "http://env.example"


def test_the_constructor_tests_use_still_works(clean: Path) -> None:
    s = Settings(home=clean, database_url="sqlite:///x.db", public_url="http://fw/")
    assert (s.database_url, s.public_url) == ("sqlite:///x.db", "http://fw")
    assert s.replace(public_url="http://other").public_url == "http://other"
    with pytest.raises(InvalidInputError, match="FLEETWARD_LOG_FORMAT"):
        s.replace(log_format="xml")


def test_values_are_read_once(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings.load(clean)
    monkeypatch.setenv("FLEETWARD_WEBHOOK_HOSTS", "evil.example")
    assert s.webhook_hosts == frozenset({"hooks.example"})
    # Worker processes get the same values, not their own reading.
    assert pickle.loads(pickle.dumps(s)) == s  # noqa: S301 - our own bytes


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FLEETWARD_TRUSTED_PROXIES", "*"),
        ("FLEETWARD_LOG_LEVEL", "loud"),
        ("FLEETWARD_LOG_FORMAT", "xml"),
        ("FLEETWARD_METRICS_ENABLED", "perhaps"),
    ],
)
def test_bad_values_are_refused_by_variable_name(
    clean: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidInputError, match=variable):
        Settings.load(clean)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"pkcs11_pin": "1234"}, "secret"),
        ({"file_key_passphrase": "x"}, "secret"),
        ({"databse_url": "sqlite://"}, "unknown setting 'databse_url'"),
        ({"home": "/elsewhere"}, "unknown setting 'home'"),
        ([1, 2], "JSON object"),
    ],
)
def test_settings_json_holds_no_secrets_and_no_typos(
    clean: Path, content: object, message: str
) -> None:
    (clean / "settings.json").write_text(json.dumps(content))
    with pytest.raises(InvalidInputError, match=message):
        Settings.load(clean)


def test_save_keeps_other_options(clean: Path) -> None:
    Settings.load(clean, public_url="http://saved.example").save()
    data = json.loads((clean / "settings.json").read_text())
    assert data["public_url"] == "http://saved.example"
    assert data["webhook_hosts"] == ["Hooks.Example"]
    assert "file_key_passphrase" not in data


def test_pkcs11_options_reach_the_key_ring(clean: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEETWARD_PKCS11_TOKEN", "fw-token")
    monkeypatch.setenv("FLEETWARD_PKCS11_PIN", "2468")
    monkeypatch.setenv("FLEETWARD_PKCS11_MODULE", "/opt/hsm/libhsm.so")
    s = Settings.load(clean)
    assert s.keyring_options() == {
        "pkcs11_module": "/opt/hsm/libhsm.so",
        "pkcs11_token": "fw-token",
        "pkcs11_pin": "2468",
    }
    ring = KeyRing(keys_dir=s.keys_dir, passphrase=b"p", **s.keyring_options())
    assert ring.pkcs11_token == "fw-token"
    assert "2468" not in repr(s) and "2468" not in str(s)


def _cli() -> typer.Typer:
    """The root callback (``--home``) with the config group."""
    app = typer.Typer()
    app.callback()(main.root)
    app.add_typer(config_app, name="config")
    return app


def test_config_show_masks_secrets_and_names_sources(
    clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEETWARD_KEY_PASSPHRASE", "hunter2-passphrase")
    monkeypatch.setenv("FLEETWARD_PKCS11_PIN", "97531")
    monkeypatch.setenv("FLEETWARD_DATABASE_URL", "postgresql://fw:dbpassword@db.example/fw")
    runner = CliRunner()
    out = runner.invoke(_cli(), ["--home", str(clean), "config", "show", "--json"])
    assert out.exit_code == 0, out.output
    for secret in ("hunter2-passphrase", "97531", "dbpassword"):
        assert secret not in out.output
    rows = {row["name"]: row for row in json.loads(out.output)}
    assert rows["file_key_passphrase"]["value"] == "********"
    assert rows["file_key_passphrase"]["source"] == "environment"
    assert rows["pkcs11_pin"] == {
        "name": "pkcs11_pin",
        "variable": "FLEETWARD_PKCS11_PIN",
        "value": "********",
        "source": "environment",
        "secret": True,
    }
    assert rows["root_passphrase"]["value"] == "(not set)"
    assert rows["database_url"]["value"] == "postgresql://fw:***@db.example/fw"
    assert rows["home"]["source"] == "argument"
    assert rows["public_url"]["source"] == "settings.json"
    assert (rows["log_level"]["value"], rows["log_level"]["source"]) == ("info", "default")

    table = runner.invoke(_cli(), ["--home", str(clean), "config", "show"], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "hunter2" not in table.output and "97531" not in table.output
    assert re.search(r"FLEETWARD_PKCS11_PIN\s*│\s*\*{8}\s*│\s*environment", table.output)
    # The variable counts as the environment's, not as a --home argument.
    via_env = runner.invoke(
        _cli(), ["config", "show", "--json"], env={"FLEETWARD_HOME": str(clean)}
    )
    assert {r["name"]: r for r in json.loads(via_env.output)}["home"]["source"] == "environment"


FORBIDDEN = re.compile(r"\bos\.environ\b|\bgetenv\b|\bfrom os import [^\n]*\benviron\b|\bputenv\b")


def test_no_environment_read_outside_config() -> None:
    offenders = [
        f"{path.relative_to(SRC)}:{n}: {line.strip()}"
        for path in sorted(SRC.rglob("*.py"))
        if path.name != "config.py" or path.parent != SRC
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if FORBIDDEN.search(line)
    ]
    assert offenders == [], "read settings through fleetward.config.Settings"
