"""Tests for crawler.robots: RFC 9309 conformance data plus the spider-facing interface.

The conformance data lives outside the repo at ``../shared/eval/robots`` (relative to
the repo root) and is read in place; those tests are skipped if the folder is absent.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import pytest

from crawler.robots import (
    MAX_ROBOTS_BYTES,
    USER_AGENT_TOKEN,
    RobotsTxt,
    robots_policy_for_status,
)

logger = logging.getLogger(__name__)

EVAL_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "eval" / "robots"
GOOGLE_FILE = EVAL_DIR / "google_robotstxt_cases.json"
PROTEGO_FILE = EVAL_DIR / "protego_cases.json"
MISSING_REASON = f"conformance data not found at {EVAL_DIR}"

# GoogleOnly_* rows we knowingly fail (Google extensions, not RFC 9309), keyed by
# (test, user_agent).
GOOGLE_ONLY_KNOWN_FAILURES = {
    ("GoogleOnly_AcceptUserAgentUpToFirstSpace", "Foo Bar"): (
        "our allowed() takes a full User-Agent string and extracts its product token "
        "('Foo Bar' -> 'foo'); Google compares the caller string verbatim"
    ),
}
EXPECTED_CONFLICTS = 3


def _load(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as handle:
        return json.load(handle)


GOOGLE_ROWS = _load(GOOGLE_FILE)
PROTEGO_ROWS = _load(PROTEGO_FILE)


def _key(row: dict[str, Any]) -> tuple[str, str, str]:
    return row["robots_txt"], row["user_agent"], row["url"]


def _conflicts() -> dict[tuple[str, str, str], int]:
    """Google rows whose exact input is a Protego row with the opposite expectation.

    Returns:
        Input key -> index of the contradicting Protego row.
    """
    protego = {_key(row): (index, row["allowed"]) for index, row in enumerate(PROTEGO_ROWS)}
    conflicts = {}
    for row in GOOGLE_ROWS:
        other = protego.get(_key(row))
        if other is not None and other[1] != row["expected_allowed"]:
            conflicts[_key(row)] = other[0]
    return conflicts


CONFLICTS = _conflicts()


def _check(row: dict[str, Any], expected: bool) -> bool:
    return RobotsTxt.parse(row["robots_txt"]).allowed(row["url"], row["user_agent"]) is expected


def _google_params() -> list[Any]:
    if not GOOGLE_ROWS:
        return [pytest.param(None, marks=pytest.mark.skip(reason=MISSING_REASON), id="missing")]
    params = []
    for index, row in enumerate(GOOGLE_ROWS):
        marks = []
        if _key(row) in CONFLICTS:
            marks.append(
                pytest.mark.xfail(
                    strict=True,
                    reason=f"identical input to protego row {CONFLICTS[_key(row)]} with the "
                    "opposite expectation; we follow RFC 9309 §2.2.2 (see docs/robots.md)",
                )
            )
        known = GOOGLE_ONLY_KNOWN_FAILURES.get((row["test"], row["user_agent"]))
        if known:
            marks.append(pytest.mark.xfail(strict=True, reason=known))
        params.append(pytest.param(row, marks=marks, id=f"{row['test']}-{index}"))
    return params


def _protego_id(name: str, index: int) -> str:
    short = name.split("::")[-1]
    clean = "".join(ch if ch.isprintable() and not ch.isspace() else "_" for ch in short)
    return f"{clean}-{index}"


def _protego_params() -> list[Any]:
    if not PROTEGO_ROWS:
        return [pytest.param(None, marks=pytest.mark.skip(reason=MISSING_REASON), id="missing")]
    return [
        pytest.param(row, id=_protego_id(row["test"], index))
        for index, row in enumerate(PROTEGO_ROWS)
    ]


# --------------------------------------------------------------------------- conformance


@pytest.mark.parametrize("row", _google_params())
def test_google_conformance(row: dict[str, Any]) -> None:
    assert _check(row, row["expected_allowed"])


@pytest.mark.parametrize("row", _protego_params())
def test_protego_conformance(row: dict[str, Any]) -> None:
    assert _check(row, row["allowed"])


@pytest.mark.skipif(not (GOOGLE_ROWS and PROTEGO_ROWS), reason=MISSING_REASON)
def test_conformance_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Report pass counts, and pin them so a regression or a data change is noticed."""
    counts: dict[str, list[int]] = {"ID": [0, 0], "GoogleOnly": [0, 0]}
    for row in GOOGLE_ROWS:
        bucket = counts["ID" if row["test"].startswith("ID_") else "GoogleOnly"]
        bucket[0] += _check(row, row["expected_allowed"])
        bucket[1] += 1
    protego_passed = sum(_check(row, row["allowed"]) for row in PROTEGO_ROWS)
    summary = (
        f"robots conformance: ID_* {counts['ID'][0]}/{counts['ID'][1]} "
        f"({len(CONFLICTS)} contradict protego rows {sorted(CONFLICTS.values())}), "
        f"GoogleOnly_* {counts['GoogleOnly'][0]}/{counts['GoogleOnly'][1]}, "
        f"protego {protego_passed}/{len(PROTEGO_ROWS)}"
    )
    with capsys.disabled():
        print(f"\n{summary}")
    assert len(CONFLICTS) == EXPECTED_CONFLICTS
    assert counts["ID"][0] == counts["ID"][1] - len(CONFLICTS)
    assert counts["GoogleOnly"][0] == counts["GoogleOnly"][1] - len(GOOGLE_ONLY_KNOWN_FAILURES)
    assert protego_passed == len(PROTEGO_ROWS)


