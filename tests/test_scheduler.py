"""Scheduled syncs (server/scheduler.py) against a real state database.

The launcher is a list: these tests check when jobs are created and by whom, not
crawls (tests/test_resync.py runs a real scheduled crawl through the API server).
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from indexer.instance import InstanceConfig
from indexer.state import StateStore
from server.scheduler import Scheduler, next_run_after, schedule_spec
from tests.databases import database_url  # noqa: F401 - fixture

HOUR = 3600.0


@pytest.fixture()
def state(database_url: str) -> StateStore:  # noqa: F811 - the fixture
    return StateStore(database_url)


def add_instance(state: StateStore, instance_id: str = "site", **config: Any) -> dict[str, Any]:
    cfg = InstanceConfig.model_validate({"id": instance_id, "type": "web-crawler", "source": "example.com", **config})
    return state.create_instance(instance_id, cfg.type, cfg.source, cfg.model_dump(mode="json"))


def make(state: StateStore) -> tuple[Scheduler, list[dict[str, Any]]]:
    launched: list[dict[str, Any]] = []
    return Scheduler(state, launched.append, tick=0.05), launched


def test_default_is_every_six_hours_from_creation(state: StateStore) -> None:
    row = add_instance(state)
    sched, launched = make(state)
    assert sched.run_once(now=row["created_at"] + 60) == []
    assert sched.next_run("site") == pytest.approx(row["created_at"] + 6 * HOUR)
    started = sched.run_once(now=row["created_at"] + 6 * HOUR + 1)
    assert len(started) == 1 and launched[0]["id"] == started[0]
    job = state.get_job(started[0])
    assert job["source"] == "schedule" and job["status"] == "queued"
    # the job is still active: a later tick starts nothing
    assert sched.run_once(now=row["created_at"] + 13 * HOUR) == []


def test_next_run_counts_from_the_last_job(state: StateStore) -> None:
    row = add_instance(state, sync_interval=3600)
    sched, _ = make(state)
    sched.run_once(now=row["created_at"])
    manual = state.create_job("site", "manual")
    state.finish_job(manual["id"], "completed")
    sched.run_once(now=row["created_at"] + 10)
    assert sched.next_run("site") == pytest.approx(manual["created_at"] + HOUR)


def test_cron_schedule(state: StateStore) -> None:
    row = add_instance(state, sync_schedule="0 */6 * * *")
    sched, launched = make(state)
    sched.run_once(now=row["created_at"])
    nxt = sched.next_run("site")
    assert nxt is not None and nxt > row["created_at"]
    at = datetime.fromtimestamp(nxt, timezone.utc)
    assert (at.minute, at.second, at.hour % 6) == (0, 0, 0)
    assert state.get_schedule("site")["spec"] == "cron:0 */6 * * *"
    assert len(sched.run_once(now=nxt + 1)) == 1


def test_changing_the_schedule_recomputes_next_run(state: StateStore) -> None:
    row = add_instance(state)
    sched, _ = make(state)
    sched.run_once(now=row["created_at"])
    cfg = InstanceConfig.model_validate({**row["config"], "sync_interval": 86400})
    state.update_instance_config("site", cfg.model_dump(mode="json"))
    sched.run_once(now=row["created_at"])
    assert sched.next_run("site") == pytest.approx(row["created_at"] + 86400)


def test_paused_instances_are_not_synced(state: StateStore) -> None:
    row = add_instance(state, paused=True)
    sched, launched = make(state)
    assert sched.run_once(now=row["created_at"] + 7 * HOUR) == []
    assert launched == [] and state.last_job("site") is None


def test_files_instances_are_not_scheduled(state: StateStore) -> None:
    state.create_instance("files", "r2", None, {"id": "files", "type": "r2"})
    sched, _ = make(state)
    assert sched.run_once() == [] and state.get_schedule("files") is None


def test_next_run_survives_a_restart(state: StateStore) -> None:
    row = add_instance(state, sync_schedule="30 2 * * *")
    first, _ = make(state)
    first.run_once(now=row["created_at"])
    stored = first.next_run("site")
    state.close()
    reopened = StateStore(state.url)
    second, launched = make(reopened)
    assert second.next_run("site") == stored
    # the run fell due while "the server was down": it starts at the first tick, once
    assert len(second.run_once(now=stored + 3 * 86400)) == 1
    assert second.run_once(now=stored + 3 * 86400) == []
    assert len(launched) == 1


def test_two_processes_do_not_double_fire(state: StateStore) -> None:
    row = add_instance(state)
    due = row["created_at"] + 6 * HOUR + 1
    launched: list[dict[str, Any]] = []
    lock = threading.Lock()

    def launch(job: dict[str, Any]) -> None:
        with lock:
            launched.append(job)

    schedulers = [Scheduler(StateStore(state.url), launch) for _ in range(4)]
    barrier = threading.Barrier(len(schedulers))

    def tick(s: Scheduler) -> None:
        barrier.wait()
        s.run_once(now=due)

    threads = [threading.Thread(target=tick, args=(s,)) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(launched) == 1
    assert len(state.list_jobs("site")) == 1


def test_background_thread_fires_due_runs(state: StateStore) -> None:
    add_instance(state, sync_interval=3600)
    previous = state.create_job("site", "manual")
    state.finish_job(previous["id"], "completed")
    state.update_job(previous["id"], created_at=previous["created_at"] - 2 * HOUR)  # an hourly run is due
    sched, launched = make(state)
    sched.start()
    try:
        deadline = threading.Event()
        for _ in range(100):
            if launched:
                break
            deadline.wait(0.05)
    finally:
        sched.stop()
    assert len(launched) == 1 and launched[0]["source"] == "schedule"


def test_schedule_helpers() -> None:
    assert next_run_after("interval:3600", 1000.0) == 4600.0
    assert next_run_after("cron:0 0 * * *", 0.0) == 86400.0
    assert schedule_spec(InstanceConfig(id="a")) == "interval:21600"
    assert schedule_spec(InstanceConfig(id="a", sync_schedule=" 0 */6 * * * ")) == "cron:0 */6 * * *"


@pytest.mark.parametrize("bad", ["bad", "* * *", "61 * * * *", "0 */6 * * * *"])
def test_invalid_cron_is_rejected_naming_the_field(bad: str) -> None:
    with pytest.raises(ValidationError) as exc:
        InstanceConfig(id="a", sync_schedule=bad)
    assert "sync_schedule" in str(exc.value)


def test_invalid_interval_is_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        InstanceConfig(id="a", sync_interval=600)
    assert "sync_interval" in str(exc.value)
