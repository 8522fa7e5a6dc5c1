"""Which URLs belong to an instance's site: same host (``www.`` or not) and same port."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from crawler.discovery import Scope, site_port


@pytest.mark.parametrize(
    ("url", "port"),
    [
        ("http://h/", None),
        ("http://h:80/", None),
        ("https://h/", None),
        ("https://h:443/", None),
        ("http://h:443/", 443),
        ("https://h:80/", 80),
        ("http://h:8080/", 8080),
        ("https://h:8080/", 8080),
    ],
)
def test_site_port_is_none_on_the_default_port(url: str, port: int | None) -> None:
    assert site_port(url) == port


@pytest.mark.parametrize(
    ("site", "url", "same"),
    [
        ("https://example.com/", "http://example.com/a", True),  # http → https redirects stay on the site
        ("http://example.com/", "https://example.com:443/a", True),
        ("http://example.com/", "https://www.example.com/a", True),
        ("https://example.com/", "http://example.com:8080/a", False),
        ("http://127.0.0.1:18105/", "http://127.0.0.1:18104/docs/battery.html", False),
        ("http://127.0.0.1:18105/", "http://127.0.0.1:18105/docs/battery.html", True),
        ("http://127.0.0.1:18105/", "https://127.0.0.1:18105/docs/battery.html", True),  # scheme-insensitive
        ("http://127.0.0.1:18105/", "http://127.0.0.1/docs/battery.html", False),
        ("https://example.com/", "https://example.com:99999/a", False),  # malformed port
    ],
)
def test_same_site_means_same_host_and_port(site: str, url: str, same: bool) -> None:
    assert Scope(urlsplit(site).hostname or "", port=site_port(site)).contains(url) is same


def test_subdomain_rule_unchanged_on_the_default_port() -> None:
    scope = Scope("example.com", include_subdomains=True, port=site_port("https://example.com/"))
    assert scope.contains("https://docs.example.com/y") and scope.contains("http://docs.example.com/y")
    assert not scope.contains("https://badexample.com/")
    assert not Scope("example.com", port=None).contains("https://docs.example.com/y")
    assert not scope.contains("https://docs.example.com:8443/y")


@pytest.mark.parametrize(
    ("encoding", "content_type"),
    [("utf-8", "text/html; charset=utf-8"), ("utf-8", "text/html"), ("cp1252", "text/html; charset=windows-1252")],
)
def test_non_ascii_links_decoded_by_the_header_charset(encoding: str, content_type: str) -> None:
    from crawler.discovery import extract_links

    body = '<html><body><a href="/de/größe.html">Größe</a><link rel="canonical" href="/de/übersicht.html"></body></html>'
    found = extract_links(body.encode(encoding), "http://h/de/", Scope("h"), content_type)
    assert found.links == ["http://h/de/größe.html"]
    assert found.canonical == "http://h/de/übersicht.html"
