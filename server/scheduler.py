"""Scheduled syncs: a thread in the API process that starts each instance's sync when it is due.

An instance's schedule is ``sync_schedule`` (a cron expression, UTC; our extension)
when set, else ``sync_interval`` (seconds; default 6 hours).  The next run is counted
from the instance's last full sync job (any source: a manual sync pushes the next
scheduled one back) or, before its first job, from its creation time.

``next_run`` is stored in the ``schedules`` table, so a restart keeps the plan: a run
that fell due while the server was down starts at the first tick after start-up
(once, however many were missed).  Every API process runs a scheduler, and any number
of them, on any number of machines, may share one database (a SQLite file, or
PostgreSQL): a due run is claimed with a compare-and-set on ``next_run`` (one
``UPDATE ... WHERE next_run = <the value read>``; the row lock makes the others match
nothing) and the job is created with an insert-if-no-active-job under the instance
row's lock, so a run fires once cluster-wide.  No schedule state lives in process
memory.  ``paused: true`` stops scheduled syncs (manual ones still work).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from croniter import croniter
from pydantic import ValidationError

from indexer.instance import InstanceConfig
from indexer.state import StateStore

logger = logging.getLogger(__name__)

DEFAULT_TICK = 5.0  # seconds between looks at the schedules


def schedule_spec(config: InstanceConfig) -> str:
    """The schedule of an instance as a string: ``cron:EXPR`` or ``interval:SECONDS``."""
    if config.sync_schedule:
        return f"cron:{config.sync_schedule.strip()}"
    return f"interval:{int(config.sync_interval)}"


def next_run_after(spec: str, base: float) -> float:
    """The first run strictly after ``base`` (epoch seconds) for a schedule spec.

    Args:
        spec: from :func:`schedule_spec`.
        base: the time the previous run started (or the instance was created).

    Returns:
        Epoch seconds.
    """
    kind, _, value = spec.partition(":")
    if kind == "cron":
        return float(croniter(value, base).get_next(float))
    return base + float(value)


class Scheduler:
    """Starts scheduled sync jobs.

    Args:
        state: the state store.
        launch: starts the crawler for a queued job (``JobRunner.launch``).
        tick: seconds between checks.
    """

    def __init__(self, state: StateStore, launch: Callable[[dict[str, Any]], None], *, tick: float = DEFAULT_TICK) -> None:
        self.state = state
        self.launch = launch
        self.tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sitesearch-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                logger.exception("scheduler error")
            self._stop.wait(self.tick)

    def run_once(self, now: float | None = None) -> list[str]:
        """Bring every schedule up to date and start the due syncs; returns the started job ids.

        Args:
            now: the current time (epoch seconds; default the clock).
        """
        now = time.time() if now is None else now
        started = []
        for row in self.state.list_instances():
            if row["type"] != "web-crawler":
                continue
            try:
                config = InstanceConfig.model_validate({**row["config"], "id": row["id"]})
            except ValidationError as exc:
                logger.warning("instance %s: invalid config, not scheduled: %s", row["id"], exc)
                continue
            job_id = self._check(row, config, now)
            if job_id:
                started.append(job_id)
        return started

    def next_run(self, instance_id: str) -> float | None:
        """The stored next run of an instance (None before the scheduler has seen it)."""
        sched = self.state.get_schedule(instance_id)
        return sched["next_run"] if sched else None

    def _check(self, row: dict[str, Any], config: InstanceConfig, now: float) -> str | None:
        instance_id = row["id"]
        spec = schedule_spec(config)
        last = self.state.last_job(instance_id, full_sync_only=True)
        desired = next_run_after(spec, last["created_at"] if last else row["created_at"])
        sched = self.state.get_schedule(instance_id)
        if sched is None or sched["spec"] != spec or desired > sched["next_run"] + 1e-3:
            # new, re-configured, or pushed back by a newer job (never pulled forward by a stale read)
            self.state.set_schedule(instance_id, spec, desired)
            next_run = desired
        else:
            next_run = sched["next_run"]
        if config.paused or next_run > now:
            return None
        following = next_run_after(spec, now)
        if not self.state.claim_schedule(instance_id, expected_next_run=next_run, next_run=following):
            return None  # another process took this run
        job = self.state.create_job_if_idle(instance_id, "schedule")
        if job is None:
            logger.info("instance %s: scheduled sync skipped, a sync is already running", instance_id)
            return None
        self.state.log(job["id"], f"scheduled sync ({_describe(spec)})")
        logger.info("instance %s: scheduled sync %s (%s)", instance_id, job["id"], _describe(spec))
        self.launch(job)
        return job["id"]


def _describe(spec: str) -> str:
    kind, _, value = spec.partition(":")
    if kind == "cron":
        return f"cron {value!r} UTC"
    seconds = int(value)
    return f"every {seconds // 3600} h" if seconds % 3600 == 0 else f"every {seconds} s"