# --------------------------------------------------------------------------- interface

ROBOTS = """\
User-agent: *
Disallow: /private/
Crawl-delay: 10
Request-rate: 1/5s

User-agent: sitesearch
Disallow: /no-search/
Crawl-delay: 2.5
"""


def test_defaults() -> None:
    assert USER_AGENT_TOKEN == "sitesearch"
    assert MAX_ROBOTS_BYTES == 500 * 1024


def test_crawl_delay_for_our_agent_vs_star() -> None:
    robots = RobotsTxt.parse(ROBOTS)
    assert robots.crawl_delay() == 2.5
    assert robots.crawl_delay("sitesearch/0.1 (+https://example.com/bot)") == 2.5
    assert robots.crawl_delay("OtherBot") == 10.0


def test_crawl_delay_is_per_group_not_inherited_from_star() -> None:
    robots = RobotsTxt.parse(
        "User-agent: *\nDisallow: /x\nCrawl-delay: 10\n\nUser-agent: sitesearch\nDisallow:\n"
    )
    assert robots.crawl_delay() is None
    assert robots.crawl_delay("other") == 10.0


def test_crawl_delay_does_not_end_user_agent_list() -> None:
    # Only rules end the list of user-agent lines (RFC 9309 §2.2.4: other records
    # must not interfere), so both agents share the group and its delay.
    robots = RobotsTxt.parse("User-agent: a\nCrawl-delay: 3\nUser-agent: b\nDisallow: /\n")
    assert robots.crawl_delay("a") == robots.crawl_delay("b") == 3.0
    assert not robots.allowed("/x", "a")


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", ""])
def test_invalid_crawl_delay_is_ignored(value: str) -> None:
    assert RobotsTxt.parse(f"User-agent: *\nCrawl-delay: {value}\n").crawl_delay() is None


def test_repeated_crawl_delay_takes_the_largest() -> None:
    robots = RobotsTxt.parse("User-agent: a\nCrawl-delay: 1\n\nUser-agent: a\nCrawl-delay: 4\n")
    assert robots.crawl_delay("a") == 4.0


