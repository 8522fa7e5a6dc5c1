"""Alembic migrations of the state database (indexer/migrations) on SQLite and PostgreSQL.

A fresh database is built by the revisions (not ``create_all``) and must equal the
models; a database of the release before migrations is adopted with its data; a
database at an older revision is upgraded with its data; re-opening at head changes
nothing; processes starting together on a fresh database all succeed.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, insert, inspect, text

from indexer import migrations
from indexer.config import get_settings
from indexer.simcache import SimilarityCache
from indexer.state import StateStore, instances, jobs, make_engine, metadata
from server.cli import main as cli_main
from tests.databases import PROCS, database_url, run_processes  # noqa: F401 - fixture

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PRE_MIGRATION_DDL = FIXTURES / "state_before_migrations.sql"  # sqlite_master of a state.db made by that release


def schema_diff(url: str) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    finally:
        engine.dispose()


def ddl_counter(engine: Any) -> list[str]:
    ran: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(("CREATE", "ALTER", "DROP", "INSERT INTO ALEMBIC", "UPDATE ALEMBIC")):
            ran.append(statement)

    return ran


def test_fresh_database_is_built_by_the_revisions_and_matches_the_models(database_url: str) -> None:  # noqa: F811
    store = StateStore(database_url)
    try:
        assert migrations.current(store.engine) == migrations.head()
        assert {"alembic_version", "simcache_entries", "simcache_buckets"} <= set(inspect(store.engine).get_table_names())
    finally:
        store.close()
    assert schema_diff(database_url) == []


def test_reopening_a_database_at_head_changes_nothing(database_url: str) -> None:  # noqa: F811
    store = StateStore(database_url)
    store.create_instance("site", "web-crawler", "http://example.test", {"id": "site"})
    job = store.create_job("site", "manual")["id"]
    store.close()
    engine = make_engine(database_url)
    ran = ddl_counter(engine)
    try:
        assert migrations.upgrade(engine) == migrations.head()
    finally:
        engine.dispose()
    assert ran == []
    again = StateStore(database_url)
    assert again.get_job(job)["instance_id"] == "site"
    again.close()


def test_upgrade_from_the_first_revision_keeps_data(database_url: str) -> None:  # noqa: F811
    engine = make_engine(database_url)
    migrations.upgrade(engine, "0001")
    assert migrations.current(engine) == "0001"
    assert "simcache_entries" not in inspect(engine).get_table_names()
    with engine.begin() as c:
        c.execute(insert(instances).values(id="site", type="web-crawler", source="x", config={"id": "site"},
                                           created_at=1.0, modified_at=1.0))
        c.execute(insert(jobs).values(id="j1", instance_id="site", source="manual", status="completed", created_at=2.0,
                                      crawl_done=True, **{k: 3 for k in ("discovered", "skipped_by_rule", "skipped",
                                      "not_modified", "fetched", "unchanged", "indexed", "deleted", "errors")}))
    engine.dispose()
    store = StateStore(database_url)
    try:
        assert migrations.current(store.engine) == migrations.head()
        assert store.get_job("j1")["indexed"] == 3 and store.get_instance("site")["config"] == {"id": "site"}
        cache = SimilarityCache(store)
        cache.store("site", "what is new", {"r": 1}, signature="s", items={})
        assert cache.count() == 1
    finally:
        store.close()


def test_database_of_the_release_before_migrations_is_adopted_with_its_data(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    con = sqlite3.connect(db)
    con.executescript(PRE_MIGRATION_DDL.read_text())
    con.execute("INSERT INTO instances VALUES ('site','web-crawler','example.test','{\"id\": \"site\"}',1.0,1.0)")
    con.execute("INSERT INTO items (id, instance_id, key, origin, status, priority, seq, depth, chunks, title)"
                " VALUES ('i1','site','http://example.test/','sitemap','indexed',0.5,0,0,3,'Home')")
    con.execute("INSERT INTO tokens VALUES ('t1','admin','" + "a" * 64 + "','[\"AI Search:Edit\"]',NULL,1.0)")
    con.execute("INSERT INTO job_logs (job_id, ts, level, message) VALUES ('j1', 1.0, 'info', 'old line')")
    con.commit()
    con.close()

    store = StateStore(f"sqlite:///{db}")
    try:
        assert migrations.current(store.engine) == migrations.head()
        assert store.get_instance("site")["config"] == {"id": "site"}
        assert store.get_item_by_key("site", "http://example.test/")["title"] == "Home"
        assert store.token_by_hash("a" * 64)["permissions"] == ["AI Search:Edit"]
        store.log("j1", "new line")
        assert [line["message"] for line in store.job_logs("j1")[0]] == ["old line", "new line"]
        SimilarityCache(store).store("site", "hello there", {"r": 1}, signature="s", items={})
    finally:
        store.close()
    # the only differences from the models: VARCHAR lengths the old tables declared (SQLite ignores them)
    diff = [d for group in schema_diff(f"sqlite:///{db}") for d in (group if isinstance(group, list) else [group])]
    assert {(d[0], d[2], d[3]) for d in diff} <= {("modify_type", "items", c) for c in ("lastmod", "changefreq", "checked_lastmod")}


def _open_store(url: str, barrier: Any) -> str | None:
    barrier.wait()
    store = StateStore(url)
    try:
        return migrations.current(store.engine)
    finally:
        store.close()


def test_processes_starting_together_on_a_fresh_database_all_succeed(database_url: str) -> None:  # noqa: F811
    revisions = run_processes(_open_store, database_url)
    assert revisions == [migrations.head()] * PROCS
    assert schema_diff(database_url) == []


def test_cli_db_current_and_upgrade(database_url: str, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                    capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("SITESEARCH_DATABASE_URL", database_url)
    monkeypatch.setenv("SITESEARCH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))  # main() configures logging
    try:
        run_cli_checks(capsys)
    finally:
        get_settings.cache_clear()  # main() cached settings from this test's environment


def run_cli_checks(capsys: pytest.CaptureFixture[str]) -> None:
    head = migrations.head()
    assert cli_main(["db", "current"]) == 0
    assert f"revision none (head {head}: run `sitesearch db upgrade`" in capsys.readouterr().out
    assert cli_main(["db", "upgrade"]) == 0
    assert f"at {head} (head), upgraded from no revision" in capsys.readouterr().out
    assert cli_main(["db", "current"]) == 0
    assert f"revision {head} (head {head}: up to date)" in capsys.readouterr().out
    assert cli_main(["db", "upgrade"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"at {head} (head)")


def test_a_database_migrated_by_a_newer_release_still_opens(database_url: str) -> None:  # noqa: F811
    store = StateStore(database_url)
    store.create_instance("site", "web-crawler", "http://example.test", {"id": "site"})
    with store.engine.begin() as c:  # as if release N+1 had added revision 0099 (additive)
        c.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    store.close()
    older = StateStore(database_url)  # rolling upgrade: a process of this release restarts
    try:
        assert older.get_instance("site") is not None and migrations.current(older.engine) == "0099"
    finally:
        older.close()
