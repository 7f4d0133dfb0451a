"""``fleetward trustmap``: validate a trust map, print its schema, generate its threat model.

These read the map file only; checking the map against the live system is
the next step of issue 17 (``docs/trustmap.md``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import typer

from fleetward import trustmap
from fleetward.errors import InvalidInputError, UnavailableError

trustmap_app = typer.Typer(
    help="Trust map and threat model as code (docs/trustmap.md).", no_args_is_help=True
)

MAP = typer.Argument(..., help="the trust map (YAML)")


def _read(path: Path) -> trustmap.TrustMap:
    try:
        return trustmap.load(path.read_bytes())
    except OSError as exc:
        raise InvalidInputError(f"cannot read {path}: {exc.strerror}") from exc


@trustmap_app.command("schema")
def schema(out: Path | None = typer.Option(None, "--out", help="write here")) -> None:
    """Print the trust map's JSON Schema."""
    text = json.dumps(trustmap.json_schema(), indent=2, sort_keys=True) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)


@trustmap_app.command("validate")
def validate(path: Path = MAP) -> None:
    """Check a trust map against the schema; the first bad nodes are named."""
    m = _read(path)
    typer.echo(f"{path}: a valid trust map of {m.product}")


@trustmap_app.command("threats")
def threats(
    path: Path = MAP,
    format: Literal["markdown", "json", "dot", "svg"] = typer.Option(
        "markdown", "--format", help="markdown, json, dot (Graphviz) or svg (needs Graphviz)"
    ),
    out: Path | None = typer.Option(None, "--out", help="write here instead of stdout"),
) -> None:
    """The STRIDE threat model of a map (declared controls, not yet checked live)."""
    m = _read(path)
    if format == "markdown":
        text = trustmap.to_markdown(trustmap.model(m))
    elif format == "json":
        text = json.dumps(trustmap.to_json(trustmap.model(m)), indent=2) + "\n"
    else:
        text = trustmap.to_dot(m)
        if format == "svg":
            dot = shutil.which("dot")
            if dot is None:
                raise UnavailableError("svg needs Graphviz's dot (Debian: apt install graphviz)")
            text = subprocess.run(
                [dot, "-Tsvg"], input=text.encode(), capture_output=True, check=True, timeout=60
            ).stdout.decode()
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
