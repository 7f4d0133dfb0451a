"""Tables of the tenancy domain: tenants, API tokens and console sessions."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column

from fleetward.store.db import Base
from fleetward.store.types import UTCDateTime

__all__ = ["ApiToken", "ConsoleSession", "Tenant"]


class Tenant(Base):
    """The isolation boundary: every other object belongs to one tenant."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    cert_lifetime_days: Mapped[int] = mapped_column(Integer, default=90)
    # Dangerous on purpose: production certificates for keys nobody attested
    # to have been generated in a secure element.
    allow_unattested_keys_in_production: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ApiToken(Base):
    """An operator credential: a role within one tenant.

    Only a SHA-256 hash of the secret is stored. The token id is public and
    is the prefix of the token string, so lookup needs no scan.
    """

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(32))
    environment: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # factory-operator tokens are scoped to one factory (provisioning.factories.id)
    factory_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ConsoleSession(Base):
    """A browser's sign-in to the operator console with an API token.

    The cookie holds a random secret; only its SHA-256 is stored (the row's
    id). The session acts as its token: it ends when the token expires or
    is revoked, at its own expiry, or at sign-out.
    """

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[str] = mapped_column(ForeignKey("api_tokens.id"), index=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id"))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