def test_request_rate() -> None:
    robots = RobotsTxt.parse(ROBOTS + "Request-rate: 3/1m 0900-1700\n")
    assert robots.request_rate() == (3, 60)
    assert robots.request_rate("other") == (1, 5)
    assert RobotsTxt.parse("User-agent: *\nRequest-rate: 0/5\n").request_rate() is None


def test_group_selection_for_our_agent_vs_star() -> None:
    robots = RobotsTxt.parse(ROBOTS)
    assert robots.allowed("https://example.com/private/x")  # '*' rules do not apply to us
    assert not robots.allowed("https://example.com/no-search/x")
    assert not robots.allowed("https://example.com/private/x", "OtherBot")
    assert robots.allowed("https://example.com/no-search/x", "OtherBot")


@pytest.mark.parametrize(
    "user_agent",
    [
        "sitesearch",
        "SiteSearch",
        "sitesearch/0.1",
        "sitesearch/0.1 (+https://example.com/bot)",
        "Mozilla/5.0 (compatible; sitesearch/0.1; +https://example.com/bot)",
    ],
)
def test_full_user_agent_string_uses_product_token(user_agent: str) -> None:
    robots = RobotsTxt.parse("User-agent: *\nDisallow: /\n\nUser-agent: SITESEARCH\nAllow: /\n")
    assert robots.allowed("/page", user_agent)


def test_other_agents_are_not_confused_with_ours() -> None:
    robots = RobotsTxt.parse(
        "User-agent: sitesearchx\nDisallow: /\n\nUser-agent: bot\nDisallow: /\n"
    )
    assert robots.allowed("/page")
    # The URL in our UA comment must not be read as a product token.
    assert robots.allowed("/page", "sitesearch/0.1 (+https://bot.example.com/bot)")


def test_group_token_is_matched_as_prefix_of_product_token() -> None:
    # Protego compatibility: a "googlebot" group also governs "googlebot-image".
    robots = RobotsTxt.parse("User-agent: googlebot\nDisallow: /\n")
    assert not robots.allowed("/x", "Googlebot-Image/1.0")
    assert robots.allowed("/x", "google")


def test_sitemaps_as_written_in_order_deduplicated() -> None:
    robots = RobotsTxt.parse(
        "Sitemap: https://example.com/a.xml\n"
        "User-agent: *\n"
        "Sitemap: /relative/b.xml\n"
        "Disallow: /x\n"
        "sitemap: https://example.com/a.xml\n"
        "SITEMAP:sitemap-c.xml # comment\n"
        "Sitemap https://example.com/d.xml\n"
        "Sitemap:\n"
    )
    assert robots.sitemaps == [
        "https://example.com/a.xml",
        "/relative/b.xml",
        "sitemap-c.xml",
        "https://example.com/d.xml",
    ]
    robots.sitemaps.append("mutating the copy")
    assert len(robots.sitemaps) == 4


def test_sitemap_line_does_not_end_user_agent_list() -> None:
    robots = RobotsTxt.parse("User-agent: a\nSitemap: /s.xml\nUser-agent: b\nDisallow: /\n")
    assert not robots.allowed("/x", "a")
    assert not robots.allowed("/x", "b")


def test_max_bytes_truncation() -> None:
    head = "User-agent: *\nDisallow: /early\n"
    body = head + "#" * 100 + "\nDisallow: /late\n"
    robots = RobotsTxt.parse(body, max_bytes=len(head) + 50)
    assert not robots.allowed("/early")
    assert robots.allowed("/late")
    assert not RobotsTxt.parse(body).allowed("/late")


def test_truncated_last_line_is_dropped() -> None:
    # A cut "Allow: /public-area" must not become the broader "Allow: /p".
    body = "User-agent: *\nDisallow: /\nAllow: /public-area\n"
    robots = RobotsTxt.parse(body, max_bytes=body.index("/public") + 2)
    assert not robots.allowed("/private")


