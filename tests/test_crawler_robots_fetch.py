"""robots.txt fetch semantics (RFC 9309), Crawl-delay, concurrency, custom headers and sitemap selection.

Every test runs the real crawler (``python -m crawler.run``) against a real HTTP
server on 127.0.0.1 whose answers each test scripts (:class:`RouteServer`).  The
test process holds the embedded vector store's lock, so the crawler only fetches
and stores pages (status ``fetched``) and never loads the embedding model.

:func:`crawl` and :class:`RouteServer` are reused by ``test_crawler_hostile.py`` and
``test_discovery.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from indexer.config import Settings, settings_env
from indexer.instance import InstanceConfig
from indexer.state import StateStore
from indexer.vectorstore import try_own_embedded_store

REPO = Path(__file__).resolve().parent.parent
HTML = "text/html; charset=utf-8"
XML = "application/xml"

Route = tuple[int, dict[str, str], bytes]
Handler = Callable[["BaseHTTPRequestHandler"], Route | None]


# --- a scriptable HTTP server ------------------------------------------------------------
@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    ts: float


@dataclass
class RouteServer:
    """A threaded HTTP server on 127.0.0.1 answering from ``routes`` (path → response or callable).

    A callable route gets the request handler and returns ``(status, headers, body)``,
    or None after it has dealt with the socket itself (e.g. dropped the connection).
    Unknown paths answer 404.  ``hits`` records every request; ``max_in_flight`` the
    most requests handled at once.
    """

    routes: dict[str, Route | Handler] = field(default_factory=dict)
    delay: float = 0.0
    hits: list[Hit] = field(default_factory=list)
    max_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = 0
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return

            def do_GET(self) -> None:  # noqa: N802
                path = urlsplit(self.path).path
                with server._lock:
                    server.hits.append(Hit(self.path, dict(self.headers.items()), time.monotonic()))
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    if server.delay:
                        time.sleep(server.delay)
                    route = server.routes.get(path)
                    answer = route(self) if callable(route) else route
                    if answer is None and route is not None:
                        return
                    status, headers, body = answer or (404, {"Content-Type": "text/plain"}, b"not found")
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with server._lock:
                        server._in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def paths(self) -> list[str]:
        with self._lock:
            return [h.path for h in self.hits]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[RouteServer]:
    srv = RouteServer()
    yield srv
    srv.close()


def page(title: str, body: str = "", *, links: list[str] | None = None, head: str = "") -> Route:
    """An HTML page route with a title, some text and links."""
    anchors = "".join(f'<a href="{href}">{href}</a> ' for href in links or [])
    html = f"<html><head><title>{title}</title>{head}</head><body><h1>{title}</h1><p>{body or title}</p>{anchors}</body></html>"
    return 200, {"Content-Type": HTML}, html.encode()


def text(body: str | bytes, status: int = 200, ctype: str = "text/plain") -> Route:
    return status, {"Content-Type": ctype}, body if isinstance(body, bytes) else body.encode()


def urlset(base: str, paths: list[str]) -> Route:
    locs = "".join(f"<url><loc>{base}{p}</loc></url>" for p in paths)
    return text(f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</urlset>', ctype=XML)


def redirect(location: str, status: int = 301) -> Route:
    return status, {"Location": location, "Content-Type": "text/plain"}, b""


# --- running the crawler -------------------------------------------------------------------
@dataclass
class CrawlResult:
    job: dict[str, Any]
    logs: list[dict[str, Any]]
    items: dict[str, dict[str, Any]]  # key -> item row
    state: StateStore
    settings: Settings
    output: str

    def fetched(self) -> set[str]:
        """Keys of items fetched (stored) by this crawl, as paths."""
        return {urlsplit(k).path for k, v in self.items.items() if v["status"] == "fetched"}

    def log_text(self) -> str:
        return "\n".join(f"{line['message']} [{line.get('url') or ''}]" for line in self.logs)


def crawl(
    tmp_path: Path,
    source: str,
    *,
    web_crawler: dict[str, Any] | None = None,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    timeout: float = 90.0,
    index: bool = False,
    scrapy_settings: dict[str, str] | None = None,
    **overrides: Any,
) -> CrawlResult:
    """Create an instance for ``source`` and run one crawl job to completion in a child process.

    Args:
        tmp_path: the data directory.
        source: the site URL.
        web_crawler: ``source_params.web_crawler`` of the instance.
        include: ``include_items``.
        exclude: ``exclude_items``.
        timeout: seconds before the crawl counts as hung.
        index: let the crawler index what it fetches (pass ``model_dir`` in overrides); by default
            the test holds the index lock so the crawler only fetches.
        scrapy_settings: Scrapy setting overrides (``-s NAME=VALUE``).
        overrides: :class:`Settings` fields.
    """
    values: dict[str, Any] = {"data_dir": tmp_path, "autothrottle": False, "concurrent_requests_per_host": 1}
    values.update(overrides)
    settings = Settings(**values)
    state = StateStore(settings.resolved_database_url)
    config = InstanceConfig.model_validate(
        {
            "id": "site",
            "type": "web-crawler",
            "source": source,
            "source_params": {
                "include_items": include or [],
                "exclude_items": exclude or [],
                "web_crawler": web_crawler or {},
            },
        }
    )
    if state.get_instance("site") is None:  # a second call with the same data dir is the next sync
        state.create_instance("site", "web-crawler", config.source, config.model_dump(mode="json"))
    job = state.create_job("site", "cli")
    lock = None if index else try_own_embedded_store(settings)  # we own the index: the crawler only fetches
    assert index or lock is not None
    env = {**os.environ, **settings_env(settings), "SCRAPY_SETTINGS_MODULE": "crawler.settings"}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "crawler.run", "site", "--job", job["id"], "--log-level", "INFO"]
            + [arg for name, value in (scrapy_settings or {}).items() for arg in ("-s", f"{name}={value}")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    finally:
        if lock is not None:
            lock.release()
    assert proc.returncode == 0, proc.stderr[-4000:]
    logs, _ = state.job_logs(job["id"], limit=100_000)
    rows, _ = state.list_items("site", limit=100_000)
    return CrawlResult(
        job=state.get_job(job["id"]) or {},
        logs=logs,
        items={r["key"]: r for r in rows},
        state=state,
        settings=settings,
        output=proc.stderr,
    )


def basic_site(server: RouteServer, robots: Route | Handler | None) -> None:
    """/sitemap.xml listing /a.html, /b.html and /secret/c.html; robots.txt as given."""
    base = server.url
    if robots is not None:
        server.routes["/robots.txt"] = robots
    server.routes.update(
        {
            "/sitemap.xml": urlset(base, ["/a.html", "/b.html", "/secret/c.html"]),
            "/a.html": page("A"),
            "/b.html": page("B"),
            "/secret/c.html": page("C"),
        }
    )


# --- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [404, 403])
def test_robots_4xx_allows_everything(server: RouteServer, tmp_path: Path, status: int) -> None:
    basic_site(server, text("User-agent: *\nDisallow: /\n", status=status))
    result = crawl(tmp_path, server.url)
    assert result.fetched() == {"/a.html", "/b.html", "/secret/c.html"}
    assert f"robots.txt answered HTTP {status}: everything allowed" in result.log_text()


@pytest.mark.parametrize("status", [503])
def test_robots_5xx_disallows_everything_this_sync(server: RouteServer, tmp_path: Path, status: int) -> None:
    basic_site(server, text("oops", status=status))
    result = crawl(tmp_path, server.url)
    assert result.fetched() == set()
    assert [p for p in server.paths() if p != "/robots.txt"] == []  # not even the sitemap
    assert "nothing is crawled this sync" in result.log_text()
    # next sync: robots.txt is back, the site is crawled
    server.routes["/robots.txt"] = text("User-agent: *\nAllow: /\n")
    again = crawl(tmp_path, server.url)
    assert again.fetched() == {"/a.html", "/b.html", "/secret/c.html"}


def test_robots_network_failure_disallows_everything(server: RouteServer, tmp_path: Path) -> None:
    def drop(handler: BaseHTTPRequestHandler) -> None:
        handler.close_connection = True
        handler.connection.close()  # no status line at all

    basic_site(server, drop)
    result = crawl(tmp_path, server.url)
    assert result.fetched() == set()
    assert "robots.txt could not be fetched" in result.log_text()
    assert "/sitemap.xml" not in server.paths()


def test_robots_redirect_chain_of_five_is_followed(server: RouteServer, tmp_path: Path) -> None:
    basic_site(server, redirect("/r1"))
    for i in range(1, 5):
        server.routes[f"/r{i}"] = redirect(f"/r{i + 1}", status=302 if i % 2 else 308)
    server.routes["/r5"] = text("User-agent: *\nDisallow: /secret/\n")
    result = crawl(tmp_path, server.url)
    assert [p for p in server.paths() if p.startswith("/r")] == ["/robots.txt", "/r1", "/r2", "/r3", "/r4", "/r5"]
    assert result.fetched() == {"/a.html", "/b.html"}
    assert server.url + "/secret/c.html" not in result.items
    assert "Skipped by robots.txt" in result.log_text()


def test_robots_more_than_five_redirects_counts_as_unavailable(server: RouteServer, tmp_path: Path) -> None:
    basic_site(server, redirect("/r1"))
    for i in range(1, 6):
        server.routes[f"/r{i}"] = redirect(f"/r{i + 1}")
    server.routes["/r6"] = text("User-agent: *\nDisallow: /\n")
    result = crawl(tmp_path, server.url)
    assert "/r6" not in server.paths()
    # RFC 9309 §2.3.1.2: more than five redirects MAY be treated as "unavailable" (4xx): all allowed
    assert result.fetched() == {"/a.html", "/b.html", "/secret/c.html"}
    assert "too many redirects" in result.log_text()


def test_robots_parsed_up_to_500_kib(server: RouteServer, tmp_path: Path) -> None:
    head = "User-agent: *\nDisallow: /secret/\n"
    filler = "# padding padding padding padding padding padding padding padding\n" * (600 * 1024 // 66)
    tail = "User-agent: *\nDisallow: /b.html\n"  # beyond 500 KiB: ignored
    body = head + filler + tail
    assert len(body.encode()) > 550 * 1024
    basic_site(server, text(body))
    result = crawl(tmp_path, server.url)
    assert result.fetched() == {"/a.html", "/b.html"}


def test_our_group_wins_over_star(server: RouteServer, tmp_path: Path) -> None:
    robots = "User-agent: *\nDisallow: /\n\nUser-agent: SiteSearch\nDisallow: /secret/\n"
    basic_site(server, text(robots))
    result = crawl(tmp_path, server.url)
    assert result.fetched() == {"/a.html", "/b.html"}


def test_crawl_delay_spaces_page_requests(server: RouteServer, tmp_path: Path) -> None:
    robots = "User-agent: *\nCrawl-delay: 1\n"
    basic_site(server, text(robots))
    server.routes["/d.html"] = page("D")
    server.routes["/sitemap.xml"] = urlset(server.url, ["/a.html", "/b.html", "/secret/c.html", "/d.html"])
    # several requests per host allowed, AutoThrottle on: Crawl-delay is still the floor
    result = crawl(tmp_path, server.url, concurrent_requests_per_host=4, autothrottle=True)
    assert len(result.fetched()) == 4
    times = [h.ts for h in server.hits if h.path.endswith(".html")]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 3 and min(gaps) >= 0.9, gaps
    assert "Crawl-delay: 1" in result.log_text()


@pytest.mark.parametrize("per_host", [1, 3])
def test_concurrency_per_host_is_configurable(server: RouteServer, tmp_path: Path, per_host: int) -> None:
    paths = [f"/p{i}.html" for i in range(8)]
    server.routes["/sitemap.xml"] = urlset(server.url, paths)
    for p in paths:
        server.routes[p] = page(p)
    server.delay = 0.15
    result = crawl(tmp_path, server.url, concurrent_requests_per_host=per_host)
    assert len(result.fetched()) == 8
    assert server.max_in_flight == per_host


def test_autothrottle_is_on_by_default() -> None:
    assert Settings().autothrottle is True
    env = {**os.environ, "SCRAPY_SETTINGS_MODULE": "crawler.settings"}
    env.pop("SITESEARCH_AUTOTHROTTLE", None)
    out = subprocess.run(
        [sys.executable, "-c", "from crawler import settings as s; print(s.AUTOTHROTTLE_ENABLED)"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "True"


def test_custom_headers_on_robots_sitemaps_and_pages(server: RouteServer, tmp_path: Path) -> None:
    server.routes["/robots.txt"] = text(f"User-agent: *\nAllow: /\nSitemap: {server.url}/index.xml\n")
    server.routes["/index.xml"] = text(
        f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9"><sitemap><loc>{server.url}/sitemap.xml</loc></sitemap></sitemapindex>',
        ctype=XML,
    )
    basic_site(server, None)
    headers = {"X-Api-Key": "k1", "X-Tenant": "acme"}
    result = crawl(tmp_path, server.url, web_crawler={"parse_options": {"include_headers": headers}})
    assert len(result.fetched()) == 3
    assert len(server.hits) == 6
    for hit in server.hits:
        assert hit.headers.get("X-Api-Key") == "k1" and hit.headers.get("X-Tenant") == "acme", hit.path


def test_specific_sitemaps_replace_robots_discovery(server: RouteServer, tmp_path: Path) -> None:
    server.routes["/robots.txt"] = text(f"User-agent: *\nAllow: /\nSitemap: {server.url}/from-robots.xml\n")
    server.routes["/from-robots.xml"] = urlset(server.url, ["/b.html"])
    server.routes["/mine.xml"] = urlset(server.url, ["/a.html"])
    basic_site(server, None)
    sitemaps = [f"{server.url}/mine.xml", "https://elsewhere.example/sitemap.xml"]
    result = crawl(tmp_path, server.url, web_crawler={"parse_options": {"specific_sitemaps": sitemaps}})
    assert "/from-robots.xml" not in server.paths() and "/sitemap.xml" not in server.paths()
    assert result.fetched() == {"/a.html"}
    assert "Skipped sitemap: https://elsewhere.example/sitemap.xml is not on 127.0.0.1" in result.log_text()


def test_priority_order_holds_across_sitemaps(server: RouteServer, tmp_path: Path) -> None:
    def entries(rows: list[tuple[str, float]]) -> Route:
        body = "".join(f"<url><loc>{server.url}{p}</loc><priority>{pr}</priority></url>" for p, pr in rows)
        return text(f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{body}</urlset>', ctype=XML)

    server.routes["/robots.txt"] = text(f"Sitemap: {server.url}/one.xml\nSitemap: {server.url}/two.xml\n")
    server.routes["/one.xml"] = entries([("/low1.html", 0.1), ("/high1.html", 0.9)])
    server.routes["/two.xml"] = entries([("/mid.html", 0.5), ("/high2.html", 0.9), ("/low2.html", 0.1)])
    for p in ("/low1.html", "/high1.html", "/mid.html", "/high2.html", "/low2.html"):
        server.routes[p] = page(p)
    crawl(tmp_path, server.url)
    order = [p for p in server.paths() if p.endswith(".html")]
    assert order == ["/high1.html", "/high2.html", "/mid.html", "/low1.html", "/low2.html"]
