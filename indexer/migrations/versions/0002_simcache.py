"""Similarity cache in the state database (was ``<data_dir>/simcache.sqlite`` per process host).

Every API process shares the cached answers.  The old per-directory SQLite file is
not imported: it is only a cache, refilled by the next answers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "simcache_entries",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.String(64), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("shingles", sa.Text, nullable=False),
        sa.Column("items", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_simcache_entries_instance_id", "simcache_entries", ["instance_id"])
    op.create_table(
        "simcache_buckets",
        sa.Column("key", sa.Text, nullable=False),
        sa.Column(
            "entry_id",
            BIG_ID,
            sa.ForeignKey("simcache_entries.id", ondelete="CASCADE", name="fk_simcache_buckets_entry"),
            nullable=False,
        ),
    )
    op.create_index("ix_simcache_buckets_key", "simcache_buckets", ["key"])
    op.create_index("ix_simcache_buckets_entry_id", "simcache_buckets", ["entry_id"])


def downgrade() -> None:
    op.drop_table("simcache_buckets")
    op.drop_table("simcache_entries")
