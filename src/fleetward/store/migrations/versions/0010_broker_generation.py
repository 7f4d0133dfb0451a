"""a counter the broker table's inputs bump, so audit appends no longer rebuild it

Triggers in the database bump ``broker_generation.value`` in the same
transaction as every write to what the broker table is compiled from
(:func:`fleetward.comms.service.broker_snapshot`): tenants, policies, devices
and certificates. No write path can forget it, and nothing else moves it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 11:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Each input table, and the columns whose update changes the table (None:
# any update). Inserts and deletes always count.
INPUTS: dict[str, tuple[str, ...] | None] = {
    "tenants": ("name",),
    "comms_policies": None,
    "devices": ("tenant_id", "device_id", "product", "labels", "state"),
    "certificates": ("tenant_id", "device_pk", "environment", "status", "not_after", "der"),
}
_BUMP = "UPDATE broker_generation SET value = value + 1 WHERE id = 1"


def _sqlite_triggers() -> None:
    for table, columns in INPUTS.items():
        for event in ("INSERT", "UPDATE", "DELETE"):
            of = f" OF {', '.join(columns)}" if event == "UPDATE" and columns else ""
            op.execute(
                f"CREATE TRIGGER fw_broker_gen_{table}_{event.lower()} "
                f"AFTER {event}{of} ON {table} FOR EACH ROW BEGIN {_BUMP}; END"
            )


def _postgresql_triggers() -> None:
    op.execute(
        "CREATE FUNCTION fw_bump_broker_generation() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN {_BUMP}; RETURN NULL; END $$"
    )
    for table, columns in INPUTS.items():
        of = f" OF {', '.join(columns)}" if columns else ""
        # Per statement: a cohort revocation bumps it once, not once per row.
        op.execute(
            f"CREATE TRIGGER fw_broker_gen_{table} AFTER INSERT OR DELETE OR UPDATE{of} "
            f"ON {table} FOR EACH STATEMENT EXECUTE FUNCTION fw_bump_broker_generation()"
        )


def upgrade() -> None:
    op.create_table(
        "broker_generation",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO broker_generation (id, value) VALUES (1, 0)")
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_triggers()
    else:
        _sqlite_triggers()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in INPUTS:
            op.execute(f"DROP TRIGGER fw_broker_gen_{table} ON {table}")
        op.execute("DROP FUNCTION fw_bump_broker_generation()")
    else:
        for table in INPUTS:
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER fw_broker_gen_{table}_{event}")
    op.drop_table("broker_generation")
