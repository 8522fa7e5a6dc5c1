"""robots.txt groups written for Cloudflare AI Search's crawler apply to ours.

The seeds (Website data source page): "The AI Search crawler uses the user agent
``Cloudflare-AI-Search``", and the 2026-02-09 release note: "You can continue using the
previous user agent name, ``Cloudflare-AutoRAG``, in your robots.txt". Our crawler obeys, in
order, the groups for ``sitesearch``, ``cloudflare-ai-search``, ``cloudflare-autorag``, then
``*`` (crawler.robots.ROBOTS_AGENT_TOKENS).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from crawler.robots import ROBOTS_AGENT_TOKENS, USER_AGENT_TOKEN, RobotsTxt
from indexer.config import Settings
from server.app import create_app
from server.devsite import DevSite
from tests.conftest import API_TOKEN, make_settings, wait_for_job

OUR_UA = Settings.model_construct().user_agent  # what the spider passes: "sitesearch/<version> (+<url>)"

# The seeds' "block all other crawlers but allow only AI Search" recipe.
CASE_A = "User-agent: *\nDisallow: /\n\n\nUser-agent: Cloudflare-AI-Search\nAllow: /\n"
# A site that kept its pre-rename rules.
CASE_B = "User-agent: *\nAllow: /\n\nUser-agent: Cloudflare-AutoRAG\nDisallow: /blog/\n"


# --------------------------------------------------------------------------- selection


def test_agent_order() -> None:
    assert ROBOTS_AGENT_TOKENS == ("sitesearch", "cloudflare-ai-search", "cloudflare-autorag")
    assert ROBOTS_AGENT_TOKENS[0] == USER_AGENT_TOKEN


@pytest.mark.parametrize("user_agent", [USER_AGENT_TOKEN, OUR_UA, "SiteSearch/9"])
def test_allow_only_ai_search_recipe_lets_us_in(user_agent: str) -> None:
    robots = RobotsTxt.parse(CASE_A)
    assert robots.allowed("https://example.com/docs/page.html", user_agent)
    assert robots.allowed("/", user_agent)
    assert robots.group_agent(user_agent) == "cloudflare-ai-search"
    assert not robots.allowed("/docs/page.html", "OtherBot/1.0")  # others still get "*"


@pytest.mark.parametrize("user_agent", [USER_AGENT_TOKEN, OUR_UA])
def test_autorag_group_still_honoured(user_agent: str) -> None:
    robots = RobotsTxt.parse(CASE_B)
    assert not robots.allowed("https://example.com/blog/post.html", user_agent)
    assert robots.allowed("https://example.com/docs/page.html", user_agent)
    assert robots.group_agent(user_agent) == "cloudflare-autorag"
    assert robots.allowed("/blog/post.html", "OtherBot")


@pytest.mark.parametrize("ai_search_first", [True, False])
def test_ai_search_wins_over_autorag_in_any_file_order(ai_search_first: bool) -> None:
    ai_search = "User-agent: Cloudflare-AI-Search\nDisallow: /a/\n"
    autorag = "User-agent: Cloudflare-AutoRAG\nDisallow: /b/\n"
    body = "User-agent: *\nDisallow: /\n\n" + "\n".join([ai_search, autorag] if ai_search_first else [autorag, ai_search])
    robots = RobotsTxt.parse(body)
    assert not robots.allowed("/a/x")
    assert robots.allowed("/b/x")
    assert robots.allowed("/c/x")
    assert robots.group_agent() == "cloudflare-ai-search"


@pytest.mark.parametrize("ours_first", [True, False])
def test_our_group_wins_over_cloudflare_groups(ours_first: bool) -> None:
    ours = "User-agent: sitesearch\nDisallow: /ours/\n"
    cloudflare = "User-agent: Cloudflare-AI-Search\nDisallow: /cf/\n\nUser-agent: Cloudflare-AutoRAG\nDisallow: /rag/\n"
    robots = RobotsTxt.parse("\n".join([ours, cloudflare] if ours_first else [cloudflare, ours]))
    assert not robots.allowed("/ours/x", OUR_UA)
    assert robots.allowed("/cf/x", OUR_UA)
    assert robots.allowed("/rag/x", OUR_UA)
    assert robots.group_agent(OUR_UA) == "sitesearch"


def test_groups_of_the_selected_agent_are_merged() -> None:
    robots = RobotsTxt.parse(
        "User-agent: Cloudflare-AI-Search\nDisallow: /a/\n\n"
        "User-agent: *\nDisallow: /star/\n\n"
        "User-agent: cloudflare-ai-search\nDisallow: /b/\n\n"
        "User-agent: Cloudflare-AutoRAG\nDisallow: /c/\n"
    )
    assert not robots.allowed("/a/x") and not robots.allowed("/b/x")
    assert robots.allowed("/c/x") and robots.allowed("/star/x")


def test_matching_group_without_rules_still_wins() -> None:
    # "at least one matching group": an empty Cloudflare group means "allow all", not "use *"
    robots = RobotsTxt.parse("User-agent: *\nDisallow: /\n\nUser-agent: Cloudflare-AI-Search\nDisallow:\n")
    assert robots.allowed("/x")
    assert robots.group_agent() == "cloudflare-ai-search"


def test_shared_group_and_case_insensitive_names() -> None:
    robots = RobotsTxt.parse("User-agent: GPTBot\nUser-agent: CLOUDFLARE-AUTORAG/1.0\nDisallow: /x/\n")
    assert not robots.allowed("/x/1")
    assert robots.group_agent() == "cloudflare-autorag"


def test_crawl_delay_and_request_rate_come_from_the_selected_groups() -> None:
    # (a rule ends each user-agent list: Crawl-delay and Request-rate do not)
    body = (
        "User-agent: *\nDisallow: /tmp/\nCrawl-delay: 10\nRequest-rate: 1/10s\n\n"
        "User-agent: Cloudflare-AI-Search\nDisallow: /tmp/\nCrawl-delay: 3\nRequest-rate: 2/1m\n\n"
        "User-agent: Cloudflare-AutoRAG\nDisallow: /tmp/\nCrawl-delay: 7\nRequest-rate: 1/1h\n"
    )
    robots = RobotsTxt.parse(body)
    assert robots.crawl_delay(OUR_UA) == 3.0
    assert robots.request_rate(OUR_UA) == (2, 60)
    assert robots.crawl_delay("OtherBot") == 10.0
    # Our own group wins and nothing is inherited from the Cloudflare groups.
    ours = RobotsTxt.parse(body + "\nUser-agent: sitesearch\nDisallow: /tmp/\n")
    assert ours.crawl_delay(OUR_UA) is None
    assert ours.request_rate(OUR_UA) is None
    autorag_only = RobotsTxt.parse(
        "User-agent: *\nAllow: /\nCrawl-delay: 10\n\nUser-agent: Cloudflare-AutoRAG\nAllow: /\nCrawl-delay: 7\n"
    )
    assert autorag_only.crawl_delay() == 7.0


def test_other_callers_are_not_given_cloudflare_groups() -> None:
    robots = RobotsTxt.parse(CASE_B)
    assert robots.allowed("/blog/x", "Googlebot/2.1")
    assert robots.group_agent("Googlebot/2.1") == "*"
    # A caller that is Cloudflare-AI-Search does not inherit Cloudflare-AutoRAG rules from us.
    assert robots.allowed("/blog/x", "Cloudflare-AI-Search")
    assert not robots.allowed("/blog/x", "Cloudflare-AutoRAG")


def test_star_and_no_group() -> None:
    assert RobotsTxt.parse("User-agent: *\nDisallow: /p/\n").group_agent() == "*"
    assert RobotsTxt.parse("").group_agent() is None
    assert RobotsTxt.parse("User-agent: GPTBot\nDisallow: /\n").group_agent() is None
    assert RobotsTxt.allow_all().group_agent() is None
    assert RobotsTxt.disallow_all().group_agent() == "*"


# --------------------------------------------------------------------------- a real crawl

ACCOUNT = "/client/v4/accounts/local/ai-search"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}
PAGES = {
    "docs/lighthouse.html": (
        "Lighthouse keeper handbook",
        "The lighthouse lamp on Skarvøy is lit at dusk and its lens turns once every twelve seconds.",
    ),
    "blog/kelp.html": (
        "Kelp forest diary",
        "Divers counted forty sea urchins per square metre in the kelp forest below the harbour wall.",
    ),
}


def _write_site(site: DevSite, robots: str) -> None:
    """Two pages, a sitemap listing them and ``robots`` (plus its Sitemap line) under ``site.root``."""
    for name, (title, text) in PAGES.items():
        path = site.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body><main><h1>{title}</h1><p>{text}</p><p>{text}</p></main></body></html>",
            encoding="utf-8",
        )
    locs = "".join(f"<url><loc>{site.url}/{name}</loc></url>" for name in PAGES)
    (site.root / "sitemap.xml").write_text(
        f'<?xml version="1.0" encoding="UTF-8"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{locs}</urlset>',
        encoding="utf-8",
    )
    (site.root / "robots.txt").write_text(f"{robots}\nSitemap: {site.url}/sitemap.xml\n", encoding="utf-8")


def _sync(client: TestClient, instance_id: str, site: DevSite) -> dict[str, Any]:
    r = client.post(f"{ACCOUNT}/instances", json={"id": instance_id, "type": "web-crawler", "source": site.url}, headers=AUTH)
    assert r.status_code == 200, r.text
    r = client.post(f"{ACCOUNT}/instances/{instance_id}/jobs", headers=AUTH)
    assert r.status_code == 200, r.text
    job_id = r.json()["result"]["id"]
    job = wait_for_job(client, instance_id, job_id)
    logs = client.get(f"{ACCOUNT}/instances/{instance_id}/jobs/{job_id}/logs?per_page=1000", headers=AUTH).json()["result"]
    return {"job": job, "logs": logs, "fetched": {r.path for r in site.requests}}


@pytest.fixture(scope="module")
def synced(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One API server syncing two DevSites: case A (allow only AI Search) and case B (AutoRAG rule)."""
    settings = make_settings(tmp_path_factory.mktemp("data"), model_dir)
    with (
        DevSite(tmp_path_factory.mktemp("site-a")) as site_a,
        DevSite(tmp_path_factory.mktemp("site-b")) as site_b,
        TestClient(create_app(settings)) as client,
    ):
        _write_site(site_a, CASE_A)
        _write_site(site_b, CASE_B)
        yield {"client": client, "a": _sync(client, "cf-ai-search", site_a), "b": _sync(client, "cf-autorag", site_b)}


