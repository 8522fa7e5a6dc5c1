"""Scale-out crawling (#7): pages/s with 1, 2 and 4 workers on one Redis frontier, and global politeness.

Starts its own Redis (Debian's ``redis-server``) on loopback and serves a generated
site whose every page takes ``--page-delay`` seconds (default 50 ms) to answer.

Part 1 (Crawl-delay 0): for 1, 2 and 4 workers, one fresh job each, the workers are
``scrapy crawl site -a instance=ID`` processes sharing ``SITESEARCH_REDIS_URL``. The
bench holds the embedded store's lock (as a running API server would), so the workers
fetch and store pages but do not embed them: this measures the crawl, not the model.
Reports pages/s (first to last page request seen by the site) and the ratio to 1 worker.
Per-host concurrency is cluster-wide, so it is set above what the workers can use
together (``--per-host``) and each worker is capped by ``--per-worker`` concurrent
requests: adding workers adds fetch capacity, not politeness budget.

Part 2 (robots.txt ``Crawl-delay: 1``): 1, 2 and 4 workers on a small site; reports the
aggregate request rate the site saw, the shortest gap between two requests (ms, as
logged by the site when it answers, so a few ms of jitter) and the most requests in
any five-second window — all must stay at 1 request/s however many workers run.

Run: ``.venv/bin/python bench/scaleout.py [--pages 600] [--workers 1,2,4]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, bench_settings, create_instance, ensure_model, format_table, serve_site

from indexer.config import settings_env
from indexer.state import StateStore
from indexer.vectorstore import try_own_embedded_store

PAGE = "<!doctype html><html><head><title>Page {i}</title></head><body><main><h1>Page {i}</h1><p>{text}</p></main></body></html>"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is missing (Debian: apt-get install -y redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.1)
    raise SystemExit("redis-server did not start")


def make_site(root: Path, pages: int) -> list[str]:
    names = []
    for i in range(pages):
        (root / f"p{i}.html").write_text(PAGE.format(i=i, text=f"Page number {i} of the scale-out benchmark. " * 20))
        names.append(f"p{i}.html")
    return names


def crawl(settings: Any, redis_url: str, instance_id: str, workers: int, timeout: float) -> float:
    """Run ``workers`` crawl processes for a new job of ``instance_id``; returns wall seconds."""
    state = StateStore(settings.resolved_database_url)
    job = state.create_job(instance_id, "cli")
    state.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITESEARCH_")}
    env.update(settings_env(settings))
    env.update({"SITESEARCH_REDIS_URL": redis_url, "PYTHONPATH": str(REPO)})
    cmd = [sys.executable, "-m", "scrapy", "crawl", "site", "-a", f"instance={instance_id}", "-a", f"job={job['id']}",
           "-s", "LOG_LEVEL=ERROR"]
    start = time.monotonic()
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env) for _ in range(workers)]
    for p in procs:
        try:
            p.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise SystemExit(f"{workers} workers did not finish in {timeout} s") from None
        if p.returncode != 0:
            raise SystemExit(f"a worker exited with {p.returncode}")
    return time.monotonic() - start


def page_times(site: Any) -> list[float]:
    return sorted(r.ts for r in site.requests if r.method == "GET" and r.path.startswith("/p"))


def throughput(args: argparse.Namespace, base: Path, model_dir: Path, redis_url: str) -> list[list[Any]]:
    root = base / "site"
    root.mkdir()
    names = make_site(root, args.pages)
    rows: list[list[Any]] = []
    first: float | None = None
    with serve_site(root, names, delay=args.page_delay) as site:
        for n in args.workers:
            data = base / f"data-{n}"
            settings = bench_settings(
                data, model_dir, concurrent_requests=args.per_worker, concurrent_requests_per_host=args.per_host,
                autothrottle=False, download_delay=0.0,
            )
            create_instance(settings, "bench", site.url)
            lock = try_own_embedded_store(settings)  # fetch only: the workers may not embed
            site.clear()
            try:
                wall = crawl(settings, redis_url, "bench", n, args.timeout)
            finally:
                if lock is not None:
                    lock.release()
            times = page_times(site)
            paths = [r.path for r in site.requests if r.method == "GET" and r.path.startswith("/p")]
            window = (times[-1] - times[0]) if len(times) > 1 else wall
            rate = (len(times) - 1) / window if window > 0 else 0.0
            first = first or rate
            rows.append([n, len(times), len(paths) - len(set(paths)), round(window, 2), round(wall, 2), round(rate, 1),
                         round(rate / first, 2)])
    return rows


def politeness(args: argparse.Namespace, base: Path, model_dir: Path, redis_url: str) -> list[list[Any]]:
    root = base / "polite"
    root.mkdir()
    names = make_site(root, args.polite_pages)
    rows: list[list[Any]] = []
    with serve_site(root, names) as site:
        robots = root / "robots.txt"
        robots.write_text(robots.read_text().replace("Allow: /\n", "Allow: /\nCrawl-delay: 1\n"))
        for n in args.workers:
            settings = bench_settings(base / f"polite-{n}", model_dir, concurrent_requests_per_host=4, autothrottle=False)
            create_instance(settings, "polite", site.url)
            lock = try_own_embedded_store(settings)
            site.clear()
            try:
                crawl(settings, redis_url, "polite", n, args.timeout)
            finally:
                if lock is not None:
                    lock.release()
            times = page_times(site)
            gaps = [b - a for a, b in zip(times, times[1:])]
            window_max = max(sum(1 for t in times if s <= t < s + 5.0) for s in times) if times else 0
            rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
            rows.append([n, len(times), round(rate, 3), round(min(gaps) * 1000) if gaps else None, window_max])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=600, help="pages of the throughput site")
    parser.add_argument("--page-delay", type=float, default=0.05, help="seconds each page takes to serve")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to run")
    parser.add_argument("--per-worker", type=int, default=4, help="concurrent requests of one worker")
    parser.add_argument("--per-host", type=int, default=32, help="cluster-wide concurrent requests per host")
    parser.add_argument("--polite-pages", type=int, default=12, help="pages of the Crawl-delay: 1 site")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args()
    args.workers = [int(n) for n in args.workers.split(",")]
    base = args.work_dir or Path(tempfile.mkdtemp(prefix="scaleout-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    model_dir = ensure_model()
    redis, redis_url = start_redis(base)
    try:
        print(f"Part 1: {args.pages} pages, {args.page_delay * 1000:.0f} ms each, Crawl-delay 0, "
              f"{args.per_worker} concurrent requests per worker, {args.per_host} per host cluster-wide")
        rows = throughput(args, base, model_dir, redis_url)
        print(format_table(["workers", "pages", "refetched", "window s", "wall s", "pages/s", "vs 1 worker"], rows))
        print(f"\nPart 2: robots.txt Crawl-delay: 1, {args.polite_pages} pages")
        rows = politeness(args, base, model_dir, redis_url)
        print(format_table(["workers", "pages", "requests/s", "min gap ms", "max in any 5 s"], rows))
    finally:
        redis.terminate()
        redis.wait()
        if args.work_dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
