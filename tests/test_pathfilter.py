"""Tests for indexer.pathfilter (include/exclude path filters, micromatch semantics)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from indexer.pathfilter import (
    MAX_PATTERNS,
    PathFilter,
    PatternError,
    glob_match,
    validate_patterns,
)

INCLUDE = "Skipped by Include Rules"
EVAL_DIR = Path(__file__).parents[2] / "shared/eval/globs"

# Characters micromatch treats as syntax but our filters treat literally (or, for
# backslash and quote, that picomatch rewrites): rows using them are outside our syntax.
OUTSIDE_SYNTAX = frozenset('?[]{}()!+@\\"')
# Broader, informational selection: also admits `?`, `[...]` and `{...}` patterns.
OUTSIDE_BROAD = frozenset('()!+@\\"')
# Documented exceptions (docs/path-filtering.md): (input, pattern) pairs where we differ.
MICROMATCH_EXCEPTIONS = {
    # recorded with path.sep = "\\" (Windows mode); URLs are matched as-is.
    ("a\\b\\c.txt", "a/**/*.txt"),
}


def check(pf: PathFilter, indexed: list[str], skipped: dict[str, str]) -> None:
    for url in indexed:
        assert pf.skip_reason(url) is None, url
    for url, reason in skipped.items():
        assert pf.skip_reason(url) == reason, url


# --- documentation examples: R2 (object keys) --------------------------------


def test_r2_include_pdfs_under_docs() -> None:
    check(
        PathFilter(include=["/docs/**/*.pdf"]),
        ["/docs/guide.pdf", "/docs/api/ref.pdf"],
        {"/docs/guide.md": INCLUDE, "/images/logo.png": INCLUDE},
    )


def test_r2_exclude_temp_and_backup_extensions() -> None:
    check(
        PathFilter(exclude=["**/*.tmp", "**/*.bak"]),
        ["/docs/guide.md"],
        {"/data/cache.tmp": "Skipped by rule: **/*.tmp", "/old.bak": "Skipped by rule: **/*.bak"},
    )


def test_r2_exclude_folders() -> None:
    check(
        PathFilter(exclude=["/temp/**", "/backup/**"]),
        ["/docs/guide.md"],
        {
            "/temp/file.txt": "Skipped by rule: /temp/**",
            "/backup/data.json": "Skipped by rule: /backup/**",
        },
    )


def test_r2_include_docs_exclude_drafts() -> None:
    check(
        PathFilter(include=["/docs/**"], exclude=["/docs/drafts/**"]),
        ["/docs/guide.md"],
        {"/docs/drafts/wip.md": "Skipped by rule: /docs/drafts/**"},
    )


# --- documentation examples: website (full URLs) ------------------------------


def test_web_include_blog() -> None:
    check(
        PathFilter(include=["**/blog/**"]),
        ["https://example.com/blog/post", "https://example.com/en/blog/article"],
        {"https://example.com/about": INCLUDE},
    )


def test_web_exclude_admin() -> None:
    check(
        PathFilter(exclude=["**/admin/**"]),
        ["https://example.com/blog/post"],
        {"https://example.com/admin/settings": "Skipped by rule: **/admin/**"},
    )


def test_web_exclude_login() -> None:
    check(
        PathFilter(exclude=["**/login*"]),
        ["https://example.com/blog/post"],
        {
            "https://example.com/login": "Skipped by rule: **/login*",
            "https://example.com/auth/login-form": "Skipped by rule: **/login*",
        },
    )


def test_web_include_docs_exclude_drafts() -> None:
    check(
        PathFilter(include=["**/docs/**"], exclude=["**/docs/drafts/**"]),
        ["https://example.com/docs/guide"],
        {"https://example.com/docs/drafts/wip": "Skipped by rule: **/docs/drafts/**"},
    )


# --- documentation notes -------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("docs/*", "docs/file.pdf", True),
        ("docs/*", "site/docs/file.pdf", False),
        ("docs/*", "docs/sub/file.pdf", False),
        ("**/docs/*", "docs/file.pdf", True),
        ("**/docs/*", "site/docs/file.pdf", True),
        ("/Blog/*", "/blog/post.html", False),
        ("/blog/*", "/blog/post.html", True),
        ("**/blog/**", "https://www.example.com/blog/post", True),
        ("/blog/**", "https://www.example.com/blog/post", False),
    ],
)
def test_doc_notes(pattern: str, path: str, expected: bool) -> None:
    assert glob_match(pattern, path) is expected


# --- URL specifics: literal characters, no normalisation -----------------------


@pytest.mark.parametrize(
    ("pattern", "url", "expected"),
    [
        # `?`, `:`, `=`, `&`, `%` are literal
        ("**/search?q=*", "https://example.com/search?q=python", True),
        ("**/search?q=*", "https://example.com/searchXq=python", False),
        ("**/page?id=1&lang=en", "https://example.com/page?id=1&lang=en", True),
        ("**/page?id=1&lang=en", "https://example.com/page?id=1&lang=fr", False),
        ("**/a%20b", "https://example.com/a%20b", True),
        ("**/a%20b", "https://example.com/a b", False),
        ("https://example.com:8080/**", "https://example.com:8080/x", True),
        ("https://*/docs/**", "https://example.com/docs/a/b", True),
        ("https://*/docs/**", "http://example.com/docs/a/b", False),
        ("https://example.com/*", "https://example.com/a/b", False),
        # trailing slash matters; `//` is not collapsed
        ("https://example.com/blog/", "https://example.com/blog", False),
        ("**/blog", "https://example.com/blog/", False),
        ("https://example.com/blog/*", "https://example.com/blog/post/", True),  # micromatch
        ("https://example.com/a/b", "https://example.com/a//b", False),
        ("https://example.com/a//b", "https://example.com/a/b", False),
        ("https://example.com/a//b", "https://example.com/a//b", True),
        # `X/**` also matches `X`; case-sensitive
        ("https://example.com/docs/**", "https://example.com/docs", True),
        ("**/Docs/**", "https://example.com/docs/x", False),
        # wildcards skip dot-segments unless the dot is written (micromatch default)
        ("**/*", "https://example.com/.well-known/x", False),
        ("**/.well-known/**", "https://example.com/.well-known/x", True),
        # three or more stars act as one `*` (without micromatch 4.0.8's text-dropping bug)
        ("x.y/***", "x.y/a", True),
        ("x.y/***", "xzy/a", False),
        ("x.y/***", "xy/a", False),  # micromatch 4.0.8: True (documented difference)
        ("", "", False),
    ],
)
def test_url_matching(pattern: str, url: str, expected: bool) -> None:
    if not pattern:
        with pytest.raises(PatternError):
            glob_match(pattern, url)
        return
    assert glob_match(pattern, url) is expected


def test_order_exclude_wins_and_first_exclude_is_reported() -> None:
    pf = PathFilter(include=["**/blog/**"], exclude=["**/drafts/**", "**/blog/drafts/*"])
    assert pf.skip_reason("https://example.com/blog/drafts/x") == "Skipped by rule: **/drafts/**"
    assert pf.skip_reason("https://example.com/blog/x") is None
    assert pf.skip_reason("https://example.com/news/x") == INCLUDE


def test_bool_and_no_rules() -> None:
    assert not PathFilter()
    assert PathFilter(include=["**"])
    assert PathFilter(exclude=["**"])
    assert PathFilter().skip_reason("https://example.com/anything") is None
    assert PathFilter(exclude=None, include=None).skip_reason("x") is None  # type: ignore[arg-type]


# --- validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        (["**"] * 11, "source_params.include_items: at most 10 patterns (got 11)"),
        (["**/a", "**/b", ""], "source_params.include_items[2]: empty pattern"),
        (["   "], "source_params.include_items[0]: empty pattern"),
        (["**", 3], "source_params.include_items[1]: expected a string (got int)"),
        (
            ["a" * 1025],
            "source_params.include_items[0]: pattern longer than 1024 characters (got 1025)",
        ),
        (["**/a\nb"], "source_params.include_items[0]: control character U+000A at position 4"),
        (["**/a\x00"], "source_params.include_items[0]: control character U+0000 at position 4"),
        ("**/blog/**", "source_params.include_items: expected a list of patterns (got str)"),
    ],
)
def test_validation_errors(patterns: object, message: str) -> None:
    with pytest.raises(PatternError) as exc:
        validate_patterns(patterns, field="source_params.include_items")  # type: ignore[arg-type]
    assert str(exc.value) == message


def test_validation_ok_and_pathfilter_validates() -> None:
    pats = ["**/a"] * MAX_PATTERNS
    assert validate_patterns(tuple(pats), field="f") == pats
    assert validate_patterns(None, field="f") == []
    assert validate_patterns(["x" * 1024], field="f") == ["x" * 1024]
    with pytest.raises(PatternError, match=r"^source_params\.exclude_items\[2\]: empty pattern$"):
        PathFilter(exclude=["a", "b", ""])
    with pytest.raises(PatternError, match=r"^source_params\.include_items: at most 10"):
        PathFilter(include=["a"] * 11)


def test_micromatch_only_syntax_is_literal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="indexer.pathfilter"):
        pf = PathFilter(include=["**/{blog,news}/**"])
    assert "matches literally" in caplog.text
    assert pf.skip_reason("https://example.com/{blog,news}/x") is None
    assert pf.skip_reason("https://example.com/blog/x") == INCLUDE


# --- conformance with micromatch / picomatch test suites ---------------------------


def _load(name: str) -> list[dict]:
    path = EVAL_DIR / name
    if not path.exists():
        pytest.skip(f"conformance data not found: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def _patterns(row: dict) -> list[str]:
    pattern = row["pattern"]
    return pattern if isinstance(pattern, list) else [pattern]


def select_rows(rows: list[dict], outside: frozenset[str]) -> list[dict]:
    """Rows with default options whose patterns avoid every character in ``outside``."""
    return [
        r
        for r in rows
        if not r["options"]
        and isinstance(r["input"], str)
        and all(isinstance(p, str) and not outside.intersection(p) for p in _patterns(r))
    ]


def disagreements(rows: list[dict]) -> list[tuple[str, str]]:
    return [
        (r["input"], "|".join(_patterns(r)))
        for r in rows
        if any(glob_match(p, r["input"]) for p in _patterns(r)) is not r["result"]
    ]


@pytest.mark.parametrize(
    ("name", "exceptions", "expected_rows"),
    [
        ("micromatch_cases.json", MICROMATCH_EXCEPTIONS, 868),
        ("picomatch_cases.json", set(), 2499),
    ],
)
def test_conformance(name: str, exceptions: set[tuple[str, str]], expected_rows: int) -> None:
    rows = _load(name)
    selected = select_rows(rows, OUTSIDE_SYNTAX)
    bad = disagreements(selected)
    broad = select_rows(rows, OUTSIDE_BROAD)
    broad_bad = disagreements(broad)
    print(
        f"{name}: our syntax {len(selected) - len(bad)}/{len(selected)} agree; "
        f"broader (with ? [] {{}}) {len(broad) - len(broad_bad)}/{len(broad)} agree (informational)"
    )
    assert len(selected) == expected_rows
    assert set(bad) == exceptions
    assert len(bad) == len(exceptions)


# --- speed -----------------------------------------------------------------------


def test_speed_100k_urls_10_patterns() -> None:
    rnd = random.Random(0)
    segs = ["blog", "docs", "en", "api", "2024", "post-title", "index.html", "guide.pdf", "drafts"]
    urls = [
        "https://www.example.com/" + "/".join(rnd.choices(segs, k=rnd.randint(1, 6)))
        for _ in range(100_000)
    ]
    pf = PathFilter(
        include=["**/blog/**", "**/docs/**", "https://*/en/**", "**/*.pdf", "**/api/*"],
        exclude=["**/drafts/**", "**/admin/**", "**/login*", "**/*.tmp", "https://*/2024/**"],
    )
    start = time.perf_counter()
    kept = sum(pf.skip_reason(u) is None for u in urls)
    elapsed = time.perf_counter() - start
    assert 0 < kept < len(urls)
    assert elapsed < 30, f"100k URLs x 10 patterns took {elapsed:.1f}s"  # ~0.7s typical