def test_default_limit_is_500_kib() -> None:
    padding = ("# " + "x" * 97 + "\n") * (MAX_ROBOTS_BYTES // 100)
    body = ("User-agent: *\n" + padding + "Disallow: /late\n").encode()
    assert len(body) > MAX_ROBOTS_BYTES
    assert RobotsTxt.parse(body).allowed("/late")
    assert not RobotsTxt.parse(body, max_bytes=len(body)).allowed("/late")


@pytest.mark.parametrize(
    "body",
    [
        b"\xef\xbb\xbfUser-agent: *\nDisallow: /x\n",
        "\ufeffUser-agent: *\nDisallow: /x\n",
        b"User-agent: *\r\nDisallow: /x\r\n",
        bytearray(b"User-agent: *\nDisallow: /x"),
    ],
)
def test_bom_and_input_types(body: bytes | str) -> None:
    robots = RobotsTxt.parse(body)
    assert not robots.allowed("/x")
    assert robots.allowed("/y")


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    robots = RobotsTxt.parse(b"User-agent: *\nDisallow: /\xff\xfe\nDisallow: /x\n")
    assert not robots.allowed("/x")
    assert robots.allowed("/y")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x01\x02\xff" * 1000,
        b"<!doctype html><html><body><h1>Not found</h1></body></html>",
        "::::\n:\n#\n*\n$\nUser-agent:\nDisallow: %\nAllow: %zz*$*\n",
        "User-agent: *\nDisallow: /\xad\ud800\n",
        None,
        12345,
    ],
)
def test_garbage_never_raises(body: Any) -> None:
    robots = RobotsTxt.parse(body)
    robots.allowed("https://example.com/x?y")
    robots.allowed("http://[::1/broken")
    robots.crawl_delay()
    robots.request_rate()
    assert isinstance(robots.sitemaps, list)


def test_random_bytes_never_raise() -> None:
    rng = random.Random(9309)
    for _ in range(200):
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(400)))
        robots = RobotsTxt.parse(b"User-agent: *\n" + body)
        robots.allowed("/a/b?c", "sitesearch/0.1")


def test_html_error_page_allows_everything() -> None:
    robots = RobotsTxt.parse(b"<html><head><title>404</title></head><body>Disallow</body></html>")
    assert robots.allowed("/anything")


def test_robots_txt_always_allowed() -> None:
    robots = RobotsTxt.parse("User-agent: *\nDisallow: /\n")
    assert robots.allowed("https://example.com/robots.txt")
    assert RobotsTxt.disallow_all().allowed("/robots.txt")
    assert not robots.allowed("https://example.com/robots.txt.bak")


def test_allow_all_and_disallow_all() -> None:
    assert RobotsTxt.allow_all().allowed("https://example.com/x", "anybot")
    assert RobotsTxt.allow_all().sitemaps == []
    assert not RobotsTxt.disallow_all().allowed("https://example.com/")
    assert not RobotsTxt.disallow_all().allowed("/x?y", "anybot/1.0")
    assert RobotsTxt.disallow_all().crawl_delay() is None


def test_path_and_query_matching() -> None:
    robots = RobotsTxt.parse(
        "User-agent: *\nDisallow: /*?sort=\nDisallow: /search?\nDisallow: /a$\n"
    )
    assert not robots.allowed("https://example.com/list?sort=asc#top")
    assert robots.allowed("https://example.com/list#?sort=asc")  # fragments are ignored
    assert not robots.allowed("/search?")
    assert robots.allowed("/search")
    assert not robots.allowed("https://example.com/a")
    assert robots.allowed("https://example.com/a?b")
    assert robots.allowed("https://example.com")  # empty path is "/"


def test_empty_disallow_allows_everything() -> None:
    robots = RobotsTxt.parse("User-agent: *\nDisallow:\n")
    assert robots.allowed("/anything")


