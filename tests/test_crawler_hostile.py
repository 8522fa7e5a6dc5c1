"""Hostile sites: the crawler finishes, stays within its limits and logs why it skipped things.

Real crawls (``python -m crawler.run``) of a scripted HTTP server on 127.0.0.1
(:class:`tests.test_crawler_robots_fetch.RouteServer`).
"""

from __future__ import annotations

import gzip
import time
import zlib
from pathlib import Path

from tests.test_crawler_robots_fetch import XML, RouteServer, crawl, page, redirect, server, text, urlset  # noqa: F401

SITEMAP_NS = "http://www.sitemaps.org/schemas/sitemap/0.9"


def _gzip_stream(parts: list[bytes], repeat_filler: bytes, filler_times: int) -> bytes:
    """gzip ``parts[0] + filler * times + parts[1:]`` without building the whole plaintext in memory."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    out = [comp.compress(parts[0])]
    for _ in range(filler_times):
        out.append(comp.compress(repeat_filler))
    for part in parts[1:]:
        out.append(comp.compress(part))
    out.append(comp.flush())
    return b"".join(out)


def _index(*locs: str) -> tuple[int, dict[str, str], bytes]:
    body = "".join(f"<sitemap><loc>{loc}</loc></sitemap>" for loc in locs)
    return text(f'<sitemapindex xmlns="{SITEMAP_NS}">{body}</sitemapindex>', ctype=XML)


def test_gzip_bomb_sitemap_file(server: RouteServer, tmp_path: Path) -> None:
    head = f'<?xml version="1.0"?><urlset xmlns="{SITEMAP_NS}"><url><loc>{server.url}/a.html</loc></url>'.encode()
    tail = f"<url><loc>{server.url}/late.html</loc></url></urlset>".encode()
    bomb = _gzip_stream([head, tail], b" " * (1 << 20), 200)  # 200 MiB of whitespace when gunzipped
    assert len(bomb) < 1024 * 1024
    server.routes.update(
        {
            "/robots.txt": text(f"Sitemap: {server.url}/bomb.xml.gz\n"),
            "/bomb.xml.gz": (200, {"Content-Type": "application/gzip"}, bomb),
            "/a.html": page("A"),
            "/late.html": page("Late"),
        }
    )
    started = time.monotonic()
    result = crawl(tmp_path, server.url, timeout=120)
    assert time.monotonic() - started < 90
    assert result.fetched() == {"/a.html"}  # the URL past the 50 MB cap is never seen
    assert "/late.html" not in server.paths()
    log = result.log_text().lower()
    assert "sitemap error" in log and ("limit" in log or "cap" in log or "larger" in log), result.log_text()
    assert result.job["status"] != "failed"


def test_gzip_bomb_content_encoding(server: RouteServer, tmp_path: Path) -> None:
    """A sitemap sent with ``Content-Encoding: gzip`` that inflates past the download cap is dropped, not inflated."""
    head = f'<?xml version="1.0"?><urlset xmlns="{SITEMAP_NS}"><url><loc>{server.url}/a.html</loc></url>'.encode()
    bomb = _gzip_stream([head, b"</urlset>"], b" " * (1 << 20), 100)  # 100 MiB > 64 MiB DOWNLOAD_MAXSIZE
    server.routes.update(
        {
            "/robots.txt": text(f"Sitemap: {server.url}/sitemap.xml\n"),
            "/sitemap.xml": (200, {"Content-Type": XML, "Content-Encoding": "gzip"}, bomb),
            "/b.html": page("B"),
        }
    )
    result = crawl(tmp_path, server.url, timeout=120)
    assert "/a.html" not in server.paths()
    assert "sitemap could not be fetched" in result.log_text()


def test_billion_laughs_sitemap(server: RouteServer, tmp_path: Path) -> None:
    entities = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)
    ]
    body = (
        f'<?xml version="1.0"?>\n<!DOCTYPE urlset [\n{chr(10).join(entities)}\n]>\n'
        f'<urlset xmlns="{SITEMAP_NS}"><url><loc>{server.url}/x/&lol9;.html</loc></url>'
        f"<url><loc>{server.url}/a.html</loc></url></urlset>"
    )
    server.routes.update(
        {
            "/robots.txt": text("User-agent: *\nAllow: /\n"),
            "/sitemap.xml": text(body, ctype=XML),
            "/a.html": page("A"),
        }
    )
    started = time.monotonic()
    result = crawl(tmp_path, server.url)
    assert time.monotonic() - started < 60
    assert "/a.html" in result.fetched()
    assert not any("lollol" in key for key in result.items)  # never expanded
    assert not any(p.startswith("/x/") and "lollol" in p for p in server.paths())


def test_cyclic_sitemap_index(server: RouteServer, tmp_path: Path) -> None:
    base = server.url
    server.routes.update(
        {
            "/robots.txt": text(f"Sitemap: {base}/idx1.xml\n"),
            "/idx1.xml": _index(f"{base}/idx2.xml", f"{base}/idx1.xml", f"{base}/pages1.xml"),
            "/idx2.xml": _index(f"{base}/idx1.xml", f"{base}/pages2.xml", f"{base}/idx2.xml"),
            "/pages1.xml": urlset(base, ["/a.html"]),
            "/pages2.xml": urlset(base, ["/b.html"]),
            "/a.html": page("A"),
            "/b.html": page("B"),
        }
    )
    result = crawl(tmp_path, server.url)
    assert result.fetched() == {"/a.html", "/b.html"}
    for sitemap in ("/idx1.xml", "/idx2.xml", "/pages1.xml", "/pages2.xml"):
        assert server.paths().count(sitemap) == 1, sitemap
    assert "Skipped sitemap" in result.log_text()


def test_robots_redirect_loop(server: RouteServer, tmp_path: Path) -> None:
    server.routes.update(
        {
            "/robots.txt": redirect("/robots-2.txt"),
            "/robots-2.txt": redirect("/robots.txt"),
            "/sitemap.xml": urlset(server.url, ["/a.html"]),
            "/a.html": page("A"),
        }
    )
    result = crawl(tmp_path, server.url)
    assert server.paths().count("/robots.txt") == 3  # the original request and two loops back
    assert result.fetched() == {"/a.html"}
    assert "too many redirects" in result.log_text()


def test_page_over_size_cap_is_skipped_with_reason(server: RouteServer, tmp_path: Path) -> None:
    big = b"<html><body><p>" + b"x" * (5 * 1024 * 1024) + b"</p></body></html>"
    server.routes.update(
        {
            "/sitemap.xml": urlset(server.url, ["/big.html", "/a.html"]),
            "/big.html": (200, {"Content-Type": "text/html"}, big),
            "/a.html": page("A"),
        }
    )
    result = crawl(tmp_path, server.url)
    assert result.fetched() == {"/a.html"}
    big_item = result.items[server.url + "/big.html"]
    assert big_item["status"] == "skipped" and "size limit" in (big_item["error"] or "")
    assert "over the 4194304 byte limit" in result.log_text()


def test_page_cap_per_instance(server: RouteServer, tmp_path: Path) -> None:
    paths = [f"/p{i}.html" for i in range(6)]
    server.routes["/sitemap.xml"] = urlset(server.url, paths)
    for p in paths:
        server.routes[p] = page(p)
    result = crawl(tmp_path, server.url, max_pages_per_instance=4)
    assert result.fetched() == set(paths[:4])
    assert "page cap of 4 reached" in result.log_text()


def test_gzip_helper_is_a_real_gzip() -> None:
    data = _gzip_stream([b"<a>", b"</a>"], b" " * 10, 3)
    assert gzip.decompress(data) == b"<a>" + b" " * 30 + b"</a>"
