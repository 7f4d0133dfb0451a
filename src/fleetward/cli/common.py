"""Helpers shared by the domain CLIs: home, context, local principal, output."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from sqlalchemy.orm import Session

from fleetward.config import Settings
from fleetward.errors import InvalidInputError
from fleetward.runtime.context import AppContext
from fleetward.tenancy import service as tenancy
from fleetward.tenancy.roles import Principal

__all__ = [
    "admin_session",
    "console",
    "err",
    "load_ctx",
    "load_settings",
    "local_actor",
    "local_principal",
    "print_json",
]

console = Console()
err = Console(stderr=True)


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