@pytest.mark.slow
def test_crawl_allow_only_ai_search_indexes_the_pages(synced: dict[str, Any]) -> None:
    result = synced["a"]
    assert result["job"]["status"] == "completed", result["job"]
    assert result["job"]["counters"]["indexed"] == 2, result["job"]
    assert {"/docs/lighthouse.html", "/blog/kelp.html"} <= result["fetched"]
    assert not any(line["message"] == "Skipped by robots.txt" for line in result["logs"])
    r = synced["client"].post(f"{ACCOUNT}/instances/cf-ai-search/search", json={"query": "lighthouse lens"}, headers=AUTH)
    assert r.json()["result"]["data"][0]["filename"].endswith("/docs/lighthouse.html")


@pytest.mark.slow
def test_crawl_autorag_rule_skips_blog(synced: dict[str, Any]) -> None:
    result = synced["b"]
    assert result["job"]["status"] == "completed", result["job"]
    assert result["job"]["counters"]["indexed"] == 1, result["job"]
    assert "/docs/lighthouse.html" in result["fetched"]
    assert "/blog/kelp.html" not in result["fetched"]
    skipped = {line["url"].split("/", 3)[-1]: line["message"] for line in result["logs"] if line["url"]}
    assert skipped["blog/kelp.html"] == "Skipped by robots.txt"
    for hit in synced["client"].post(
        f"{ACCOUNT}/instances/cf-autorag/search", json={"query": "kelp forest sea urchins"}, headers=AUTH
    ).json()["result"]["data"]:
        assert "/blog/" not in hit["filename"]
