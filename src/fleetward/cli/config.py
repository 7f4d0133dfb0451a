"""``fleetward config``: the effective settings and where each came from."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from fleetward.cli.common import console, print_json
from fleetward.config import Settings

__all__ = ["LOG_FORMAT", "LOG_LEVEL", "config_app"]

config_app = typer.Typer(help="Settings of this installation.", no_args_is_help=True)

# The log options of the commands that run fleetward (`serve`, `up`); they
# override FLEETWARD_LOG_LEVEL / FLEETWARD_LOG_FORMAT and settings.json.
LOG_LEVEL = typer.Option(
    None,
    "--log-level",
    help="default: FLEETWARD_LOG_LEVEL, else info",
)
LOG_FORMAT = typer.Option(
    None,
    "--log-format",
    help="json: one object per line for log shippers (default: FLEETWARD_LOG_FORMAT, else text)",
)


def _settings(ctx: typer.Context) -> Settings:
    """The settings of the selected home. ``--home`` given on the command
    line counts as an argument; taken from ``FLEETWARD_HOME`` it is left to
    the settings to read, so its source shows as the environment."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    home = obj.get("home")
    source = root.get_parameter_source("home")
    # By name: typer may carry its own copy of click's enum.
    if home is None or source is None or source.name != "COMMANDLINE":
        return Settings.load()
    return Settings.load(Path(str(home)))


@config_app.command("show")
def show(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Print every setting's effective value and its source (argument,
    environment, settings.json or default). Secrets are masked; a password
    in the database URL is hidden."""
    settings = _settings(ctx)
    rows = settings.describe()
    if as_json:
        print_json([row._asdict() for row in rows])
        return
    table = Table()
    for column in ("setting", "variable", "value", "source"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.name, row.variable, row.value, row.source)
    console.print(table)
    if not (settings.home / "settings.json").exists():
        console.print(f"{settings.home} is not initialised yet (`fleetward init`)")
