"""StateStore on a real SQLite file and a real PostgreSQL database: frontier order and keyset pages, discovery dedupe, counters, logs, tokens."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc

from indexer.state import StateStore, item_id_for
from tests.databases import INSTANCE, database_url  # noqa: F401 - fixture (and `state`, via conftest)


def rows(*specs: tuple[str, float, int]) -> list[dict[str, Any]]:
    return [{"key": k, "priority": p, "seq": s} for k, p, s in specs]


def walk_frontier(state: StateStore, job_id: str, limit: int) -> list[str]:
    keys: list[str] = []
    cursor = None
    while True:
        batch = state.frontier_batch(INSTANCE, job_id, after=cursor, limit=limit)
        if not batch:
            return keys
        assert len(batch) <= limit
        keys.extend(r["key"] for r in batch)
        cursor = (batch[-1]["priority"], batch[-1]["seq"])


def test_frontier_is_priority_desc_then_seq_asc_across_pages(state: StateStore) -> None:
    job = state.create_job(INSTANCE, "manual")["id"]
    prios = [0.5, 1.0, 0.5, 0.8, 1.0, 0.1, 0.8, 0.5, 0.3, 1.0, 0.5]
    state.record_discovered(INSTANCE, job, rows(*((f"http://example.test/p{i}", p, i) for i, p in enumerate(prios))))
    expected = [f"http://example.test/p{i}" for i in sorted(range(len(prios)), key=lambda i: (-prios[i], i))]
    for limit in (1, 2, 3, 4, 100):
        assert walk_frontier(state, job, limit) == expected


def test_frontier_is_per_job(state: StateStore) -> None:
    old = state.create_job(INSTANCE, "manual")["id"]
    state.record_discovered(INSTANCE, old, rows(("http://example.test/a", 0.5, 0), ("http://example.test/b", 0.5, 1)))
    new = state.create_job(INSTANCE, "manual")["id"]
    state.record_discovered(INSTANCE, new, rows(("http://example.test/b", 0.9, 0)))
    assert walk_frontier(state, new, 10) == ["http://example.test/b"]
    assert walk_frontier(state, old, 10) == ["http://example.test/a"]  # b moved on to the new job


def test_record_discovered_dedupes_within_a_job(state: StateStore) -> None:
    job = state.create_job(INSTANCE, "manual")["id"]
    first = rows(("http://example.test/a", 0.4, 0), ("http://example.test/b", 0.5, 1), ("http://example.test/a", 1.0, 2))
    assert state.record_discovered(INSTANCE, job, first) == 2  # duplicate in one call counted once
    again = rows(("http://example.test/b", 1.0, 3), ("http://example.test/c", 0.5, 4))
    assert state.record_discovered(INSTANCE, job, again) == 1  # b was already seen by this job
    a = state.get_item_by_key(INSTANCE, "http://example.test/a")
    b = state.get_item_by_key(INSTANCE, "http://example.test/b")
    assert (a["priority"], a["seq"]) == (0.4, 0)  # the first sighting keeps its place
    assert (b["priority"], b["seq"]) == (0.5, 1)
    _, total = state.list_items(INSTANCE)
    assert total == 3
    assert state.record_discovered(INSTANCE, job, []) == 0


def test_rediscovery_by_a_new_job_keeps_page_state(state: StateStore) -> None:
    job1 = state.create_job(INSTANCE, "manual")["id"]
    state.record_discovered(INSTANCE, job1, rows(("http://example.test/a", 0.5, 0)))
    item = state.get_item_by_key(INSTANCE, "http://example.test/a")
    assert item["id"] == item_id_for(INSTANCE, "http://example.test/a") and item["status"] == "queued"
    state.update_item(item["id"], status="indexed", etag='"v1"', content_hash="h1", chunks=4)
    job2 = state.create_job(INSTANCE, "manual")["id"]
    assert state.record_discovered(INSTANCE, job2, [{"key": "http://example.test/a", "priority": 0.9, "seq": 7}]) == 1
    item = state.get_item_by_key(INSTANCE, "http://example.test/a")
    assert (item["status"], item["etag"], item["content_hash"], item["chunks"]) == ("indexed", '"v1"', "h1", 4)
    assert (item["priority"], item["seq"], item["seen_job"]) == (0.9, 7, job2)


def test_job_counters_increment_atomically_across_connections(state: StateStore) -> None:
    job = state.create_job(INSTANCE, "manual")["id"]
    stores = [StateStore(state.url) for _ in range(4)]  # separate engines, like separate processes

    def bump(store: StateStore) -> None:
        for _ in range(25):
            store.incr_job(job, fetched=1, indexed=2)

    threads = [threading.Thread(target=bump, args=(s,)) for s in stores for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    got = state.get_job(job)
    assert (got["fetched"], got["indexed"], got["errors"]) == (200, 400, 0)


def test_incr_job_rejects_unknown_counters_and_ignores_no_job(state: StateStore) -> None:
    job = state.create_job(INSTANCE, "manual")["id"]
    with pytest.raises(ValueError, match="bogus"):
        state.incr_job(job, bogus=1)
    state.incr_job(None, fetched=1)
    state.incr_job(job, fetched=0)
    assert state.get_job(job)["fetched"] == 0


def test_finish_job_only_once(state: StateStore) -> None:
    job = state.create_job(INSTANCE, "manual")["id"]
    assert state.active_job(INSTANCE)["id"] == job
    assert state.finish_job(job, "completed", "done") is True
    assert state.finish_job(job, "failed", "late") is False
    got = state.get_job(job)
    assert (got["status"], got["end_reason"]) == ("completed", "done")
    assert state.active_job(INSTANCE) is None


def test_logs_paginate_in_order_per_job(state: StateStore) -> None:
    job = state.create_job(INSTANCE, "manual")["id"]
    other = state.create_job(INSTANCE, "manual")["id"]
    for i in range(25):
        state.log(job, f"line {i}", url=f"http://example.test/{i}", level="info" if i % 2 else "error")
    state.log_many(other, [(None, "elsewhere", "info")])
    state.log(None, "dropped")
    pages = [state.job_logs(job, limit=10, offset=off) for off in (0, 10, 20, 30)]
    assert [len(p) for p, _ in pages] == [10, 10, 5, 0]
    assert all(total == 25 for _, total in pages)
    messages = [line["message"] for p, _ in pages for line in p]
    assert messages == [f"line {i}" for i in range(25)]
    first = pages[0][0][0]
    assert (first["url"], first["level"]) == ("http://example.test/0", "error")
    other_lines, other_total = state.job_logs(other)
    assert other_total == 1 and other_lines[0]["message"] == "elsewhere" and other_lines[0]["url"] is None


def test_tokens_lifecycle(state: StateStore) -> None:
    tok = state.create_token("ci", "a" * 64, ["AI Search:Read"], folder_prefix="example.test/docs/")
    assert tok["permissions"] == ["AI Search:Read"] and tok["folder_prefix"] == "example.test/docs/"
    assert state.token_by_hash("a" * 64)["id"] == tok["id"]
    assert state.token_by_hash("b" * 64) is None
    state.create_token("ci", "c" * 64, ["AI Search:Edit"])
    with pytest.raises(sqlalchemy.exc.IntegrityError):
        state.create_token("dup", "a" * 64, [])
    assert [t["name"] for t in state.list_tokens()] == ["ci", "ci"]
    assert state.delete_token(tok["id"]) is True
    assert state.delete_token(tok["id"]) is False
    state.delete_tokens_named("ci")
    assert state.list_tokens() == []


def test_delete_instance_removes_its_rows(state: StateStore) -> None:
    job = state.create_job(INSTANCE, "manual")["id"]
    state.record_discovered(INSTANCE, job, rows(("http://example.test/a", 0.5, 0)))
    state.log(job, "hello")
    state.delete_instance(INSTANCE)
    assert state.get_instance(INSTANCE) is None
    assert state.get_job(job) is None
    assert state.job_logs(job) == ([], 0)
    assert state.list_items(INSTANCE) == ([], 0)


def test_older_database_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    # the jobs table as the first release created it: no `target` column
    con.execute(
        "CREATE TABLE jobs (id VARCHAR(36) PRIMARY KEY, instance_id VARCHAR(64) NOT NULL, source VARCHAR(16) NOT NULL,"
        " status VARCHAR(16) NOT NULL, created_at FLOAT NOT NULL, started_at FLOAT, ended_at FLOAT, end_reason TEXT,"
        " crawl_done BOOLEAN NOT NULL, pid INTEGER, discovered INTEGER NOT NULL, skipped_by_rule INTEGER NOT NULL,"
        " skipped INTEGER NOT NULL, not_modified INTEGER NOT NULL, fetched INTEGER NOT NULL, unchanged INTEGER NOT NULL,"
        " indexed INTEGER NOT NULL, deleted INTEGER NOT NULL, errors INTEGER NOT NULL)"
    )
    con.execute("INSERT INTO jobs VALUES ('j1','site','manual','completed',1.0,1.0,2.0,NULL,1,NULL,5,0,0,0,5,0,5,0,0)")
    con.commit()
    con.close()
    state = StateStore(f"sqlite:///{db}")
    job = state.get_job("j1")
    assert job is not None and job["indexed"] == 5 and job["target"] is None
    assert state.list_jobs("site")[0]["id"] == "j1"


def test_update_item_if_fetched_at_sees_a_newer_fetch(state: StateStore) -> None:
    """The pipeline's guard: a float ``fetched_at`` read back compares equal (SQLite REAL, PostgreSQL float8)."""
    import time

    item = state.ensure_item(INSTANCE, "http://example.test/a")
    assert state.update_item_if_fetched_at(item["id"], None, status="fetched") is True  # never fetched: None matches
    state.update_item(item["id"], fetched_at=time.time())
    read = state.get_item_by_id(item["id"])
    assert state.update_item_if_fetched_at(item["id"], read["fetched_at"], status="indexed") is True
    state.update_item(item["id"], fetched_at=read["fetched_at"] + 0.001, status="fetched")  # fetched again
    assert state.update_item_if_fetched_at(item["id"], read["fetched_at"], status="indexed") is False
    assert state.get_item_by_id(item["id"])["status"] == "fetched"
