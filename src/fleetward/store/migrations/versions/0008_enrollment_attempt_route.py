"""enrollment records name the route and the environment of every attempt

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 02:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollment_attempts") as batch:
        batch.add_column(sa.Column("route", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("environment", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollment_attempts") as batch:
        batch.drop_column("environment")
        batch.drop_column("route")
