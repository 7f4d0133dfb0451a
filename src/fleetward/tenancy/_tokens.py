"""API token format: ``fwt_<id>_<secret>``.

The id (16 hex chars) is public and indexes the row; the secret (32 random
bytes, base64url) is shown once and stored only as its SHA-256. SHA-256 is
enough here (not a password hash) because the secret has 256 bits of entropy.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fleetward.errors import AuthenticationError

__all__ = ["MAX_TOKEN_LENGTH", "hash_secret", "new_token", "parse_token", "secret_matches"]

PREFIX = "fwt"
MAX_TOKEN_LENGTH = 128  # limit on untrusted input before any parsing


def new_token() -> tuple[str, str, str]:
    """A fresh token: ``(token_id, secret, full_token_string)``."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return token_id, secret, f"{PREFIX}_{token_id}_{secret}"


def parse_token(token: str) -> tuple[str, str]:
    """Split a token string into ``(token_id, secret)``.

    Raises:
        AuthenticationError: it is not a fleetward token.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise AuthenticationError("malformed API token")
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX or len(parts[1]) != 16 or not parts[2]:
        raise AuthenticationError("malformed API token")
    return parts[1], parts[2]


def hash_secret(secret: str) -> str:
    """Stored form of a secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented secret with the stored hash."""
    return hmac.compare_digest(hash_secret(secret), stored_hash)
