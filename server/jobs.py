"""Sync jobs: start crawls as child processes, and index what they fetch.

* :class:`JobRunner` starts ``python -m crawler.run INSTANCE --job ID`` for a job
  and watches the process; a crawler that dies marks its job ``failed``.
* :class:`IndexWorker` is a thread that indexes pages crawlers leave ``fetched``
  (the server owns the embedded vector store) and completes jobs whose crawl
  is done and whose pages are all indexed.  With a Chroma server every API process
  runs one, and crawler workers index inline too: each page is claimed first
  (:meth:`indexer.state.StateStore.claim_pending`), so it is embedded once, and a job
  is completed once (``finish_job`` is compare-and-set).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from indexer.config import Settings, settings_env
from indexer.service import IndexService
from indexer.state import StateStore

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]


class JobRunner:
    """Starts and watches crawler processes.

    Args:
        settings: passed to the children through ``SITESEARCH_*`` variables.
        state: the state store.
    """

    def __init__(self, settings: Settings, state: StateStore) -> None:
        self.settings = settings
        self.state = state
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sitesearch-jobs", daemon=True)

    def start(self) -> None:
        self.recover()
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and terminate running crawlers (their jobs end as cancelled)."""
        self._stop.set()
        with self._lock:
            procs = dict(self._procs)
        for job_id, proc in procs.items():
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                self.state.finish_job(job_id, "cancelled", "server stopped")
        self._thread.join(timeout=5)

    def recover(self) -> None:
        """Mark jobs left active by a dead process as failed (run at start-up)."""
        for job in self.state.jobs_with_status("queued", "running"):
            if self._crawler_alive(job):
                continue
            if job["status"] == "running" and job["crawl_done"]:
                continue  # crawl finished; the index worker completes it
            self.state.finish_job(job["id"], "failed", "interrupted: the process running it exited")
            self.state.log(job["id"], "job marked failed at start-up: its process is gone", level="error")

    def _crawler_alive(self, job: dict[str, Any]) -> bool:
        """Is some crawler still working on ``job``?

        Alone, a job's crawler is the process whose pid the job records, on this machine.
        With ``SITESEARCH_REDIS_URL`` the workers may run on other machines: a job is alive
        while any worker's heartbeat in Redis is current (or it started too recently to
        have one), and a Redis outage never fails a job.
        """
        if not self.settings.redis_url:
            pid = job.get("pid")
            return bool(pid) and _alive(pid)
        from crawler.shared_frontier import HEARTBEAT_TTL, SharedFrontier  # only in scale-out mode

        started = job.get("started_at") or job.get("created_at") or 0
        if time.time() - started < 2 * HEARTBEAT_TTL:
            return True
        frontier = None
        try:
            frontier = SharedFrontier.from_url(self.settings.redis_url, job["id"])
            return frontier.live_workers() > 0
        except Exception:  # noqa: BLE001 - cannot tell: keep the job
            logger.warning("Redis unreachable: cannot check the workers of job %s", job["id"])
            return True
        finally:
            if frontier is not None:
                frontier.redis.close()  # checked every 10 s per running job: don't leave connections behind

    def launch(self, job: dict[str, Any]) -> None:
        """Start the crawler process for a queued job."""
        log_dir = self.settings.data_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"job-{job['id']}.log"
        env = {**os.environ, **settings_env(self.settings), "SCRAPY_SETTINGS_MODULE": "crawler.settings"}
        cmd = [sys.executable, "-m", "crawler.run", job["instance_id"], "--job", job["id"]]
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        self.state.update_job(job["id"], pid=proc.pid)
        with self._lock:
            self._procs[job["id"]] = proc
        logger.info("job %s: crawler pid %s, log %s", job["id"], proc.pid, log_path)

    def cancel(self, job_id: str) -> bool:
        """Terminate a job's crawler; returns False if it is not running here."""
        with self._lock:
            proc = self._procs.get(job_id)
        if proc is None or proc.poll() is not None:
            return False
        proc.terminate()
        return True

    def reap_orphans(self) -> list[str]:
        """Fail running jobs whose crawler (e.g. a standalone ``scrapy crawl``) died; returns their ids."""
        with self._lock:
            ours = set(self._procs)
        reaped = []
        for job in self.state.jobs_with_status("running"):
            if job["id"] in ours or not job.get("pid") or job["crawl_done"] or self._crawler_alive(job):
                continue
            if self.state.finish_job(job["id"], "failed", "interrupted: the crawler process exited"):
                self.state.log(job["id"], "job marked failed: its crawler process is gone", level="error")
                reaped.append(job["id"])
        return reaped

    def _watch(self) -> None:
        ticks = 0
        while not self._stop.wait(0.5):
            ticks += 1
            if ticks % 20 == 0:
                try:
                    self.reap_orphans()
                except Exception:
                    logger.exception("reaping dead jobs failed")
            with self._lock:
                finished = [(j, p) for j, p in self._procs.items() if p.poll() is not None]
                for job_id, _ in finished:
                    del self._procs[job_id]
            for job_id, proc in finished:
                job = self.state.get_job(job_id)
                if job and job["status"] in ("queued", "running") and not job["crawl_done"]:
                    reason = f"crawler exited with code {proc.returncode}; see data/logs/job-{job_id}.log"
                    self.state.finish_job(job_id, "failed", reason)
                    self.state.log(job_id, reason, level="error")


class IndexWorker:
    """A thread indexing pending items and completing finished jobs."""

    def __init__(self, service: IndexService, *, poll_interval: float = 0.5) -> None:
        self.service = service
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sitesearch-indexer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.service.indexer.process_pending(limit=8)
                self.service.complete_finished_jobs()
            except Exception:
                logger.exception("index worker error")
                n = 0
            if n == 0:
                self._stop.wait(self.poll_interval)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

