"""Bad data ends every ``fleetward`` command with one line and a non-zero exit.

A missing file, a directory where a file goes, bad PEM, JSON that is not
UTF-8, broken YAML, an integer past 64 bits: each is an error of the one
tree (``fleetward.cli._errors.CleanErrors`` wraps the foreign ones), which
the real console entry point prints as one ``error:`` line, exit 1, no
traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetward.cli._errors import describe
from fleetward.cli.main import app as cli
from fleetward.errors import FleetwardError
from fleetward.runtime.context import AppContext


@pytest.fixture
def bad(tmp_path: Path) -> Path:
    """A directory of malformed input files."""
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    (tmp_path / "bad.yaml").write_text("rules: [\n")
    (tmp_path / "dir").mkdir()
    return tmp_path


CASES = [
    ("audit", "verify-proof", "{b}/missing.json", "--public-key", "{b}/missing.pem"),
    ("audit", "verify-proof", "{b}/bad.json", "--public-key", "{b}/bad.pem"),
    ("audit", "prove", str(2**64)),
    ("policy", "set", "{b}/missing.yaml"),
    ("policy", "set", "{b}/bad.yaml"),
    ("policy", "set", "{b}/bad.json"),
    ("playbook", "put", "{b}/dir"),
    ("playbook", "put", "{b}/bad.yaml"),
    ("factory", "root", "--name", "v", "--cert", "{b}/bad.pem"),
    ("factory", "root", "--name", "v", "--cert", "{b}/missing.pem"),
    ("device", "enroll", "d-1", "--csr", "{b}/bad.pem", "--env", "test"),
    ("device", "enroll", "d-1", "--csr", "{b}/bad.json", "--env", "test"),
]
IDS = [f"{i}-{c[0]}-{c[1]}" for i, c in enumerate(CASES)]


def _argv(ctx: AppContext, bad: Path, args: tuple[str, ...]) -> list[str]:
    return ["--home", str(ctx.settings.home), *(a.format(b=bad) for a in args)]


@pytest.mark.parametrize("args", CASES, ids=IDS)
def test_bad_input_is_a_fleetward_error(ctx: AppContext, bad: Path, args: tuple[str, ...]) -> None:
    """Under CliRunner: the refusal is an error of the tree (which the entry
    point prints as one line), never a foreign exception."""
    result = CliRunner().invoke(cli, _argv(ctx, bad, args))
    assert isinstance(result.exception, FleetwardError), repr(result.exception)
    assert "\n" not in describe(result.exception)
    assert "Traceback" not in result.output


def _one_error_line(module: str, argv: list[str]) -> list[str]:
    """Run ``module``'s console entry point; it must exit 1 with one ``error:`` line."""
    run = subprocess.run(
        [sys.executable, "-c", f"from {module} import main; main()", *argv],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "40"},
        check=False,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    return lines


@pytest.mark.parametrize("case", [0, 1, 2, 4, 6, 10], ids=[IDS[i] for i in (0, 1, 2, 4, 6, 10)])
def test_the_console_entry_point_prints_one_line_and_exits_1(
    ctx: AppContext, bad: Path, case: int
) -> None:
    lines = _one_error_line("fleetward.cli.main", _argv(ctx, bad, CASES[case]))
    if case == 0:
        assert lines == [f"error: {bad / 'missing.pem'}: No such file or directory"]


def _agent_state(tmp_path: Path, *, identity: str) -> Path:
    """An agent directory with a broken state file and a CA bundle that is not PEM."""
    device = tmp_path / "agent" / "d1"
    device.mkdir(parents=True)
    (device / "identity.json").write_text(identity)
    (device / "cert.pem").write_text("garbage\n")
    (tmp_path / "ca.pem").write_text("garbage\n")
    return tmp_path


@pytest.mark.parametrize(
    ("command", "identity"),
    [
        ("renew", '{"device_id": "d1", "keystore": "software"'),  # truncated JSON
        ("renew", '{"device_id": "d1", "keystore": "software"}'),  # CA bundle not PEM
        ("run", '{"device_id": "d1", "keystore": "software"}'),
    ],
    ids=["renew-bad-state", "renew-bad-ca", "run-bad-ca"],
)
def test_the_agent_prints_one_line_and_exits_1_on_bad_local_data(
    tmp_path: Path, command: str, identity: str
) -> None:
    base = _agent_state(tmp_path, identity=identity)
    _one_error_line(
        "fleetward.agent.cli",
        [command, "--device-id", "d1", "--device-server", "https://127.0.0.1:9",
         "--server-ca", str(base / "ca.pem"), "--dir", str(base / "agent")],
    )  # fmt: skip
