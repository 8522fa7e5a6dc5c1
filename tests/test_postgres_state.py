"""StateStore under concurrency, on SQLite and on a real PostgreSQL server.

Several processes (``multiprocessing`` spawn: separate interpreters, engines and
connection pools) race for the things that must happen once: the one active job of an
instance, a due schedule, counter increments.  Plus what PostgreSQL is stricter about
than SQLite: driver URLs, NUL characters, literal folder prefixes, pool limits.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import event

from indexer.config import Settings
from indexer.state import StateStore, normalize_database_url
from tests.databases import INSTANCE, PROCS, database_url, run_processes  # noqa: F401 - fixture (and `state`, via conftest)
from tests.services import create_database

ROUNDS = 8


def _race_for_jobs(url: str, barrier: Any, rounds: int) -> list[int]:
    store = StateStore(url)
    won = []
    for r in range(rounds):
        barrier.wait()
        job = store.create_job_if_idle(INSTANCE, "schedule")
        barrier.wait()  # everyone has tried before the winner finishes its job
        if job is not None:
            won.append(r)
            store.finish_job(job["id"], "completed")
        barrier.wait()
    store.close()
    return won


def _bump_counters(url: str, barrier: Any, job_id: str, n: int) -> int:
    store = StateStore(url)
    barrier.wait()
    for _ in range(n):
        store.incr_job(job_id, fetched=1, indexed=2)
    store.close()
    return n


def _race_for_schedule(url: str, barrier: Any, rounds: int) -> list[int]:
    store = StateStore(url)
    won = []
    for r in range(rounds):
        barrier.wait()
        expected = store.get_schedule(INSTANCE)["next_run"]
        barrier.wait()  # all read the same due run before anyone claims it
        if store.claim_schedule(INSTANCE, expected_next_run=expected, next_run=expected + 3600.5):
            won.append(r)
        barrier.wait()
    store.close()
    return won


def test_postgres_urls_use_psycopg(postgres_url: str) -> None:
    assert normalize_database_url("postgres://u:p@db:5432/s") == "postgresql+psycopg://u:p@db:5432/s"
    assert normalize_database_url("postgresql://u@db/s") == "postgresql+psycopg://u@db/s"
    assert normalize_database_url("postgresql+psycopg://u@db/s") == "postgresql+psycopg://u@db/s"
    assert normalize_database_url("sqlite:///x.db") == "sqlite:///x.db"
    assert Settings(database_url="postgres://u@db/s").resolved_database_url == "postgresql+psycopg://u@db/s"
    url = create_database(postgres_url, f"t_{uuid.uuid4().hex[:16]}")
    store = StateStore(url.replace("postgresql+psycopg://", "postgresql://"))  # the form operators write
    try:
        assert store.engine.dialect.name == "postgresql" and store.engine.dialect.driver == "psycopg"
        assert store.count_instances() == 0
    finally:
        store.close()


def test_other_databases_are_refused() -> None:
    with pytest.raises(ValueError, match="database_url"):
        StateStore("mysql://u@db/s")


def test_one_job_per_instance_when_processes_race(state: StateStore) -> None:
    wins = run_processes(_race_for_jobs, state.url, ROUNDS)
    per_round = sorted(r for won in wins for r in won)
    assert per_round == list(range(ROUNDS))  # every round: exactly one process created the job
    assert len(state.list_jobs(INSTANCE)) == ROUNDS and state.active_job(INSTANCE) is None


def test_one_job_per_instance_when_threads_race(state: StateStore) -> None:
    stores = [StateStore(state.url) for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    created: list[str] = []

    def race(store: StateStore) -> None:
        barrier.wait()
        job = store.create_job_if_idle(INSTANCE, "manual")
        if job is not None:
            created.append(job["id"])

    threads = [threading.Thread(target=race, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert len(created) == 1 and state.active_job(INSTANCE)["id"] == created[0]


def test_one_job_per_instance_while_another_creation_is_uncommitted(state: StateStore) -> None:
    """A deterministic interleaving: the second request arrives while the first one's insert is not committed."""
    slow, fast = StateStore(state.url), StateStore(state.url)
    inserted = threading.Event()

    @event.listens_for(slow.engine, "after_cursor_execute")
    def hold(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO JOBS"):
            inserted.set()
            time.sleep(0.5)  # the transaction stays open, its job row uncommitted

    results: dict[str, Any] = {}
    first = threading.Thread(target=lambda: results.setdefault("slow", slow.create_job_if_idle(INSTANCE, "manual")))
    first.start()
    assert inserted.wait(10)
    results["fast"] = fast.create_job_if_idle(INSTANCE, "schedule")
    first.join()
    slow.close()
    fast.close()
    assert results["slow"] is not None and results["fast"] is None
    assert [j["id"] for j in state.list_jobs(INSTANCE)] == [results["slow"]["id"]]


def test_job_counters_are_atomic_across_processes(state: StateStore) -> None:
    job = state.create_job(INSTANCE, "manual")["id"]
    done = run_processes(_bump_counters, state.url, job, 150)
    got = state.get_job(job)
    assert (got["fetched"], got["indexed"]) == (sum(done), 2 * sum(done)) == (PROCS * 150, PROCS * 300)


def test_a_due_schedule_is_claimed_once_across_processes(state: StateStore) -> None:
    state.set_schedule(INSTANCE, "interval:3600", 1_800_000_000.123456)
    wins = run_processes(_race_for_schedule, state.url, ROUNDS)
    assert sorted(r for won in wins for r in won) == list(range(ROUNDS))
    assert state.get_schedule(INSTANCE)["next_run"] == pytest.approx(1_800_000_000.123456 + ROUNDS * 3600.5)


def test_concurrent_creators_of_the_same_rows_agree(state: StateStore) -> None:
    job = state.create_job(INSTANCE, "manual")["id"]
    stores = [StateStore(state.url) for _ in range(5)]
    barrier = threading.Barrier(len(stores))
    ids: list[str] = []
    errors: list[BaseException] = []

    def create(i: int, store: StateStore) -> None:
        try:
            barrier.wait()
            ids.append(store.ensure_item(INSTANCE, "upload/a.pdf", origin="upload")["id"])
            store.record_discovered(INSTANCE, job, [{"key": f"http://example.test/{k}", "priority": 0.5, "seq": k}
                                                    for k in range(50)])
            store.set_meta("owner", f"process-{i}")
            store.set_schedule(INSTANCE, "interval:3600", float(i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(i, s)) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    assert errors == []
    assert len(set(ids)) == 1 and state.list_items(INSTANCE)[1] == 51
    assert len(state.frontier_batch(INSTANCE, job, after=None, limit=100)) == 50
    assert state.get_meta("owner") in {f"process-{i}" for i in range(5)}
    assert state.get_schedule(INSTANCE)["spec"] == "interval:3600"


def test_nul_characters_from_the_web_are_dropped(state: StateStore) -> None:
    job = state.create_job(INSTANCE, "manual")["id"]
    state.record_discovered(INSTANCE, job, [{"key": "http://example.test/a\x00b", "priority": 0.5, "seq": 0,
                                            "lastmod": "2025-01-01\x00"}])
    item = state.get_item_by_key(INSTANCE, "http://example.test/ab")
    assert item is not None and item["lastmod"] == "2025-01-01"
    state.update_item(item["id"], title="Bad\x00 title", error="x\x00y")
    state.log(job, "saw \x00 in a page", url="http://example.test/a\x00b")
    item = state.get_item(INSTANCE, item["id"])
    assert (item["title"], item["error"]) == ("Bad title", "xy")
    assert state.job_logs(job)[0][0]["message"] == "saw  in a page"


def test_folder_prefix_is_literal_not_a_pattern(state: StateStore) -> None:
    for key, folder in [("http://example.test/1", "example.test/a_b/"), ("http://example.test/2", "example.test/axb/"),
                        ("http://example.test/3", "example.test/100%/")]:
        item = state.ensure_item(INSTANCE, key)
        state.update_item(item["id"], folder=folder, status="indexed")
    rows, total = state.list_items_where(INSTANCE, folder_prefix="example.test/a_b/")
    assert total == 1 and rows[0]["folder"] == "example.test/a_b/"
    assert state.list_items_where(INSTANCE, folder_prefix="example.test/1")[1] == 1  # "100%/"
    assert state.list_items_where(INSTANCE, folder_prefix="example.test/%")[1] == 0


def test_more_threads_than_pooled_connections(state: StateStore) -> None:
    job = state.create_job(INSTANCE, "manual")["id"]
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                state.incr_job(job, errors=1)
                state.get_job(job)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and state.get_job(job)["errors"] == 400


class Launcher:
    """Stands in for the job runner: records the jobs it was asked to start (no crawl here)."""

    def __init__(self) -> None:
        self.jobs: list[dict[str, Any]] = []

    def launch(self, job: dict[str, Any]) -> None:
        self.jobs.append(job)


def test_sync_cooldown_holds_across_processes(database_url: str) -> None:  # noqa: F811
    from indexer.instance import InstanceConfig
    from server.errors import APIError
    from server.routes.jobs import start_sync

    first, second = StateStore(database_url), StateStore(database_url)  # two API processes
    cfg = InstanceConfig.model_validate({"id": "docs", "type": "web-crawler", "source": "example.com"})
    first.create_instance("docs", cfg.type, cfg.source, cfg.model_dump(mode="json"))
    try:
        job = start_sync(first, Launcher(), "docs")
        first.finish_job(job["id"], "completed")  # done already: only the cooldown can refuse the next one
        with pytest.raises(APIError) as exc:
            start_sync(second, Launcher(), "docs")
        assert exc.value.status == 429 and "Retry-After" in (exc.value.headers or {})
        second.update_job(job["id"], created_at=job["created_at"] - 31)  # the cooldown has passed
        assert start_sync(second, Launcher(), "docs")["source"] == "manual"
    finally:
        first.close()
        second.close()
