"""Where fleetward keeps its state, and how it is configured.

Settings come from, in order: explicit arguments, environment variables
(``FLEETWARD_HOME``, ``FLEETWARD_DATABASE_URL``, ``FLEETWARD_PUBLIC_URL``,
``FLEETWARD_KEY_PASSPHRASE``, ``FLEETWARD_TRUSTED_PROXIES``), then
``settings.json`` in the home directory, then built-in defaults. The home
directory holds the SQLite database, the encrypted CA key files and the audit
checkpoint key; it is 0700 and its files 0600 (see ``fleetward._files``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from fleetward._files import private_dir, write_private
from fleetward.errors import InvalidInputError

__all__ = ["DEFAULT_PORT", "Settings", "default_home", "parse_trusted_proxies"]

DEFAULT_PORT = 8400


def default_home() -> Path:
    """The home directory: ``$FLEETWARD_HOME`` or ``~/.fleetward``."""
    env = os.environ.get("FLEETWARD_HOME")
    return Path(env) if env else Path.home() / ".fleetward"


def parse_trusted_proxies(raw: str) -> tuple[str, ...]:
    """Parse ``FLEETWARD_TRUSTED_PROXIES``: comma-separated addresses or CIDRs.

    Every entry must be an IP address or a network with no host bits set:
    uvicorn would quietly treat a typo as a literal that never matches, and
    ``*`` (trust every peer) is refused because it gives any client the power
    to choose the source address recorded for it.

    Raises:
        InvalidInputError: an entry is not an address or a network.
    """
    out: list[str] = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        try:
            if "/" in entry:
                out.append(str(ipaddress.ip_network(entry, strict=True)))
            else:
                out.append(str(ipaddress.ip_address(entry)))
        except ValueError:
            raise InvalidInputError(
                f"FLEETWARD_TRUSTED_PROXIES: {entry[:60]!r} is not an IP address or network"
            ) from None
    return tuple(out)


@dataclass(frozen=True)
class Settings:
    """Resolved settings of one fleetward installation."""

    home: Path
    database_url: str
    public_url: str
    # Peers whose X-Forwarded-For / X-Forwarded-Proto are believed; none by
    # default, so a client cannot choose the source address recorded for it.
    trusted_proxies: tuple[str, ...] = ()

    @classmethod
    def load(cls, home: Path | None = None) -> Settings:
        """Resolve settings for ``home`` (or the default home)."""
        home = (home or default_home()).expanduser().resolve()
        stored: dict[str, str] = {}
        path = home / "settings.json"
        if path.exists():
            stored = json.loads(path.read_text())
        db = (
            os.environ.get("FLEETWARD_DATABASE_URL")
            or stored.get("database_url")
            or f"sqlite:///{home / 'fleetward.db'}"
        )
        public = (
            os.environ.get("FLEETWARD_PUBLIC_URL")
            or stored.get("public_url")
            or f"http://127.0.0.1:{DEFAULT_PORT}"
        )
        proxies = parse_trusted_proxies(os.environ.get("FLEETWARD_TRUSTED_PROXIES", ""))
        return cls(
            home=home,
            database_url=db,
            public_url=public.rstrip("/"),
            trusted_proxies=proxies,
        )

    @property
    def webhook_hosts(self) -> frozenset[str]:
        """Hosts playbook webhooks may reach (``FLEETWARD_WEBHOOK_HOSTS``:
        comma-separated ``host`` or ``host:port``; none by default, so a
        playbook author cannot make fleetward probe internal addresses)."""
        raw = os.environ.get("FLEETWARD_WEBHOOK_HOSTS", "")
        return frozenset(h.strip().lower() for h in raw.split(",") if h.strip())

    @property
    def keys_dir(self) -> Path:
        """Directory of encrypted key files."""
        return self.home / "keys"

    @property
    def checkpoint_key_path(self) -> Path:
        """Encrypted key that signs audit checkpoints."""
        return self.keys_dir / "audit-checkpoint.pem"

    @property
    def checkpoint_public_key_path(self) -> Path:
        """Public half of the checkpoint key, for verifiers."""
        return self.keys_dir / "audit-checkpoint.pub.pem"

    def save(self) -> None:
        """Write the non-secret settings to ``settings.json`` (home 0700, file 0600)."""
        private_dir(self.home)
        data = {"database_url": self.database_url, "public_url": self.public_url}
        write_private(self.home / "settings.json", (json.dumps(data, indent=2) + "\n").encode())

    def key_passphrase(self) -> bytes:
        """The passphrase that encrypts file keys.

        ``FLEETWARD_KEY_PASSPHRASE`` wins. Otherwise a random passphrase is
        kept in ``<home>/keys/.passphrase`` (mode 0600): the embedded default,
        convenient but only as safe as the home directory. Production sets
        the variable or keeps CA keys in PKCS#11.
        """
        env = os.environ.get("FLEETWARD_KEY_PASSPHRASE")
        if env:
            return env.encode()
        path = self.keys_dir / ".passphrase"
        if not path.exists():
            private_dir(self.keys_dir)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
        return path.read_text().strip().encode()
