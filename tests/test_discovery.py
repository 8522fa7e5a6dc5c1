"""Link discovery: pure link/canonical extraction, and real crawls that follow links breadth-first."""

from __future__ import annotations

from pathlib import Path

import pytest

from crawler.discovery import Scope, canonical_url, extract_links, normalize_link, same_site_host
from indexer.instance import InstanceConfig
from tests.test_crawler_robots_fetch import RouteServer, crawl, page, redirect, server, text, urlset  # noqa: F401

SCOPE = Scope("example.com")


# --- pure extraction -----------------------------------------------------------------------
def test_links_resolved_deduplicated_in_order() -> None:
    html = b"""<html><body>
      <a href="/b">B</a> <a href="a.html#top">A</a> <a href="/b">again</a>
      <a href="https://example.com/c?x=1#frag">C</a> <area href="/d" />
      <a href="mailto:x@example.com">m</a> <a href="javascript:void(0)">j</a> <a href="#only">f</a>
      <a href="tel:123">t</a> <a href="  /e  ">E</a> <a>no href</a>
    </body></html>"""
    found = extract_links(html, "https://example.com/docs/index.html", SCOPE)
    assert found.links == [
        "https://example.com/b",
        "https://example.com/docs/a.html",
        "https://example.com/c?x=1",
        "https://example.com/d",
        "https://example.com/e",
    ]
    assert found.external == []


def test_external_and_subdomain_links() -> None:
    html = b'<a href="https://other.org/x">o</a><a href="https://docs.example.com/y">s</a><a href="http://EXAMPLE.com:8080/z">p</a>'
    found = extract_links(html, "https://example.com/", SCOPE)
    assert found.links == []  # another port of the same host is another site
    assert found.external == ["https://other.org/x", "https://docs.example.com/y", "http://example.com:8080/z"]
    with_subs = extract_links(html, "https://example.com/", Scope("example.com", include_subdomains=True))
    assert with_subs.links == ["https://docs.example.com/y"]
    assert not Scope("example.com", include_subdomains=True).contains("https://badexample.com/")


def test_nofollow_and_base_href() -> None:
    html = b'<html><head><base href="https://example.com/root/"></head><body><a href="x">x</a><a rel="nofollow" href="/n">n</a></body></html>'
    assert extract_links(html, "https://example.com/a/b/c", SCOPE).links == ["https://example.com/root/x"]


def test_canonical_same_host_only() -> None:
    same = b'<html><head><link rel="canonical" href="/page#x"></head></html>'
    other = b'<html><head><link rel="canonical" href="https://mirror.org/page"></head></html>'
    assert canonical_url(same, "https://example.com/page?utm=1", SCOPE) == "https://example.com/page"
    assert extract_links(same, "https://example.com/page?utm=1", SCOPE).canonical == "https://example.com/page"
    assert canonical_url(other, "https://example.com/page", SCOPE) is None
    assert canonical_url(b"<html></html>", "https://example.com/", SCOPE) is None


def test_garbage_input_gives_empty_result() -> None:
    for body in (b"", b"\x00\xff\xfe", b"<<<>>>", "plain text".encode()):
        found = extract_links(body, "https://example.com/", SCOPE)
        assert found.links == [] and found.canonical is None
    assert normalize_link("http://[::1", "https://example.com/") is None
    assert normalize_link("x" * 3000, "https://example.com/") is None


def test_discover_options_validation() -> None:
    cfg = InstanceConfig.model_validate(
        {
            "id": "x",
            "type": "web-crawler",
            "source": "example.com",
            "source_params": {"web_crawler": {"parse_type": "discover", "crawl_options": {"source": "links", "depth": 2}}},
        }
    )
    assert cfg.source_params.web_crawler.discover_options.source == "links"
    assert cfg.source_params.web_crawler.discover_options.depth == 2
    with pytest.raises(ValueError, match="limit"):
        InstanceConfig.model_validate(
            {
                "id": "x",
                "type": "web-crawler",
                "source": "example.com",
                "source_params": {"web_crawler": {"discover_options": {"limit": 100_001}}},
            }
        )
    with pytest.raises(ValueError, match="source"):
        InstanceConfig.model_validate(
            {
                "id": "x",
                "type": "web-crawler",
                "source": "example.com",
                "source_params": {"web_crawler": {"discover_options": {"source": "everything"}}},
            }
        )


