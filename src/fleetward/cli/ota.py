"""``fleetward ota``: the tenant's TUF repository, with root keys that can stay offline."""

from __future__ import annotations

from pathlib import Path

import typer

from fleetward.cli.common import TENANT, admin_session, console, load_settings
from fleetward.errors import InvalidInputError
from fleetward.ota import repository
from fleetward.tenancy import service as tenancy

ota_app = typer.Typer(help="OTA: the TUF repository and its root keys.", no_args_is_help=True)

PASSPHRASE_ENV = "FLEETWARD_ROOT_PASSPHRASE"  # noqa: S105 - a variable name, not a secret


def _offline(ctx: typer.Context, directory: Path | None) -> repository.OfflineKeys | None:
    if directory is None:
        return None
    secret = load_settings(ctx).root_passphrase_value() or typer.prompt(
        f"passphrase for the root keys in {directory}", hide_input=True
    )
    if not secret:
        raise InvalidInputError("offline root keys need a passphrase")
    return repository.OfflineKeys(directory.resolve(), secret.encode())


@ota_app.command("init")
def init(
    ctx: typer.Context,
    tenant: str = TENANT,
    offline_root: Path | None = typer.Option(
        None, help=f"write the root keys here (encrypted; ${PASSPHRASE_ENV}) and move them offline"
    ),
    threshold: int = typer.Option(2, help="root signatures needed"),
    keys: int = typer.Option(3, help="root keys"),
) -> None:
    """Create the tenant's TUF repository (it is also created on first use,
    with root keys in the key ring)."""
    offline = _offline(ctx, offline_root)
    with admin_session(ctx, tenant, action="ota.repository.create", subject=f"tenant:{tenant}") as (
        app,
        who,
        s,
    ):
        created = repository.ensure_repository(
            s,
            app.pki.keyring,
            tenancy.get_tenant(s, who.tenant_id),
            root_threshold=threshold,
            root_keys=keys,
            offline_root=offline,
        )
    console.print("repository created" if created else "the repository exists already")
    if created and offline is not None:
        console.print(f"root keys written to {offline.directory}: move them offline")


@ota_app.command("rotate-root")
def rotate_root(
    ctx: typer.Context,
    tenant: str = TENANT,
    old_root: Path | None = typer.Option(None, help="the current root keys, brought back online"),
    new_root: Path | None = typer.Option(None, help="write the new root keys here (offline)"),
    threshold: int = typer.Option(2),
    keys: int = typer.Option(3),
) -> None:
    """New root keys, signed by the current root keys and the new ones."""
    old = _offline(ctx, old_root)
    new = _offline(ctx, new_root) if new_root is not None else None
    with admin_session(ctx, tenant, action="ota.root.rotate", subject="root") as (app, who, s):
        version = repository.rotate_root(
            s, app.pki.keyring, who, keys=keys, threshold=threshold, old_root=old,
            new_root_offline=new,
        )  # fmt: skip
    console.print(f"root version {version} published")
