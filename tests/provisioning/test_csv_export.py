"""The enrollment records' CSV export cannot carry a formula into a spreadsheet.

Device ids and refusal reasons come from untrusted CSRs and requests; every
cell that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return
(OWASP's list for CSV injection) is exported with a leading ``'``, through
the API and through ``fleetward factory attempts --format csv``.
"""

from __future__ import annotations

import csv
import io

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fleetward.cli.main import app as cli
from fleetward.runtime.context import AppContext

API = "/api/v1"
HOSTILE_IDS = [
    '=HYPERLINK("http://203.0.113.9/x","open")',
    "+cmd|' /C calc'!A0",
    "-2+3+cmd|' /C calc'!A0",
    "@SUM(1+1)*cmd|' /C calc'!A0",
    "\t=1+1",
    "\r=1+1",
]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def _check(rows: list[list[str]]) -> None:
    header, body = rows[0], rows[1:]
    column = header.index("device_id")
    assert sorted(r[column] for r in body) == sorted("'" + d for d in HOSTILE_IDS)
    for row in body:
        for cell in row:
            assert not cell.startswith(FORMULA_START), row


def test_formula_cells_are_neutralised_in_every_csv_export(
    client: TestClient, ctx: AppContext, admin_token: str
) -> None:
    resp = client.post(
        f"{API}/enrollments",
        json={"items": [{"device_id": d, "csr": "x"} for d in HOSTILE_IDS], "environment": "test"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert resp.status_code < 500
    api = client.get(
        f"{API}/provisioning/attempts",
        params={"format": "csv"},
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert api.status_code == 200 and api.headers["content-type"].startswith("text/csv")
    _check(_cells(api.text))
    local = CliRunner().invoke(
        cli, ["--home", str(ctx.settings.home), "factory", "attempts", "--format", "csv"]
    )
    assert local.exit_code == 0, local.output
    _check(_cells(local.stdout))