# --- crawls ---------------------------------------------------------------------------------
def chain_site(server: RouteServer, length: int = 7) -> None:
    """/ links to /a.html and /d1.html; /a.html links to /c.html; /dN links to /dN+1 (a chain)."""
    server.routes.update(
        {
            "/robots.txt": text("User-agent: *\nDisallow: /private/\n"),
            "/": page("Home", links=["/a.html", "/d1.html", "/private/p.html", "https://elsewhere.example/x"]),
            "/a.html": page("A", links=["/c.html", "/", "/a.html#again"]),
            "/c.html": page("C"),
            "/private/p.html": page("P"),
        }
    )
    for i in range(1, length + 1):
        server.routes[f"/d{i}.html"] = page(f"D{i}", links=[f"/d{i + 1}.html"])


def test_no_sitemap_falls_back_to_links_breadth_first_depth_5(server: RouteServer, tmp_path: Path) -> None:
    chain_site(server)
    result = crawl(tmp_path, server.url + "/")
    assert "falling back to link discovery" in result.log_text()
    assert result.fetched() == {"/", "/a.html", "/c.html", "/d1.html", "/d2.html", "/d3.html", "/d4.html", "/d5.html"}
    assert "/d6.html" not in server.paths()  # depth 6
    assert "/private/p.html" not in server.paths()
    assert "Skipped by robots.txt" in result.log_text()
    assert "external link" in result.log_text()
    pages = [p for p in server.paths() if p.endswith(".html") or p == "/"]
    assert pages[:3] == ["/", "/a.html", "/d1.html"]  # breadth first
    assert pages.index("/c.html") < pages.index("/d3.html")
    assert result.items[server.url + "/d5.html"]["depth"] == 5
    assert result.job["status"] != "failed"


def test_discover_links_only_ignores_sitemaps(server: RouteServer, tmp_path: Path) -> None:
    chain_site(server, length=2)
    server.routes["/sitemap.xml"] = urlset(server.url, ["/only-in-sitemap.html"])
    server.routes["/only-in-sitemap.html"] = page("S")
    wc = {"parse_type": "discover", "discover_options": {"source": "links", "depth": 1}}
    result = crawl(tmp_path, server.url, web_crawler=wc)
    assert "/sitemap.xml" not in server.paths()
    assert result.fetched() == {"/", "/a.html", "/d1.html"}


def test_discover_all_uses_sitemaps_and_links_with_limit(server: RouteServer, tmp_path: Path) -> None:
    chain_site(server)
    server.routes["/sitemap.xml"] = urlset(server.url, ["/only-in-sitemap.html"])
    server.routes["/only-in-sitemap.html"] = page("S", links=["/c.html"])
    wc = {"parse_type": "discover", "discover_options": {"source": "all", "limit": 3}}
    result = crawl(tmp_path, server.url, web_crawler=wc)
    fetched = result.fetched()
    assert "/only-in-sitemap.html" in fetched
    assert len(fetched - {"/only-in-sitemap.html"}) == 3  # the link-discovery cap
    assert "link discovery limit of 3 pages reached" in result.log_text()


def test_sitemap_parse_type_does_not_follow_links_when_a_sitemap_exists(server: RouteServer, tmp_path: Path) -> None:
    chain_site(server)
    server.routes["/sitemap.xml"] = urlset(server.url, ["/a.html"])
    result = crawl(tmp_path, server.url)
    assert result.fetched() == {"/a.html"}
    assert "falling back" not in result.log_text()


