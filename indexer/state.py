"""Durable state: instances, items (one per URL or uploaded file), jobs, job logs, tokens,
schedules and the similarity cache.

SQLite by default (WAL mode, so the crawler process and the API server share it), or
PostgreSQL (``SITESEARCH_DATABASE_URL=postgresql://...``, driven by psycopg) so several
API and crawler processes on several machines share one state: the same tables and the
same SQLAlchemy code on both.  The schema is managed by Alembic
(:mod:`indexer.migrations`); opening a :class:`StateStore` brings the database to the
newest revision.  All reads and writes of state go through :class:`StateStore`;
nothing else issues SQL.

The ``items`` table doubles as the crawl frontier: the spider records every
discovered URL with its sitemap ``priority`` and discovery sequence, and pulls
batches back out in ``priority DESC, seq ASC`` order, so a site with a million
URLs is scheduled from disk in bounded memory.
"""

from __future__ import annotations

import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    inspect,
    literal,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

logger = logging.getLogger(__name__)

metadata = MetaData()


class SafeText(TypeDecorator[str]):
    """Text from the web: NUL characters are dropped (PostgreSQL text cannot hold them)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return value.replace("\x00", "") if isinstance(value, str) else value


#: an auto-increment 64-bit key (SQLite's rowid alias must be spelled INTEGER)
BigId = BigInteger().with_variant(Integer(), "sqlite")

instances = Table(
    "instances",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("type", String(32), nullable=False),
    Column("source", SafeText, nullable=True),
    Column("config", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("modified_at", Float, nullable=False),
)

items = Table(
    "items",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("instance_id", String(64), nullable=False),
    Column("key", SafeText, nullable=False),  # the URL for crawled pages, the object key for uploads
    Column("origin", String(16), nullable=False, default="sitemap"),  # sitemap | link | upload
    Column("status", String(16), nullable=False, default="queued"),
    Column("error", SafeText),
    Column("http_status", Integer),
    Column("priority", Float, nullable=False, default=0.5),
    Column("seq", Integer, nullable=False, default=0),
    Column("depth", Integer, nullable=False, default=0),
    Column("lastmod", SafeText),
    Column("changefreq", SafeText),
    Column("etag", SafeText),
    Column("last_modified", SafeText),
    Column("content_hash", String(64)),
    Column("title", SafeText),
    Column("folder", SafeText),
    Column("filename", SafeText),
    Column("context", SafeText),
    Column("chunks", Integer, nullable=False, default=0),
    Column("fetched_at", Float),
    Column("indexed_at", Float),
    Column("seen_job", String(36)),  # last job that discovered this URL
    Column("pending_job", String(36)),  # job waiting for this item's indexing
    Column("checked_at", Float),  # last definitive answer (200, 304, 404, 410): freshness baseline
    Column("checked_lastmod", SafeText),  # the sitemap <lastmod> at that check
    Column("delete_reason", SafeText),  # set with status fetched: the index owner removes the item
    Column("claimed_by", String(64)),  # the indexer embedding this fetched item (revision 0003)
    Column("claimed_at", Float),  # when it claimed it; a claim older than the lease may be taken over
    UniqueConstraint("instance_id", "key", name="uq_items_instance_key"),
)
Index("ix_items_frontier_order", items.c.instance_id, items.c.seen_job, items.c.priority.desc(), items.c.seq)  # no sort per batch
Index("ix_items_pending", items.c.status, items.c.pending_job)
Index("ix_items_content_hash", items.c.instance_id, items.c.content_hash)  # duplicate-content lookups

JOB_COUNTERS = (
    "discovered",
    "skipped_by_rule",
    "skipped",
    "not_modified",
    "fetched",
    "unchanged",
    "indexed",
    "deleted",
    "errors",
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("instance_id", String(64), nullable=False, index=True),
    Column("source", String(16), nullable=False),  # manual | schedule | cli
    Column("status", String(16), nullable=False),  # queued | running | completed | failed | cancelled
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("ended_at", Float),
    Column("end_reason", SafeText),
    Column("crawl_done", Boolean, nullable=False, default=False),
    Column("pid", Integer),
    Column("target", SafeText),  # sync one item: the URL to re-fetch (None: a full sync)
    *(Column(name, Integer, nullable=False, default=0) for name in JOB_COUNTERS),
)

job_logs = Table(
    "job_logs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("job_id", String(36), nullable=False, index=True),
    Column("ts", Float, nullable=False),
    Column("level", String(8), nullable=False),
    Column("url", SafeText),
    Column("message", SafeText, nullable=False),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", SafeText, nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("permissions", JSON, nullable=False),
    Column("folder_prefix", SafeText),
    Column("created_at", Float, nullable=False),
)

schedules = Table(
    "schedules",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("spec", Text, nullable=False),  # "interval:21600" | "cron:0 */6 * * *"
    Column("next_run", Float, nullable=False),
    Column("last_fired", Float),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

#: the tables of the first Alembic revision (0001): what the release before migrations created
BASELINE_TABLES = (instances, items, jobs, job_logs, tokens, schedules, meta)

# Keyword index in the state database (indexer/keyword_pg.py; revision 0003).  Used only when the
# database is PostgreSQL (tsvector + GIN); on SQLite the tables exist but stay empty (FTS5 files are used).
keyword_chunks = Table(
    "keyword_chunks",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("chunk_id", Text, primary_key=True),
    Column("item_id", String(64), nullable=False),
    Column("meta", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Column("title", Text, nullable=False),
    Column("text", Text, nullable=False),
    Column("tsv", Text().with_variant(TSVECTOR(), "postgresql"), nullable=False),
)
Index("ix_keyword_chunks_item", keyword_chunks.c.instance_id, keyword_chunks.c.item_id)
Index("ix_keyword_chunks_tsv", keyword_chunks.c.tsv, postgresql_using="gin")
keyword_instances = Table(
    "keyword_instances",
    metadata,
    Column("instance_id", String(64), primary_key=True),
    Column("tokenizer", String(16), nullable=False),
)

# Similarity cache (indexer/simcache.py; revision 0002): an answer and one LSH bucket row per MinHash value.
simcache_entries = Table(
    "simcache_entries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("instance_id", String(64), nullable=False, index=True),
    Column("signature", String(64), nullable=False),  # hash of the request options the answer depends on
    Column("prompt", SafeText, nullable=False),
    Column("shingles", Text, nullable=False),  # JSON list
    Column("items", Text, nullable=False),  # JSON {item_id: content_hash} of the cited chunks' items
    Column("response", Text, nullable=False),  # JSON result
    Column("created_at", Float, nullable=False),
)

simcache_buckets = Table(
    "simcache_buckets",
    metadata,
    Column("key", Text, nullable=False, index=True),
    Column(
        "entry_id",
        BigId,
        ForeignKey("simcache_entries.id", ondelete="CASCADE", name="fk_simcache_buckets_entry"),
        nullable=False,
        index=True,
    ),
)

ACTIVE_JOB_STATUSES = ("queued", "running")
ITEM_NAMESPACE = uuid.UUID("5f0c8a52-2d33-4c1e-9d7e-0e3c1a7b9f10")


def item_id_for(instance_id: str, key: str) -> str:
    """Stable item id (the API's ``file_id``) for a key within an instance."""
    return str(uuid.uuid5(ITEM_NAMESPACE, f"{instance_id}\n{key}"))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")
    # Switching a new database to WAL needs an exclusive lock, and SQLite answers "database is
    # locked" at once (no busy wait) when processes opening a fresh database race for it: retry.
    deadline = time.monotonic() + 30
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def normalize_database_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` URLs use the psycopg (3) driver; others are unchanged."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


#: seconds after which an indexer's claim on a fetched item lapses (it died); another may then index it
CLAIM_LEASE_SECONDS = 600.0

#: connections per process: the API's request threads, the index worker and the scheduler share them
PG_POOL_SIZE = 5
PG_MAX_OVERFLOW = 10


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL mode and a generous busy timeout, PostgreSQL a small checked pool.

    Raises:
        ValueError: a database other than SQLite or PostgreSQL.
    """
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    elif url.startswith("postgresql"):
        engine = create_engine(
            url,
            pool_pre_ping=True,  # a restarted server or a dropped idle connection is replaced, not an error
            pool_size=PG_POOL_SIZE,
            max_overflow=PG_MAX_OVERFLOW,
            pool_recycle=1800,
            pool_timeout=30,
            connect_args={"connect_timeout": 10, "application_name": "sitesearch"},
        )
    else:
        raise ValueError(f"database_url: only sqlite:/// and postgresql:// databases are supported, got {url.split(':', 1)[0]!r}")
    return engine


def upgrade_schema(conn: Connection, tables: Iterable[Table] = BASELINE_TABLES) -> list[str]:
    """Bring a database made by a release before migrations up to the first revision, keeping its data.

    Missing tables are created; columns added since (always nullable or with a default)
    are created with ``ALTER TABLE ... ADD COLUMN``, and missing indexes are built.
    Returns the DDL statements it ran (table creations not included).
    """
    ran: list[str] = []
    tables = list(tables)
    metadata.create_all(conn, tables=tables, checkfirst=True)
    inspector = inspect(conn)
    for table in tables:
        existing = {col["name"] for col in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in existing:
                continue
            ddl = f"ALTER TABLE {table.name} ADD COLUMN {column.name} {column.type.compile(conn.dialect)}"
            default = column.default.arg if column.default is not None and column.default.is_scalar else None
            if default is not None:
                ddl += f" DEFAULT {int(default) if isinstance(default, bool) else repr(default)}"
            conn.execute(text(ddl))
            ran.append(ddl)
    for table in tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)
    if ran:
        logger.info("state database upgraded: %s", "; ".join(ran))
    return ran


def _row(r: Any) -> dict[str, Any] | None:
    return dict(r._mapping) if r is not None else None


class StateStore:
    """Every read and write of durable state.

    Opening one brings the database to the newest schema revision
    (:func:`indexer.migrations.upgrade`; safe when several processes start together).

    Args:
        url: SQLAlchemy database URL (``sqlite:///...`` or ``postgresql://...``).
    """

    def __init__(self, url: str) -> None:
        from indexer import migrations

        self.url = normalize_database_url(url)
        self.engine = make_engine(self.url)
        self.dialect = self.engine.dialect.name
        try:
            migrations.upgrade(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    def _insert(self, table: Table) -> Any:
        """An INSERT supporting ``on_conflict_do_*`` (upserts) on this database."""
        return pg_insert(table) if self.dialect == "postgresql" else sqlite_insert(table)

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()

    # --- meta ------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self.engine.connect() as c:
            return c.execute(select(meta.c.value).where(meta.c.key == key)).scalar()

    def set_meta(self, key: str, value: str) -> None:
        ins = self._insert(meta).values(key=key, value=value)
        with self.engine.begin() as c:
            c.execute(ins.on_conflict_do_update(index_elements=["key"], set_={"value": ins.excluded.value}))

    # --- instances -----------------------------------------------------------------
    def create_instance(self, instance_id: str, type_: str, source: str | None, config: Mapping[str, Any]) -> dict[str, Any]:
        now = time.time()
        with self.engine.begin() as c:
            c.execute(
                instances.insert().values(
                    id=instance_id, type=type_, source=source, config=dict(config), created_at=now, modified_at=now
                )
            )
        return self.get_instance(instance_id)  # type: ignore[return-value]

    def get_instance(self, instance_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            return _row(c.execute(select(instances).where(instances.c.id == instance_id)).first())

    def list_instances(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(select(instances).order_by(instances.c.created_at))]

    def count_instances(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(instances)).scalar() or 0)

    def update_instance_config(self, instance_id: str, config: Mapping[str, Any]) -> None:
        with self.engine.begin() as c:
            c.execute(
                instances.update()
                .where(instances.c.id == instance_id)
                .values(config=dict(config), modified_at=time.time())
            )

    def delete_instance(self, instance_id: str) -> None:
        """Delete an instance with its items, jobs and logs."""
        with self.engine.begin() as c:
            job_ids = select(jobs.c.id).where(jobs.c.instance_id == instance_id)
            c.execute(job_logs.delete().where(job_logs.c.job_id.in_(job_ids)))
            c.execute(jobs.delete().where(jobs.c.instance_id == instance_id))
            c.execute(items.delete().where(items.c.instance_id == instance_id))
            c.execute(schedules.delete().where(schedules.c.instance_id == instance_id))
            cached = select(simcache_entries.c.id).where(simcache_entries.c.instance_id == instance_id)
            c.execute(simcache_buckets.delete().where(simcache_buckets.c.entry_id.in_(cached)))
            c.execute(simcache_entries.delete().where(simcache_entries.c.instance_id == instance_id))
            c.execute(instances.delete().where(instances.c.id == instance_id))

    # --- jobs ----------------------------------------------------------------------
    def create_job(self, instance_id: str, source: str, *, status: str = "queued") -> dict[str, Any]:
        job_id = str(uuid.uuid4())
        with self.engine.begin() as c:
            c.execute(
                jobs.insert().values(
                    id=job_id,
                    instance_id=instance_id,
                    source=source,
                    status=status,
                    created_at=time.time(),
                    crawl_done=False,
                    **{k: 0 for k in JOB_COUNTERS},
                )
            )
        return self.get_job(job_id)  # type: ignore[return-value]

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            return _row(c.execute(select(jobs).where(jobs.c.id == job_id)).first())

    def list_jobs(self, instance_id: str, *, limit: int = 50, offset: int = 0) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            q = (
                select(jobs)
                .where(jobs.c.instance_id == instance_id)
                .order_by(jobs.c.created_at.desc())
                .limit(limit)
                .offset(offset)
            )
            return [dict(r._mapping) for r in c.execute(q)]

    def active_job(self, instance_id: str) -> dict[str, Any] | None:
        """The queued or running job of an instance, if any."""
        with self.engine.connect() as c:
            q = select(jobs).where(jobs.c.instance_id == instance_id, jobs.c.status.in_(ACTIVE_JOB_STATUSES))
            return _row(c.execute(q.order_by(jobs.c.created_at.desc())).first())

    def jobs_with_status(self, *statuses: str) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(select(jobs).where(jobs.c.status.in_(statuses)))]

    def update_job(self, job_id: str, **values: Any) -> None:
        with self.engine.begin() as c:
            c.execute(jobs.update().where(jobs.c.id == job_id).values(**values))

    def finish_job(self, job_id: str, status: str, reason: str | None = None) -> bool:
        """Move a job to a final status unless it already has one. Returns True if it changed."""
        with self.engine.begin() as c:
            res = c.execute(
                jobs.update()
                .where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE_JOB_STATUSES))
                .values(status=status, ended_at=time.time(), end_reason=func.coalesce(reason, jobs.c.end_reason))
            )
            return bool(res.rowcount)

    def create_job_if_idle(self, instance_id: str, source: str, *, target: str | None = None) -> dict[str, Any] | None:
        """Create a queued job unless the instance has a queued or running one (None then).

        One ``INSERT ... SELECT ... WHERE NOT EXISTS`` statement after locking the instance row
        (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises writers anyway), so two
        processes sharing a database cannot both start a job for the same instance.
        """
        job_id = str(uuid.uuid4())
        values = {
            "id": job_id,
            "instance_id": instance_id,
            "source": source,
            "status": "queued",
            "created_at": time.time(),
            "crawl_done": False,
            "target": target,
            **{k: 0 for k in JOB_COUNTERS},
        }
        active = select(jobs.c.id).where(jobs.c.instance_id == instance_id, jobs.c.status.in_(ACTIVE_JOB_STATUSES))
        cols = list(values)
        sel = select(*[literal(values[k]).label(k) for k in cols]).where(~active.exists())
        with self.engine.begin() as c:
            c.execute(select(instances.c.id).where(instances.c.id == instance_id).with_for_update())
            res = c.execute(jobs.insert().from_select(cols, sel))
            if not res.rowcount:
                return None
        return self.get_job(job_id)

    def last_job(self, instance_id: str, *, full_sync_only: bool = False) -> dict[str, Any] | None:
        """The most recently created job of an instance (optionally ignoring sync-one-item jobs)."""
        q = select(jobs).where(jobs.c.instance_id == instance_id)
        if full_sync_only:
            q = q.where(jobs.c.target.is_(None))
        with self.engine.connect() as c:
            return _row(c.execute(q.order_by(jobs.c.created_at.desc()).limit(1)).first())

    def incr_job(self, job_id: str | None, **deltas: int) -> None:
        """Atomically add to job counters (safe across processes)."""
        if not job_id or not deltas:
            return
        unknown = set(deltas) - set(JOB_COUNTERS)
        if unknown:
            raise ValueError(f"unknown job counters: {sorted(unknown)}")
        values = {k: getattr(jobs.c, k) + v for k, v in deltas.items() if v}
        if not values:
            return
        with self.engine.begin() as c:
            c.execute(jobs.update().where(jobs.c.id == job_id).values(**values))

    def log(self, job_id: str | None, message: str, *, url: str | None = None, level: str = "info") -> None:
        """Append a line to a job's log (no-op without a job)."""
        self.log_many(job_id, [(url, message, level)])

    def log_many(self, job_id: str | None, lines: Iterable[tuple[str | None, str, str]]) -> None:
        """Append ``(url, message, level)`` lines to a job's log in one transaction."""
        if not job_id:
            return
        now = time.time()
        rows = [{"job_id": job_id, "ts": now, "url": u, "message": m, "level": lv} for u, m, lv in lines]
        if rows:
            with self.engine.begin() as c:
                c.execute(job_logs.insert(), rows)

    def job_logs(self, job_id: str, *, limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """One page of a job's log lines, oldest first, and the total count."""
        with self.engine.connect() as c:
            total = c.execute(select(func.count()).select_from(job_logs).where(job_logs.c.job_id == job_id)).scalar()
            q = select(job_logs).where(job_logs.c.job_id == job_id).order_by(job_logs.c.id).limit(limit).offset(offset)
            return [dict(r._mapping) for r in c.execute(q)], int(total or 0)

    # --- items: discovery and frontier ---------------------------------------------
    def record_discovered(self, instance_id: str, job_id: str | None, rows: Sequence[Mapping[str, Any]]) -> int:
        """Upsert discovered URLs (``key, priority, seq, lastmod, changefreq, origin, depth``).

        A URL already discovered by this job keeps its first position (the
        highest-priority / earliest sighting wins). Returns how many rows were new to this job.
        """
        if not rows:
            return 0
        for attempt in range(3):
            try:
                return self._record_discovered(instance_id, job_id, rows)
            except IntegrityError:
                # Two processes inserted the same new URL at once: PostgreSQL's upsert arbitrates
                # one unique index (instance, key) and the item id is another. The retry sees the row.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _record_discovered(self, instance_id: str, job_id: str | None, rows: Sequence[Mapping[str, Any]]) -> int:
        new = 0
        with self.engine.begin() as c:
            keys = [r["key"] for r in rows]
            # seen_job is compared in Python: as an SQL term SQLite would pick the frontier index
            # and scan every URL of the job per batch (quadratic on large sites)
            seen_now = {
                k
                for (k, seen) in c.execute(
                    select(items.c.key, items.c.seen_job).where(items.c.instance_id == instance_id, items.c.key.in_(keys))
                )
                if seen == job_id
            }
            payload = []
            for r in rows:
                if r["key"] in seen_now:
                    continue
                seen_now.add(r["key"])
                new += 1
                payload.append(
                    {
                        "id": item_id_for(instance_id, r["key"]),
                        "instance_id": instance_id,
                        "key": r["key"],
                        "origin": r.get("origin", "sitemap"),
                        "status": "queued",
                        "priority": r.get("priority", 0.5),
                        "seq": r["seq"],
                        "depth": r.get("depth", 0),
                        "lastmod": r.get("lastmod"),
                        "changefreq": r.get("changefreq"),
                        "seen_job": job_id,
                        "chunks": 0,
                    }
                )
            if payload:
                payload.sort(key=lambda r: r["key"])  # one lock order for every process: no deadlocks
                ins = self._insert(items)
                update_cols = ("origin", "priority", "seq", "depth", "lastmod", "changefreq", "seen_job")
                stmt = ins.on_conflict_do_update(
                    index_elements=["instance_id", "key"],
                    set_={k: getattr(ins.excluded, k) for k in update_cols},
                )
                c.execute(stmt, payload)
        return new

    def frontier_batch(
        self, instance_id: str, job_id: str, *, after: tuple[float, int] | None, limit: int
    ) -> list[dict[str, Any]]:
        """Next URLs of this job's frontier in ``priority DESC, seq ASC`` order (keyset pagination)."""
        base = select(items).where(items.c.instance_id == instance_id, items.c.seen_job == job_id)
        order = (items.c.priority.desc(), items.c.seq.asc())
        with self.engine.connect() as c:
            if after is None:
                return [dict(r._mapping) for r in c.execute(base.order_by(*order).limit(limit))]
            # Two index range scans instead of one OR condition, which would re-read the
            # consumed part of the current priority group on every batch.
            prio, seq = after
            same = base.where(items.c.priority == prio, items.c.seq > seq).order_by(items.c.seq.asc()).limit(limit)
            rows = [dict(r._mapping) for r in c.execute(same)]
            if len(rows) < limit:
                lower = base.where(items.c.priority < prio).order_by(*order).limit(limit - len(rows))
                rows.extend(dict(r._mapping) for r in c.execute(lower))
            return rows

    # --- items: per-item state ---------------------------------------------------------
    def get_item(self, instance_id: str, item_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            q = select(items).where(items.c.instance_id == instance_id, items.c.id == item_id)
            return _row(c.execute(q).first())

    def get_item_by_id(self, item_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            return _row(c.execute(select(items).where(items.c.id == item_id)).first())

    def get_item_by_key(self, instance_id: str, key: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            q = select(items).where(items.c.instance_id == instance_id, items.c.key == key)
            return _row(c.execute(q).first())

    def find_indexed_duplicate(self, instance_id: str, content_hash: str, *, exclude_id: str) -> dict[str, Any] | None:
        """Another indexed item of the instance whose extracted content has this hash (exact duplicate), if any."""
        with self.engine.connect() as c:
            q = select(items).where(
                items.c.instance_id == instance_id,
                items.c.content_hash == content_hash,
                items.c.status == "indexed",
                items.c.id != exclude_id,
            )
            return _row(c.execute(q.order_by(items.c.key).limit(1)).first())

    def ensure_item(self, instance_id: str, key: str, **values: Any) -> dict[str, Any]:
        """Get the item for ``key``, creating it with ``values`` if missing."""
        existing = self.get_item_by_key(instance_id, key)
        if existing:
            return existing
        with self.engine.begin() as c:  # a concurrent creator wins: its row is returned
            c.execute(
                self._insert(items)
                .values(
                    id=item_id_for(instance_id, key),
                    instance_id=instance_id,
                    key=key,
                    status=values.pop("status", "queued"),
                    priority=values.pop("priority", 0.5),
                    seq=values.pop("seq", 0),
                    depth=values.pop("depth", 0),
                    chunks=0,
                    **values,
                )
                .on_conflict_do_nothing()  # any unique key: the item id or (instance, key)
            )
        return self.get_item_by_key(instance_id, key)  # type: ignore[return-value]

    def update_item(self, item_id: str, **values: Any) -> None:
        with self.engine.begin() as c:
            c.execute(items.update().where(items.c.id == item_id).values(**values))

    def update_item_if_fetched_at(self, item_id: str, fetched_at: float | None, **values: Any) -> bool:
        """Update an item only if its ``fetched_at`` is still ``fetched_at`` (no newer fetch); True if it was."""
        same = items.c.fetched_at.is_(None) if fetched_at is None else items.c.fetched_at == fetched_at
        with self.engine.begin() as c:
            return bool(c.execute(items.update().where(items.c.id == item_id, same).values(**values)).rowcount)

    def list_items(
        self, instance_id: str, *, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[dict[str, Any]], int]:
        q = select(items).where(items.c.instance_id == instance_id)
        cq = select(func.count()).select_from(items).where(items.c.instance_id == instance_id)
        if status:
            q = q.where(items.c.status == status)
            cq = cq.where(items.c.status == status)
        with self.engine.connect() as c:
            total = int(c.execute(cq).scalar() or 0)
            rows = [dict(r._mapping) for r in c.execute(q.order_by(items.c.key).limit(limit).offset(offset))]
        return rows, total

    def list_items_where(
        self,
        instance_id: str,
        *,
        statuses: Sequence[str] | None = None,
        folder_prefix: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[dict[str, Any]], int]:
        """One page of an instance's items (by key) with any of ``statuses`` under ``folder_prefix``, and the total."""
        conds = [items.c.instance_id == instance_id]
        if statuses:
            conds.append(items.c.status.in_(list(statuses)))
        if folder_prefix:
            conds.append(func.substr(items.c.folder, 1, len(folder_prefix)) == folder_prefix)
        with self.engine.connect() as c:
            total = int(c.execute(select(func.count()).select_from(items).where(*conds)).scalar() or 0)
            q = select(items).where(*conds).order_by(items.c.key).limit(limit).offset(offset)
            rows = [dict(r._mapping) for r in c.execute(q)]
        return rows, total

    def delete_item(self, item_id: str) -> bool:
        """Remove an item row (an uploaded file that was deleted)."""
        with self.engine.begin() as c:
            return bool(c.execute(items.delete().where(items.c.id == item_id)).rowcount)

    # --- items: freshness and deletion -----------------------------------------------
    def vanished_items(self, instance_id: str, job_id: str, *, limit: int = 1_000_000) -> list[dict[str, Any]]:
        """Sitemap-discovered live items this job's discovery did not see (``id, key``)."""
        q = (
            select(items.c.id, items.c.key)
            .where(
                items.c.instance_id == instance_id,
                items.c.origin == "sitemap",
                items.c.status != "deleted",
                (items.c.seen_job != job_id) | items.c.seen_job.is_(None),
            )
            .order_by(items.c.key)
            .limit(limit)
        )
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(q)]

    def count_live_items(self, instance_id: str) -> int:
        """Items of an instance that are not deleted."""
        with self.engine.connect() as c:
            q = select(func.count()).select_from(items).where(
                items.c.instance_id == instance_id, items.c.status != "deleted"
            )
            return int(c.execute(q).scalar() or 0)

    def mark_for_deletion(self, item_ids: Sequence[str], job_id: str | None, reason: str) -> None:
        """Hand items to the index owner for removal (status ``fetched`` + ``delete_reason``)."""
        now = time.time()
        with self.engine.begin() as c:
            for start in range(0, len(item_ids), 500):
                chunk = list(item_ids[start : start + 500])
                c.execute(
                    items.update()
                    .where(items.c.id.in_(chunk))
                    .values(status="fetched", delete_reason=reason, pending_job=job_id, fetched_at=now)
                )

    def requeue_indexed(self, instance_id: str) -> int:
        """Hand every indexed item of an instance back to the indexer (status ``fetched``) to be indexed again
        from its stored page, e.g. after a change of chunking or custom metadata; returns how many."""
        with self.engine.begin() as c:
            res = c.execute(
                items.update()
                .where(items.c.instance_id == instance_id, items.c.status == "indexed")
                .values(status="fetched", pending_job=None)
            )
            return int(res.rowcount or 0)

    def shift_item_times(self, instance_id: str, seconds: float) -> None:
        """Move an instance's fetch/check times ``seconds`` into the past (tests and benchmarks:
        the state exactly as it will be that much later)."""
        with self.engine.begin() as c:
            c.execute(
                items.update()
                .where(items.c.instance_id == instance_id)
                .values(
                    checked_at=items.c.checked_at - seconds,
                    fetched_at=items.c.fetched_at - seconds,
                    indexed_at=items.c.indexed_at - seconds,
                )
            )

    # --- schedules --------------------------------------------------------------------
    def get_schedule(self, instance_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            return _row(c.execute(select(schedules).where(schedules.c.instance_id == instance_id)).first())

    def set_schedule(self, instance_id: str, spec: str, next_run: float) -> None:
        """Create or replace an instance's schedule row."""
        ins = self._insert(schedules).values(instance_id=instance_id, spec=spec, next_run=next_run)
        with self.engine.begin() as c:
            c.execute(
                ins.on_conflict_do_update(
                    index_elements=["instance_id"], set_={"spec": ins.excluded.spec, "next_run": ins.excluded.next_run}
                )
            )

    def claim_schedule(self, instance_id: str, *, expected_next_run: float, next_run: float) -> bool:
        """Compare-and-set ``next_run``: True for the one process that wins a due run."""
        with self.engine.begin() as c:
            res = c.execute(
                schedules.update()
                .where(schedules.c.instance_id == instance_id, schedules.c.next_run == expected_next_run)
                .values(next_run=next_run, last_fired=time.time())
            )
            return bool(res.rowcount)

    def delete_schedule(self, instance_id: str) -> None:
        with self.engine.begin() as c:
            c.execute(schedules.delete().where(schedules.c.instance_id == instance_id))

    def claim_pending(
        self,
        *,
        limit: int,
        claimer: str,
        instance_id: str | None = None,
        lease: float = CLAIM_LEASE_SECONDS,
        accept: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Claim up to ``limit`` items waiting in status ``fetched`` (oldest first) for indexing.

        Each item is taken by :meth:`claim_item` (compare-and-set), so indexers in several
        processes never get the same item; candidates another indexer won are skipped and
        more are read, so an empty result means nothing is left that this indexer may claim.

        Args:
            limit: at most this many items.
            claimer: this indexer's id (host, pid, random part).
            instance_id: only this instance's items.
            lease: a claim older than this many seconds (its indexer died) may be taken over.
            accept: called with a candidate's ``id``, ``instance_id``, ``fetched_at``,
                ``http_status`` and ``delete_reason``; False leaves it for another indexer
                (e.g. its stored page is on another machine).
        """
        won: list[dict[str, Any]] = []
        passed = 0  # candidates ``accept`` refused in this call: still claimable, so read past them
        page = max(limit, 64) if accept else limit
        cols = (items.c.id, items.c.instance_id, items.c.fetched_at, items.c.http_status, items.c.delete_reason)
        while len(won) < limit:
            q = select(*cols).where(*self._claimable(time.time() - lease))
            if instance_id:
                q = q.where(items.c.instance_id == instance_id)
            with self.engine.connect() as c:
                rows = c.execute(q.order_by(items.c.fetched_at, items.c.id).offset(passed).limit(page)).all()
            if not rows:
                break
            for row in rows:
                if len(won) >= limit:
                    break
                if accept is not None and not accept(dict(row._mapping)):
                    passed += 1
                    continue
                item = self.claim_item(row.id, claimer, lease=lease)
                if item is not None:
                    won.append(item)
        return won

    @staticmethod
    def _claimable(cutoff: float) -> tuple[Any, ...]:
        return (items.c.status == "fetched", (items.c.claimed_by.is_(None)) | (items.c.claimed_at < cutoff))

    def claim_item(self, item_id: str, claimer: str, *, lease: float = CLAIM_LEASE_SECONDS) -> dict[str, Any] | None:
        """Claim one ``fetched`` item for indexing (UPDATE ... WHERE still claimable); None if it is not claimable."""
        now = time.time()
        with self.engine.begin() as c:
            res = c.execute(
                items.update()
                .where(items.c.id == item_id, *self._claimable(now - lease))
                .values(claimed_by=claimer, claimed_at=now)
            )
            if not res.rowcount:
                return None
            return _row(c.execute(select(items).where(items.c.id == item_id)).first())

    def count_pending(self, job_id: str) -> int:
        with self.engine.connect() as c:
            q = select(func.count()).select_from(items).where(items.c.pending_job == job_id, items.c.status == "fetched")
            return int(c.execute(q).scalar() or 0)

    def distinct_values(self, instance_id: str, key: str) -> list[str]:
        """Distinct stored values of a filterable string key (``folder``, ``filename``, ``context``)."""
        column = {"folder": items.c.folder, "filename": items.c.key, "context": items.c.context}[key]
        with self.engine.connect() as c:
            q = select(column).where(items.c.instance_id == instance_id, column.is_not(None)).distinct()
            return [v for (v,) in c.execute(q)]

    def item_stats(self, instance_id: str) -> dict[str, int]:
        """Counts of items by status and the total of indexed chunks."""
        with self.engine.connect() as c:
            by_status = dict(
                c.execute(
                    select(items.c.status, func.count())
                    .where(items.c.instance_id == instance_id)
                    .group_by(items.c.status)
                ).all()
            )
            chunks = c.execute(
                select(func.coalesce(func.sum(items.c.chunks), 0)).where(items.c.instance_id == instance_id)
            ).scalar()
        out = {str(k): int(v) for k, v in by_status.items()}
        out["chunks"] = int(chunks or 0)
        return out

    # --- tokens ---------------------------------------------------------------------
    def create_token(
        self, name: str, secret_hash: str, permissions: Sequence[str], *, folder_prefix: str | None = None
    ) -> dict[str, Any]:
        token_id = str(uuid.uuid4())
        with self.engine.begin() as c:
            c.execute(
                tokens.insert().values(
                    id=token_id,
                    name=name,
                    secret_hash=secret_hash,
                    permissions=list(permissions),
                    folder_prefix=folder_prefix,
                    created_at=time.time(),
                )
            )
        return self.get_token(token_id)  # type: ignore[return-value]

    def get_token(self, token_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            return _row(c.execute(select(tokens).where(tokens.c.id == token_id)).first())

    def token_by_hash(self, secret_hash: str) -> dict[str, Any] | None:
        with self.engine.connect() as c:
            return _row(c.execute(select(tokens).where(tokens.c.secret_hash == secret_hash)).first())

    def list_tokens(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(select(tokens).order_by(tokens.c.created_at))]

    def delete_token(self, token_id: str) -> bool:
        with self.engine.begin() as c:
            return bool(c.execute(tokens.delete().where(tokens.c.id == token_id)).rowcount)

    def delete_tokens_named(self, name: str) -> None:
        with self.engine.begin() as c:
            c.execute(tokens.delete().where(tokens.c.name == name))

    # --- similarity cache (rows for indexer/simcache.py) ------------------------------
    def simcache_candidates(self, keys: Sequence[str]) -> list[dict[str, Any]]:
        """Cache entries sharing at least one LSH bucket key with ``keys``."""
        if not keys:
            return []
        ids = select(simcache_buckets.c.entry_id).where(simcache_buckets.c.key.in_(list(set(keys))))
        with self.engine.connect() as c:
            q = select(simcache_entries).where(simcache_entries.c.id.in_(ids))
            return [dict(r._mapping) for r in c.execute(q)]

    def simcache_add(self, entry: Mapping[str, Any], keys: Iterable[str]) -> int:
        """Store a cache entry (``simcache_entries`` columns but ``id``) with its bucket keys; returns its id."""
        with self.engine.begin() as c:
            entry_id = int(c.execute(simcache_entries.insert().values(**entry)).inserted_primary_key[0])
            c.execute(simcache_buckets.insert(), [{"key": k, "entry_id": entry_id} for k in set(keys)])
        return entry_id

    def simcache_delete(self, entry_ids: Iterable[int] | None = None, *, instance_id: str | None = None) -> int:
        """Delete cache entries by id, or all of an instance's; returns how many."""
        cond = simcache_entries.c.id.in_(list(entry_ids)) if entry_ids is not None else None
        if instance_id is not None:
            cond = simcache_entries.c.instance_id == instance_id
        if cond is None:
            return 0
        with self.engine.begin() as c:
            ids = select(simcache_entries.c.id).where(cond)
            c.execute(simcache_buckets.delete().where(simcache_buckets.c.entry_id.in_(ids)))
            return int(c.execute(simcache_entries.delete().where(cond)).rowcount or 0)

    def simcache_count(self) -> int:
        """Number of cache entries (all instances)."""
        with self.engine.connect() as c:
            return int(c.execute(select(func.count()).select_from(simcache_entries)).scalar() or 0)
