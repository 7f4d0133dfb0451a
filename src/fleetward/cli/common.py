"""Helpers shared by the domain CLIs: home, context, local principal, output,
and the options every command spells the same way.

Conventions of the ``fleetward`` command (``tests/test_cli_conventions.py``
holds every command to them):

- one name per concept: ``--tenant`` (default ``FLEETWARD_TENANT``, else
  ``default``), ``--env``, ``--key-backend``, ``--json``, ``--limit``,
  ``--dir`` for a directory a command keeps, ``--out`` for a file it writes;
- an option or argument with a fixed set of values is a choice: a value
  outside it exits 2 with one line naming the choices;
- every ``list`` and ``show`` command prints JSON with ``--json`` (a list
  prints the items the REST API's list returns for the same objects).
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

import typer
from pydantic import BaseModel
from rich.console import Console
from sqlalchemy.orm import Session

from fleetward.config import Settings
from fleetward.errors import InvalidInputError
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import ENVIRONMENTS, Principal

__all__ = [
    "JSON",
    "KEY_BACKEND",
    "TENANT",
    "Environment",
    "KeyBackend",
    "admin_session",
    "console",
    "err",
    "load_ctx",
    "load_settings",
    "local_actor",
    "local_principal",
    "print_items",
    "print_json",
]

console = Console()
err = Console(stderr=True)

Environment = Literal["test", "production", "drill"]
if get_args(Environment) != ENVIRONMENTS:  # one list of environments, checked at import
    raise RuntimeError("Environment must list fleetward.tenancy.roles.ENVIRONMENTS")
KeyBackend = Literal["file", "pkcs11"]


def _tenant(ctx: typer.Context, value: str | None) -> str:
    """``--tenant`` as given, else the ``tenant`` setting (``FLEETWARD_TENANT``,
    the home's settings.json, else ``default``)."""
    return value if value is not None else load_settings(ctx).tenant


TENANT: Any = typer.Option(
    None,
    "--tenant",
    callback=_tenant,
    help="tenant name (default: FLEETWARD_TENANT, else default)",
)
JSON: Any = typer.Option(False, "--json", help="machine-readable output (JSON)")
KEY_BACKEND: Any = typer.Option("file", "--key-backend", help="where CA keys live")


def _home(ctx: typer.Context) -> Path | None:
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, dict) else {}
    home = obj.get("home")
    return Path(home) if home else None


def load_settings(ctx: typer.Context, **overrides: Any) -> Settings:
    """The settings of the home selected by ``--home`` (``FLEETWARD_HOME``),
    with ``overrides`` (command-line options; ``None`` = not given) on top."""
    return Settings.load(_home(ctx), **overrides)


def load_ctx(ctx: typer.Context, **overrides: Any) -> AppContext:
    """The installation selected by ``--home``; it must be initialised.
    ``overrides`` are command-line options for its settings (``None`` = not given)."""
    settings = load_settings(ctx, **overrides)
    if not (settings.home / "settings.json").exists():
        raise InvalidInputError(
            f"{settings.home} is not a fleetward home; run `fleetward init` first"
        )
    app = AppContext.from_settings(settings)
    ctx.call_on_close(app.db.dispose)
    return app


def local_actor() -> str:
    """Actor name of the local CLI user in audit entries."""
    return f"cli:{getpass.getuser()}"


def local_principal(app: AppContext, tenant: str) -> Principal:
    """The local operator: admin of ``tenant``, because it holds the keys."""
    with app.db.session() as s:
        t = tenancy.get_tenant_by_name(s, tenant)
        return Principal(tenant_id=t.id, tenant_name=t.name, role="admin", actor=local_actor())


@contextmanager
def admin_session(
    ctx: typer.Context, tenant: str, *, action: str, subject: str
) -> Iterator[tuple[AppContext, Principal, Session]]:
    """The local admin of ``tenant`` in a unit of work that records refusals."""
    app = load_ctx(ctx)
    who = local_principal(app, tenant)
    with app.unit_of_work(
        actor=who.actor, action=action, subject=subject, tenant_id=who.tenant_id
    ) as session:
        yield app, who, session


def print_json(value: Any) -> None:
    """Machine-readable output."""
    typer.echo(json.dumps(value, indent=2, default=str))


def print_items(items: Sequence[BaseModel]) -> None:
    """A list's ``--json`` output: a JSON array of the items (the REST API's
    models, so both surfaces print one object the same way)."""
    print_json([item.model_dump(mode="json") for item in items])