def test_link_discovery_obeys_filters(server: RouteServer, tmp_path: Path) -> None:
    chain_site(server, length=3)
    result = crawl(tmp_path, server.url, exclude=["**/d2.html"])
    assert "/d2.html" not in server.paths() and "/d3.html" not in server.paths()
    assert {"/", "/a.html", "/d1.html"} <= result.fetched()


def test_canonical_and_redirects_collapse_duplicates(server: RouteServer, tmp_path: Path) -> None:
    canon = '<link rel="canonical" href="/article.html">'
    server.routes.update(
        {
            "/robots.txt": text("User-agent: *\nAllow: /\n"),
            "/sitemap.xml": urlset(
                server.url,
                ["/article.html", "/article.html?utm=1", "/print/article.html", "/old.html", "/away.html", "/moved.html"],
            ),
            "/article.html": page("Article", head=canon),
            "/print/article.html": page("Article (print)", head=canon),
            "/old.html": redirect("/new.html"),
            "/new.html": page("New"),
            "/away.html": redirect("http://localhost:1/elsewhere"),
            "/moved.html": redirect("/article.html"),  # onto a URL fetched anyway
        }
    )
    server.routes["/article.html"] = page("Article", head=canon)
    result = crawl(tmp_path, server.url)
    assert result.fetched() == {"/article.html", "/new.html"}
    base = server.url
    assert result.items[base + "/article.html?utm=1"]["status"] == "skipped"
    assert result.items[base + "/print/article.html"]["status"] == "skipped"
    assert "duplicate of" in (result.items[base + "/print/article.html"]["error"] or "") or "collapsed" in (
        result.items[base + "/print/article.html"]["error"] or ""
    )
    assert result.items[base + "/old.html"]["status"] == "skipped"
    assert result.items[base + "/new.html"]["status"] == "fetched"
    assert result.items[base + "/moved.html"]["status"] == "skipped"
    assert server.paths().count("/article.html") == 1
    assert "/elsewhere" not in server.paths()
    away = result.items[base + "/away.html"]
    assert away["status"] == "skipped" and "redirected off the site" in away["error"]
    assert "Skipped: redirected off 127.0.0.1 to http://localhost:1/elsewhere" in result.log_text()


@pytest.mark.slow
def test_exact_duplicate_content_is_indexed_once(server: RouteServer, tmp_path: Path, model_dir: Path) -> None:
    body = "The lighthouse keeper logs the fog horn every night at nine. " * 20
    server.routes.update(
        {
            "/robots.txt": text("User-agent: *\nAllow: /\n"),
            "/sitemap.xml": urlset(server.url, ["/one.html", "/two.html", "/other.html"]),
            "/one.html": page("Lighthouse", body),
            "/two.html": page("Lighthouse", body),  # same page under another URL, no canonical
            "/other.html": page("Harbour", "Boats are counted at dawn by the harbour master. " * 20),
        }
    )
    result = crawl(tmp_path, server.url, index=True, model_dir=model_dir, timeout=180)
    items = {k.rsplit("/", 1)[1]: v for k, v in result.items.items()}
    assert items["one.html"]["status"] == "indexed" and items["one.html"]["chunks"] > 0
    assert items["other.html"]["status"] == "indexed"
    assert items["two.html"]["status"] == "skipped"
    assert "same content as" in (items["two.html"]["error"] or "")
    assert result.job["indexed"] == 2


@pytest.mark.parametrize(
    ("hostname", "site", "same"),
    [
        ("example.com", "example.com", True),
        ("www.example.com", "example.com", True),
        ("example.com", "www.example.com", True),
        ("WWW.Example.com", "example.com", True),
        ("blog.example.com", "example.com", False),
        ("www.example.org", "example.com", False),
        ("wwwexample.com", "example.com", False),
    ],
)
def test_www_and_bare_domain_are_one_site(hostname: str, site: str, same: bool) -> None:
    assert same_site_host(hostname, site) is same
    assert Scope(site).contains(f"https://{hostname}/page") is same
