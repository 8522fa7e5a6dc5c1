"""Shared indexing: the keyword index in the state database, and claims on fetched items.

* ``keyword_chunks`` (one row per chunk: JSON metadata, title, text, a GIN-indexed
  ``tsvector``) and ``keyword_instances`` (each instance's tokenizer), used by
  :mod:`indexer.keyword_pg` when the database is PostgreSQL.  On SQLite the tables are
  created too (one schema for both) but stay empty: the keyword index there is the
  per-instance FTS5 files of :mod:`indexer.keyword`.  Existing deployments get their
  keyword rows from the vector store at the next start (``IndexService`` backfills
  instances whose keyword index is empty).
* ``items.claimed_by`` / ``items.claimed_at``: an indexer claims a ``fetched`` item with
  a compare-and-set UPDATE before embedding it, so API processes and crawler workers
  sharing a Chroma server embed each page once (:meth:`indexer.state.StateStore.claim_pending`).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "keyword_chunks",
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("chunk_id", sa.Text, nullable=False),
        sa.Column("item_id", sa.String(64), nullable=False),
        sa.Column("meta", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("tsv", sa.Text().with_variant(postgresql.TSVECTOR(), "postgresql"), nullable=False),
        sa.PrimaryKeyConstraint("instance_id", "chunk_id"),
    )
    op.create_index("ix_keyword_chunks_item", "keyword_chunks", ["instance_id", "item_id"])
    op.create_index("ix_keyword_chunks_tsv", "keyword_chunks", ["tsv"], postgresql_using="gin")
    op.create_table(
        "keyword_instances",
        sa.Column("instance_id", sa.String(64), primary_key=True),
        sa.Column("tokenizer", sa.String(16), nullable=False),
    )
    # a database adopted from before migrations may already have them (additive upgrade of ``items``)
    existing = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("items")}
    with op.batch_alter_table("items") as batch:
        if "claimed_by" not in existing:
            batch.add_column(sa.Column("claimed_by", sa.String(64)))
        if "claimed_at" not in existing:
            batch.add_column(sa.Column("claimed_at", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("items") as batch:
        batch.drop_column("claimed_at")
        batch.drop_column("claimed_by")
    op.drop_table("keyword_instances")
    op.drop_table("keyword_chunks")
