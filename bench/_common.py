"""Helpers shared by the benchmarks: a static site with a generated sitemap, crawls run
through the product in a temp data dir, peak RSS of the crawler process, a plain table.

Benchmarks install nothing and download nothing; they run the product as a user would
(``python -m crawler.run`` in a child process) against a site served on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from indexer.config import Settings, settings_env  # noqa: E402
from indexer.instance import InstanceConfig  # noqa: E402
from indexer.state import StateStore  # noqa: E402
from indexer.vectorstore import try_own_embedded_store  # noqa: E402
from server.devsite import DevSite  # noqa: E402

PYTHON_DOCS = Path("/usr/share/doc/python3.11/html")
DEFAULT_MODELS_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sitesearch" / "bench-models"


def copy_pages(src: Path, dest: Path, *, pattern: str = "*.html", limit: int | None = None) -> list[str]:
    """Copy the pages matching ``pattern`` under ``src`` to ``dest`` (sorted, first ``limit``).

    Args:
        src: the site's directory (e.g. :data:`PYTHON_DOCS`).
        dest: an empty directory to serve from (the copy keeps relative paths).
        pattern: glob of the pages to keep.
        limit: keep only this many pages (sorted by path), None for all.

    Returns:
        The copied pages' paths relative to ``dest``, POSIX style, in sitemap order.
    """
    if not src.is_dir():
        raise SystemExit(f"{src} is missing (Debian: apt-get install -y python3.11-doc)")
    pages = sorted(p.relative_to(src).as_posix() for p in src.rglob(pattern) if p.is_file())
    if limit is not None:
        pages = pages[:limit]
    for rel in pages:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, target)
    return pages


def write_sitemap(root: Path, base_url: str, pages: Sequence[str]) -> None:
    """Write ``root/sitemap.xml`` listing ``pages`` and a ``robots.txt`` pointing at it."""
    base = base_url.rstrip("/")
    urls = "".join(f"<url><loc>{escape(f'{base}/{rel}')}</loc></url>\n" for rel in pages)
    (root / "sitemap.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n{urls}</urlset>\n',
        encoding="utf-8",
    )
    (root / "robots.txt").write_text(f"User-agent: *\nAllow: /\n\nSitemap: {base}/sitemap.xml\n", encoding="utf-8")


@contextlib.contextmanager
def serve_site(root: Path, pages: Sequence[str], **devsite_kw: Any) -> Iterator[DevSite]:
    """Serve ``root`` on 127.0.0.1 with a generated sitemap of ``pages``.

    Args:
        root: directory holding the pages (see :func:`copy_pages`).
        pages: paths relative to ``root`` to list in the sitemap.
        **devsite_kw: passed to :class:`~server.devsite.DevSite` (``gone``, ``delay``, ...).

    Yields:
        The running site (``site.url``, ``site.requests``).
    """
    site = DevSite(root, **devsite_kw)
    write_sitemap(root, site.url, pages)
    with site:
        yield site


def ensure_model(models_dir: Path | None = None) -> Path:
    """The default ONNX model, built once and cached in ``models_dir``."""
    from indexer.onnx_export import ensure_default_model

    return ensure_default_model(models_dir or DEFAULT_MODELS_DIR)


def bench_settings(data_dir: Path, model_dir: Path, **overrides: Any) -> Settings:
    """Settings for one benchmark run in its own data directory (no .env file is read)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {"data_dir": data_dir, "model_dir": model_dir}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def create_instance(settings: Settings, instance_id: str, source: str, **config: Any) -> dict[str, Any]:
    """Create a website instance the way the API does (validated config), return its row."""
    body = {"id": instance_id, "type": "web-crawler", "source": source, **config}
    cfg = InstanceConfig.model_validate(body)
    state = StateStore(settings.resolved_database_url)
    try:
        return state.create_instance(cfg.id, cfg.type, cfg.source, cfg.model_dump(mode="json"))
    finally:
        state.close()


@dataclass
class CrawlRun:
    """One crawler process run to completion."""

    job: dict[str, Any]  # the job row after the crawl (counters, started_at, ...)
    wall_s: float  # process start to exit
    window_s: float  # job start to the last page fetched (or indexed, when indexing inline)
    returncode: int
    max_rss_mb: float  # peak resident set of the crawler process
    items: dict[str, int]  # items by status, plus "chunks"


def run_crawl(
    settings: Settings, instance_id: str, *, own_index: bool = True, log_level: str = "WARNING", timeout: float = 3600
) -> CrawlRun:
    """Run ``python -m crawler.run INSTANCE --job ID`` in a child process and measure it.

    Args:
        settings: the run's settings (its data dir, model and crawl options reach the child via env).
        instance_id: an existing instance.
        own_index: False holds the embedded store's lock here, so the crawler cannot own the
            index and only fetches (pages stay ``fetched``, no model is loaded).
        log_level: Scrapy log level of the child.
        timeout: seconds before the child is killed.

    Returns:
        The measured run; peak RSS comes from ``wait4`` on this very child.
    """
    state = StateStore(settings.resolved_database_url)
    lock = None
    try:
        job = state.create_job(instance_id, "cli")
        if not own_index and not settings.chroma_url:
            lock = try_own_embedded_store(settings)
            if lock is None:
                raise RuntimeError(f"another process owns {settings.chroma_dir}")
        env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "crawler.run", instance_id, "--job", job["id"], "--log-level", log_level]
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env)
        rc, rusage = _wait4(proc, timeout)
        wall = time.monotonic() - start
        job = state.get_job(job["id"]) or job
        items = state.item_stats(instance_id)
        last = _last_page_time(state, instance_id)
        window = (last - job["started_at"]) if last and job.get("started_at") else wall
        return CrawlRun(job, wall, window, rc, rusage.ru_maxrss / 1024, items)
    finally:
        if lock is not None:
            lock.release()
        state.close()


def _wait4(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, rusage
        if time.monotonic() > deadline:
            proc.kill()
        time.sleep(0.05)


def _last_page_time(state: StateStore, instance_id: str) -> float | None:
    rows, _ = state.list_items(instance_id, limit=10_000_000)
    times = [t for r in rows for t in (r.get("indexed_at"), r.get("fetched_at")) if t]
    return max(times) if times else None


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table (numbers right-aligned)."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] in ("", None) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    out = [line(list(headers)), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in cells)
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
