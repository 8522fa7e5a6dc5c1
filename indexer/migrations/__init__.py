"""Schema migrations of the state database (Alembic, configured in code: no ``alembic.ini``).

Revisions live in ``versions/`` inside the package, so an installed wheel carries
them.  :func:`upgrade` brings a database to the newest revision and is what every
:class:`~indexer.state.StateStore` does when it opens:

* PostgreSQL: under a session advisory lock (``pg_advisory_lock``), so API servers and
  crawlers starting together migrate once and the others wait, then find it done.
* SQLite: under an exclusive lock on ``<database>.migrate.lock`` beside the file.
* A database made by the release before migrations (our tables, no
  ``alembic_version``) gets the old additive upgrade (missing tables, columns and
  indexes) and is stamped at revision 0001 before the later revisions run: data kept.

``sitesearch db upgrade`` and ``sitesearch db current`` run the same from the command line.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

# Alembic logs its plugin setup at INFO when it is imported and "Context impl ..." on every
# open; quiet it before the imports below (upgrade() logs what actually ran).
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
BASELINE = "0001"
#: the tables of revision 0001; any of them without ``alembic_version`` means an earlier release's database
BASELINE_TABLES = {"instances", "items", "jobs", "job_logs", "tokens", "schedules", "meta"}
#: an arbitrary constant: the advisory lock key of our schema migrations
PG_LOCK_KEY = 0x5173_5EA2_C4_0001


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration for our revisions (optionally bound to an open connection)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision id."""
    rev = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert rev is not None
    return rev


def current(engine: Engine) -> str | None:
    """The database's revision (None: not under migrations yet, or empty)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the database to ``revision`` (adopting a pre-migration database first).

    Args:
        engine: the state database.
        revision: the target (default the newest).

    Returns:
        The revision the database was at before (None: empty or pre-migration).
    """
    target = head() if revision == "head" else revision
    if current(engine) == target:  # the usual start: nothing to do, no lock taken
        return target
    with _migration_lock(engine) as conn:
        before = MigrationContext.configure(conn).get_current_revision()
        conn.commit()
        if before == target:
            return before
        if before is not None and not _known(before):
            # a newer release migrated this database; revisions are additive, so this one still works
            logger.warning("state database is at revision %s, newer than this release (%s); not migrating", before, target)
            return before
        if before is None and BASELINE_TABLES & set(inspect(conn).get_table_names()):
            _adopt(conn)
        command.upgrade(alembic_config(conn), revision)
        conn.commit()
        logger.info("state database migrated from %s to %s", before or "empty", target)
        return before


def _known(revision: str) -> bool:
    """Whether this release has ``revision`` among its migrations."""
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(revision) is not None
    except CommandError:  # "No such revision"
        return False


def _adopt(conn: Connection) -> None:
    """A database from before migrations: additive upgrade to the baseline schema, then stamp it."""
    from indexer.state import upgrade_schema

    upgrade_schema(conn)
    conn.commit()
    command.stamp(alembic_config(conn), BASELINE)
    conn.commit()
    logger.info("state database from an earlier release adopted at revision %s", BASELINE)


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """A connection holding the database-wide migration lock."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
                conn.commit()
            return
        path = engine.url.database if engine.dialect.name == "sqlite" else None
        if not path or path == ":memory:" or path.startswith("file:"):
            yield conn
            return
        import fcntl

        with open(f"{path}.migrate.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield conn
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
