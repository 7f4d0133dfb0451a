"""a retired issuing CA stays trusted for a window, then is distrusted

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 04:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from fleetward.store.types import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("certificate_authorities") as batch:
        batch.add_column(sa.Column("trusted_until", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("retirement_reason", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("retired_by", sa.String(length=200), nullable=True))
        batch.add_column(
            sa.Column(
                "distrust_when_migrated",
                sa.Boolean(),
                server_default=sa.false(),
                nullable=False,
            )
        )
        batch.add_column(sa.Column("distrusted_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("certificate_authorities") as batch:
        batch.drop_column("distrusted_at")
        batch.drop_column("distrust_when_migrated")
        batch.drop_column("retired_by")
        batch.drop_column("retirement_reason")
        batch.drop_column("trusted_until")
