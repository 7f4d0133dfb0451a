"""The ``fleetward`` command follows one set of conventions, walked from the
command tree itself (see ``fleetward.cli.common``): one name per concept,
``--tenant`` defaulting to ``FLEETWARD_TENANT``, ``--json`` on every ``list``
and ``show``, and values outside a fixed set refused with exit status 2."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fleetward.cli import common
from fleetward.cli.main import app
from tests.test_cli import fw

# A concept has one option name; these spellings are the ones it replaced.
RETIRED = {
    "--environment": "--env",
    "--directory": "--dir",
    "--output": "--out",
    "--tenant-name": "--tenant",
    "--port": "--mqtt-port",  # except the API's own port (serve, up)
    "--version": "--firmware-version",  # except a stored version (policy, playbook)
}
ALLOWED = {
    ("fleetward serve", "--port"),
    ("fleetward up", "--port"),
    ("fleetward policy show", "--version"),
    ("fleetward playbook show", "--version"),
}


def _commands() -> Iterator[tuple[str, Any]]:
    def walk(cmd: Any, path: str) -> Iterator[tuple[str, Any]]:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}")
        else:
            yield path, cmd

    yield from walk(typer.main.get_command(app), "fleetward")


def _options(cmd: Any) -> Iterator[Any]:
    for param in cmd.params:
        if param.param_type_name == "option":
            yield param


def test_one_name_per_concept() -> None:
    found = []
    for path, cmd in _commands():
        for option in _options(cmd):
            if option.hidden:
                continue
            for name in option.opts + option.secondary_opts:
                if name in RETIRED and (path, name) not in ALLOWED:
                    found.append(f"{path} {name} (use {RETIRED[name]})")
    assert not found, found


def test_every_tenant_option_defaults_to_the_setting() -> None:
    tenant_options = 0
    for path, cmd in _commands():
        for option in _options(cmd):
            if option.name == "tenant" or "--tenant" in option.opts:
                tenant_options += 1
                assert option.opts == ["--tenant"], path
                assert option.default is None, path
                assert option.callback is not None, path
    assert tenant_options > 30  # every tenant-scoped command


def test_every_list_and_show_command_has_json() -> None:
    missing = [
        path
        for path, cmd in _commands()
        if path.split()[-1] in ("list", "show")
        and not any("--json" in o.opts for o in _options(cmd))
    ]
    assert not missing, missing


@pytest.mark.parametrize(
    "args",
    [
        ["device", "list", "--state", "bogus"],
        ["device", "state", "d1", "bogus"],
        ["device", "revoke", "d1", "--reason", "bored"],
        ["token", "create", "t", "--role", "root"],
        ["token", "create", "t", "--role", "admin", "--env", "staging"],
        ["factory", "create", "f", "--env", "staging"],
        ["factory", "attempts", "--format", "xml"],
        ["incident", "list", "--state", "bogus"],
        ["incident", "open", "--severity", "apocalyptic"],
        ["ca", "issuing-csr", "--env", "prod", "--out", "x.csr"],
        ["init", "--key-backend", "usb-stick"],
        ["serve", "--log-level", "loud"],
        ["sim", "run", "--server", "http://127.0.0.1:9", "--env", "staging"],
    ],
)
def test_a_value_outside_a_choice_exits_2_with_one_clear_line(
    args: list[str], tmp_path: Path
) -> None:
    out = CliRunner().invoke(app, ["--home", str(tmp_path / "none"), *args])
    assert out.exit_code == 2, out.output
    assert "is not one of" in out.output, out.output


def test_tenant_defaults_to_fleetward_tenant(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fw(home, "init")
    fw(home, "tenant", "create", "acme")
    monkeypatch.setenv("FLEETWARD_TENANT", "acme")
    fw(home, "token", "create", "acme-auditor", "--role", "auditor")
    names = [t["name"] for t in json.loads(fw(home, "token", "list", "--json"))]
    assert "acme-auditor" in names
    default = [
        t["name"] for t in json.loads(fw(home, "token", "list", "--tenant", "default", "--json"))
    ]
    assert "acme-auditor" not in default
    shown = json.loads(fw(home, "config", "show", "--json"))
    assert {"name": "tenant", "value": "acme", "source": "environment"}.items() <= next(
        row for row in shown if row["name"] == "tenant"
    ).items()


def test_list_json_prints_the_api_items(home: Path, tmp_path: Path) -> None:
    fw(home, "init")
    fw(home, "device", "register", "j-1", "--product", "p")
    devices = json.loads(fw(home, "device", "list", "--json"))
    assert [d["device_id"] for d in devices] == ["j-1"] and devices[0]["labels"] == {}
    assert json.loads(fw(home, "device", "show", "j-1", "--json"))["state"] == "pending"
    assert "state: pending" in fw(home, "device", "show", "j-1")
    for args in (["ca", "list"], ["token", "list"], ["tenant", "list"], ["audit", "list"],
                 ["policy", "history"], ["playbook", "list"], ["incident", "list"],
                 ["drill", "list"]):  # fmt: skip
        assert isinstance(json.loads(fw(home, *args, "--json")), list), args
    listing = json.loads(fw(home, "factory", "list", "--json"))
    assert listing == {"factories": [], "batches": []}


def test_old_spellings_still_work_where_scripts_use_them() -> None:
    hidden = {
        (path, name)
        for path, cmd in _commands()
        for option in _options(cmd)
        if option.hidden
        for name in option.opts
    }
    assert hidden == {("fleetward broker render", "--out"), ("fleetward factory run", "--out")}
    assert common.TENANT.default is None