def test_longest_match_wins_and_allow_wins_ties() -> None:
    robots = RobotsTxt.parse(
        "User-agent: *\nDisallow: /a\nAllow: /a/b\nDisallow: /a/b/c\nAllow: /a/b/c\n"
    )
    assert not robots.allowed("/a/x")
    assert robots.allowed("/a/b/x")
    assert robots.allowed("/a/b/c")


@pytest.mark.parametrize(
    ("pattern", "url", "matches"),
    [
        ("/%7Ejoe", "/~joe/x", True),  # unreserved escapes are decoded
        ("/~joe", "/%7ejoe/x", True),
        ("/a%2fb", "/a/b", False),  # reserved escapes are not
        ("/a%2fb", "/a%2Fb", True),  # hex case does not matter
        ("/caf\u00e9", "/caf%C3%A9", True),  # non-ASCII is UTF-8 percent-encoded
        ("/caf%c3%a9", "/caf\u00e9", True),
        ("/a b", "/a%20b", True),
        ("/file-%2A.html", "/file-*.html", True),  # RFC 9309 §2.2.3: %2A is a literal *
        ("/foo-%24", "/foo-$", True),
        ("/*.php$", "/x.php?y", False),
        ("/100%", "/100%25", True),  # a stray % is %25
    ],
)
def test_percent_encoding_normalisation(pattern: str, url: str, matches: bool) -> None:
    robots = RobotsTxt.parse(f"User-agent: *\nDisallow: {pattern}\n")
    assert robots.allowed(url) is not matches


def test_escape_octets_are_atomic() -> None:
    # "2" inside the escape %20 must not satisfy a literal "2" in the pattern.
    robots = RobotsTxt.parse("User-agent: *\nDisallow: /*2\n")
    assert robots.allowed("/a%20b")
    assert not robots.allowed("/a2")


def test_unknown_record_handling_in_agent_list() -> None:
    # RFC 9309 / Google: an unknown record does not end the user-agent list ...
    robots = RobotsTxt.parse("User-agent: a\nX-Unknown: value\nUser-agent: b\nDisallow: /\n")
    assert not robots.allowed("/x", "a")
    # ... but an unknown record with a path value reads as a misspelt rule and does (Protego).
    robots = RobotsTxt.parse("User-agent: a\nDisalloww: /x\nUser-agent: b\nDisallow: /\n")
    assert robots.allowed("/x", "a")
    assert not robots.allowed("/x", "b")


def test_rules_before_any_user_agent_are_ignored() -> None:
    robots = RobotsTxt.parse("Disallow: /\nUser-agent: a\nDisallow: /a\n")
    assert robots.allowed("/x", "other")


def test_hostile_wildcards_are_linear() -> None:
    robots = RobotsTxt.parse("User-agent: *\nDisallow: /" + "*a" * 200 + "b$\n")
    started = time.perf_counter()
    assert robots.allowed("/" + "a" * 20000)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("status", "policy"),
    [
        (200, "parse"),
        (203, "parse"),
        (301, "allow_all"),  # only seen after >5 redirects: "unavailable", RFC 9309 §2.3.1.2
        (308, "allow_all"),
        (400, "allow_all"),
        (401, "allow_all"),
        (403, "allow_all"),
        (404, "allow_all"),
        (410, "allow_all"),
        (429, "allow_all"),
        (500, "disallow_all"),
        (503, "disallow_all"),
        (599, "disallow_all"),
        (None, "disallow_all"),
        (100, "disallow_all"),
        (0, "disallow_all"),
        (600, "disallow_all"),
    ],
)
def test_robots_policy_for_status(status: int | None, policy: str) -> None:
    assert robots_policy_for_status(status) == policy


def test_repr_mentions_kind() -> None:
    assert "disallow_all" in repr(RobotsTxt.disallow_all())
    assert "parsed: 1 groups, 0 sitemaps" in repr(RobotsTxt.parse("User-agent: *\n"))
