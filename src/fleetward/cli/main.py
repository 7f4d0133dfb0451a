"""Entry point of the ``fleetward`` command."""

from __future__ import annotations

import typer

from fleetward import __version__

app = typer.Typer(help="fleetward: trust plane for device fleets.", no_args_is_help=True)


@app.command()
def version() -> None:
    """Print the fleetward version."""
    typer.echo(__version__)
