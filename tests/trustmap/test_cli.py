"""``fleetward trustmap``: schema, validate, threats in every format."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fleetward.cli.main import app
from fleetward.errors import FleetwardError

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "trustmap.example.yaml"


def run(*args: str) -> tuple[int, str]:
    """Exit code and output; a refusal is an error of the tree, its message the output."""
    result = CliRunner().invoke(app, list(args))
    if isinstance(result.exception, FleetwardError):
        return 1, str(result.exception.detail)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_validate_names_the_bad_node_and_exits_non_zero(tmp_path: Path) -> None:
    assert run("trustmap", "validate", str(EXAMPLE)) == (
        0, f"{EXAMPLE}: a valid trust map of gateway\n",
    )  # fmt: skip
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("storage: offline", "storage: in-a-drawer"))
    code, out = run("trustmap", "validate", str(bad))
    assert code == 1 and "code.tuf_root.storage" in out and "Traceback" not in out
    code, out = run("trustmap", "validate", str(tmp_path / "missing.yaml"))
    assert code == 1 and "cannot read" in out


def test_threats_in_every_format(tmp_path: Path) -> None:
    code, out = run("trustmap", "threats", str(EXAMPLE), "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["product"] == "gateway" and doc["checked"] is False
    assert {"TM-01", "TM-03", "TM-05", "TM-06"} <= {t["id"] for t in doc["threats"]}
    code, out = run("trustmap", "threats", str(EXAMPLE))
    assert code == 0 and out.startswith("# Threat model: gateway")
    svg = tmp_path / "flows.svg"
    assert run("trustmap", "threats", str(EXAMPLE), "--format", "svg", "--out", str(svg))[0] == 0
    assert "<svg" in svg.read_text()
    code, out = run("trustmap", "threats", str(EXAMPLE), "--format", "png")
    assert code == 2


def test_schema_is_the_published_one(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    assert run("trustmap", "schema", "--out", str(out))[0] == 0
    published = EXAMPLE.parent / "trustmap.schema.json"
    assert json.loads(out.read_text()) == json.loads(published.read_text())
