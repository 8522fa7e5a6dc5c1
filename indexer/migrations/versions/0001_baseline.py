"""Baseline: instances, items (the crawl frontier), jobs, job logs, tokens, schedules, meta.

The schema of the last release before migrations, written out table by table.
Databases made by that release are stamped at this revision after an additive
upgrade (see :mod:`indexer.migrations`).

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JOB_COUNTERS = ("discovered", "skipped_by_rule", "skipped", "not_modified", "fetched", "unchanged", "indexed",
                "deleted", "errors")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("source", sa.Text, nullable=True),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("modified_at", sa.Float, nullable=False),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("http_status", sa.Integer),
        sa.Column("priority", sa.Float, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("depth", sa.Integer, nullable=False),
        sa.Column("lastmod", sa.Text),
        sa.Column("changefreq", sa.Text),
        sa.Column("etag", sa.Text),
        sa.Column("last_modified", sa.Text),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("title", sa.Text),
        sa.Column("folder", sa.Text),
        sa.Column("filename", sa.Text),
        sa.Column("context", sa.Text),
        sa.Column("chunks", sa.Integer, nullable=False),
        sa.Column("fetched_at", sa.Float),
        sa.Column("indexed_at", sa.Float),
        sa.Column("seen_job", sa.String(36)),
        sa.Column("pending_job", sa.String(36)),
        sa.Column("checked_at", sa.Float),
        sa.Column("checked_lastmod", sa.Text),
        sa.Column("delete_reason", sa.Text),
        sa.UniqueConstraint("instance_id", "key", name="uq_items_instance_key"),
    )
    op.create_index("ix_items_frontier_order", "items", ["instance_id", "seen_job", sa.text("priority DESC"), "seq"])
    op.create_index("ix_items_pending", "items", ["status", "pending_job"])
    op.create_index("ix_items_content_hash", "items", ["instance_id", "content_hash"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("instance_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("ended_at", sa.Float),
        sa.Column("end_reason", sa.Text),
        sa.Column("crawl_done", sa.Boolean, nullable=False),
        sa.Column("pid", sa.Integer),
        sa.Column("target", sa.Text),
        *(sa.Column(name, sa.Integer, nullable=False) for name in JOB_COUNTERS),
    )
    op.create_index("ix_jobs_instance_id", "jobs", ["instance_id"])
    op.create_table(
        "job_logs",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("level", sa.String(8), nullable=False),
        sa.Column("url", sa.Text),
        sa.Column("message", sa.Text, nullable=False),
    )
    op.create_index("ix_job_logs_job_id", "job_logs", ["job_id"])
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("permissions", sa.JSON, nullable=False),
        sa.Column("folder_prefix", sa.Text),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("secret_hash"),
    )
    op.create_table(
        "schedules",
        sa.Column("instance_id", sa.String(64), primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("next_run", sa.Float, nullable=False),
        sa.Column("last_fired", sa.Float),
    )
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("meta", "schedules", "tokens", "job_logs", "jobs", "items", "instances"):
        op.drop_table(table)
