"""Creating a fleetward installation: what ``fleetward init`` does.

Kept out of the CLI so tests, benchmarks and the simulator set up exactly the
same installation a user gets.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fleetward import identity, tenancy
from fleetward._files import private_dir, write_private
from fleetward.config import Settings
from fleetward.errors import ConflictError
from fleetward.keys import generate_file_signer
from fleetward.runtime.context import AppContext

__all__ = ["initialise"]


def initialise(
    settings: Settings,
    *,
    actor: str,
    key_backend: str = "file",
    offline_root: Path | None = None,
) -> tuple[AppContext, str]:
    """Create home, database schema, checkpoint key, tenant ``default`` and its CAs.

    Returns:
        The context and the first admin API token (shown once).

    Raises:
        ConflictError: the home is already initialised.
    """
    if (settings.home / "settings.json").exists():
        raise ConflictError(f"{settings.home} is already initialised")
    # An existing directory (made by hand, or by an installer) is narrowed to
    # 0700 whatever its mode was; see fleetward._files for the rules.
    private_dir(settings.home)
    private_dir(settings.keys_dir)
    context = AppContext.from_settings(settings)
    context.db.migrate()
    signer = generate_file_signer(
        settings.checkpoint_key_path, passphrase=settings.key_passphrase()
    )
    write_private(
        settings.checkpoint_public_key_path,
        signer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    )
    with context.db.session() as s:
        tenant = tenancy.create_tenant(s, name="default", actor=actor)
        identity.create_tenant_pki(
            s,
            context.pki,
            tenant=tenant,
            actor=actor,
            backend=key_backend,
            offline_root_dir=offline_root,
        )
        _, token = tenancy.create_token(
            s, tenant=tenant, name="first admin", role="admin", actor=actor
        )
    settings.save()
    return context, token
